"""SIGKILL of a collector during a backend outage, in a 20,000-event run: nothing lost.

Real processes (``telemetry-collector run``), a real redis-server, a real
30 s outage (the independent receiver's port closed, connections refused)
spanning the kill, the claim of the dead collector's entries and the adoption
of its unexported metric intervals by the collector that replaces it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from collector.otlp.spans import makes_log
from emitters.events import CustomEvent, GenerationCompleted
from emitters.streams import stream_names
from tests.support.otlp_checks import attributes
from tests.support.otlp_collector import CollectorProcess, wait_until
from tests.support.otlp_events import Workload, publish
from tests.support.otlp_receiver import Receiver

NAMES = stream_names("telemetry")
TOTAL = 20_000
BATCH = 500
OUTAGE_S = 30.0


def pending(client: redis.Redis) -> int:
    total = 0
    for stream in (NAMES.events, NAMES.errors):
        try:
            total += int(client.xpending(stream, "telemetry-collectors")["pending"])
        except redis.ResponseError:
            pass
    return total


def collector(tmp_path: Path, redis_url: str, receiver: Receiver, name: str) -> CollectorProcess:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }
    config = tmp_path / "collector.toml"
    config.write_text('[collector]\nmax_backoff = "1s"\n')  # retries keep pace with a short outage
    return CollectorProcess(
        tmp_path / f"{name}.log", env, "--config", str(config),
        "--redis-url", redis_url, "--consumer", name, "--no-jsonl", "--no-alerts",
        "--batch-size", str(BATCH), "--block-ms", "50", "--claim-idle", "1s", "--heartbeat-interval", "300ms",
    )  # fmt: skip


def workload(total: int) -> Workload:
    """Requests of four events each: started, completed, a duration event, the request scope's end."""
    work = Workload(start_ns=time.time_ns())
    for n in range(total // 4):
        with work.scope("POST /v1/completions"):
            work.generation(f"req-{n}")
            work.add(CustomEvent, type="cache.lookup", attrs={"duration_ms": 0.2})
    return work


@pytest.mark.slow
def test_sigkill_during_outage_loses_no_log_and_no_metric_point(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    receiver = Receiver().up()
    work = workload(TOTAL)
    events = work.events
    assert len(events) == TOTAL
    first = collector(tmp_path, redis_url, receiver, "c-first").start()
    second = None
    try:
        publish(redis_client, events[: TOTAL // 2])
        wait_until(lambda: len(receiver.log_records()) >= TOTAL // 8, timeout=60, what="the stream to flow")

        receiver.down()
        outage_started = time.monotonic()
        publish(redis_client, events[TOTAL // 2 :])
        wait_until(lambda: pending(redis_client) > 0, what="a batch held pending by the outage")
        time.sleep(1.0)
        first.kill()  # SIGKILL: no flush, no ack, metric intervals only in Redis

        second = collector(tmp_path, redis_url, receiver, "c-second").start()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        receiver.up()

        expected = {event.id for event in events if makes_log(event)}
        received = lambda: {attributes(r.attributes)["event.id"] for r in receiver.log_records()}  # noqa: E731
        wait_until(lambda: received() >= expected, timeout=180, what="every log record after the outage")
        wait_until(lambda: pending(redis_client) == 0, timeout=60, what="nothing pending")
        assert second.stop() == 0  # SIGTERM: the last interval is exported on the way out
    finally:
        for process in (first, second):
            if process is not None and process.proc is not None and process.proc.poll() is None:
                process.kill()
        receiver.down()

    duplicates = len(receiver.log_records()) - len(expected)
    assert 0 <= duplicates <= BATCH
    generations = sum(1 for event in events if type(event) is GenerationCompleted)
    counted = sum(
        point.count for _, _, metric, point in receiver.metric_points() if metric.name == "gen_ai.server.request.duration"
    )
    print(f"log records: {len(expected)} + {duplicates} duplicates; duration points count {counted} for {generations} generations")
    assert generations <= counted <= generations + BATCH
    instances = {attributes(scope.attributes)["mlx.collector.instance"] for _, scope, _, _ in receiver.metric_points()}
    assert instances <= {"c-first", "c-second"}
    assert list(redis_client.scan_iter(match="telemetry:otlp:metrics:*")) == []  # nothing left unexported
