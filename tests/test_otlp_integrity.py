"""End to end against an independent OTLP receiver (generated opentelemetry-proto services only).

Redis -> collector daemon -> OTLP/gRPC -> :class:`tests.support.otlp_receiver.Receiver`.
Events follow the wire contract's trace decisions (scopes as ``span.ended``,
a caller's traceparent, events outside every scope, failures) and are written
straight into the streams, as an emitter would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any, Iterator

import grpc
import pytest
import redis

from collector.otlp.spans import makes_log
from emitters.events import ErrorEvent, GenerationCompleted
from emitters.streams import stream_names
from tests.support.otlp_checks import ERROR, attributes, integrity_problems
from tests.support.otlp_collector import ROOT, collector_thread, otlp_collector_config, wait_until
from tests.support.otlp_events import Workload, publish
from tests.otlp_backend import TOKEN, OtlpBackend, otlp_backend  # noqa: F401 (fixture)
from tests.support.otlp_receiver import Receiver

NAMES = stream_names("telemetry")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().up()
    yield receiver
    receiver.down()


def pending(client: redis.Redis) -> int:
    total = 0
    for stream in (NAMES.events, NAMES.errors):
        try:
            total += int(client.xpending(stream, "telemetry-collectors")["pending"])
        except redis.ResponseError:
            pass
    return total


def series_points(receiver: Receiver) -> dict[tuple[Any, ...], list[Any]]:
    """Points by series: (collector instance, resource, metric name, point attributes)."""
    found: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for resource, scope, metric, point in receiver.metric_points():
        key = (
            attributes(scope.attributes)["mlx.collector.instance"],
            tuple(sorted(attributes(resource.attributes).items())),
            metric.name,
            tuple(sorted(attributes(point.attributes).items())),
        )
        found[key].append(point)
    return found


def test_demo_traffic_is_whole_and_honest(redis_url: str, redis_client: redis.Redis, receiver: Receiver) -> None:
    """Nested scopes, outside traceparents and failures: every parent exported or remote, unique span
    ids, no log record in a missing trace, failures ERROR with error.type, one point per series per
    interval with exemplars pointing at exported spans."""
    workload = Workload(start_ns=time.time_ns())
    config = otlp_collector_config(redis_url, receiver.endpoint)
    with collector_thread(config) as collector:
        for round_ in range(3):  # three rounds a few intervals apart
            start = len(workload.events)
            workload.demo(requests=8, failures=2)
            publish(redis_client, workload.events[start:])
            wait_until(lambda: pending(redis_client) == 0 and len(receiver.log_records()) > 0, what="a round delivered")
            time.sleep(0.4)
        logs_expected = sum(1 for event in workload.events if makes_log(event))
        wait_until(lambda: len(receiver.log_records()) >= logs_expected and pending(redis_client) == 0, what="all logs")
        instance = collector.consumer
    # The collector has stopped: its last interval is exported.

    spans, records = receiver.spans(), receiver.log_records()
    assert len(records) == logs_expected
    assert integrity_problems(spans, records) == []
    assert sum(1 for record in records if not record.trace_id) == 3 * 3  # the events outside every scope

    failed = [event for event in workload.events if type(event) is ErrorEvent]
    by_span = {span.span_id.hex(): span for span in spans}
    for event in failed:
        span = by_span[event.id[:16]]
        assert span.status.code == ERROR and span.status.message == event.message
        assert attributes(span.attributes)["error.type"] == event.error_type
        assert [item.name for item in span.events] == ["exception"]
    assert sum(1 for span in spans if span.name == "POST /v1/chat/completions" and span.status.code == ERROR) == 6

    points = series_points(receiver)
    durations = [p for key, found in points.items() if key[2] == "gen_ai.server.request.duration" for p in found]
    generations = sum(1 for event in workload.events if type(event) is GenerationCompleted)
    assert sum(p.count for p in durations) == generations + len(failed)
    errors = [p for p in durations if "error.type" in attributes(p.attributes)]
    assert sum(p.count for p in errors) == len(failed)
    assert all(p.exemplars and all(e.span_id.hex() in by_span for e in p.exemplars) for p in durations)
    for key, found in points.items():
        assert key[0] == instance
        windows = sorted((p.start_time_unix_nano, p.time_unix_nano) for p in found)
        assert len(windows) == len(set(windows)), f"{key}: two points for one interval"
        assert all(end <= start for (_, end), (start, _) in zip(windows, windows[1:])), f"{key}: overlapping intervals"
    assert len(receiver.metrics) >= 2  # per interval, not per batch


def test_http_500_forever_is_dead_lettered_and_the_pipeline_flows(
    redis_url: str, redis_client: redis.Redis, receiver: Receiver
) -> None:
    """A backend answering INTERNAL (HTTP 500's gRPC twin) forever: the batch is dead-lettered after
    max_attempts tries with the status, later batches flow, and `health` reports the dead letters."""
    receiver.fail(grpc.StatusCode.INTERNAL)
    config = otlp_collector_config(redis_url, receiver.endpoint, **{"otlp.max_attempts": 3, "otlp.signals": ["logs"]})
    first = Workload(start_ns=time.time_ns())
    first.outside()
    with collector_thread(config):
        publish(redis_client, first.events)
        wait_until(lambda: redis_client.xlen(NAMES.dead) == len(first.events), what="the batch in the dead letters")
        assert receiver.refused == 3
        receiver.fail(None)
        second = Workload(start_ns=time.time_ns())
        second.outside()
        publish(redis_client, second.events)
        wait_until(lambda: len(receiver.log_records()) == len(second.events), what="the next batch delivered")
        wait_until(lambda: pending(redis_client) == 0, what="nothing pending")
    letters = [fields for _, fields in redis_client.xrange(NAMES.dead)]
    assert all(b"INTERNAL" in b"".join(value for value in fields.values()) for fields in letters)
    assert all(b"after 3 tries" in b"".join(fields.values()) for fields in letters)

    health = subprocess.run(
        [sys.executable, "-c", "from collector.cli import main; main()", "health", "--redis-url", redis_url, "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    report = json.loads(health.stdout)
    assert health.returncode != 0
    assert report["dead_letters"] == len(first.events), report


def test_http_500_over_otlp_http_dead_letters_after_bounded_tries(
    redis_url: str, redis_client: redis.Redis, otlp_backend: OtlpBackend
) -> None:
    """The same with a literal HTTP 500 over OTLP/HTTP (the project's test backend): bounded, then flowing."""
    otlp_backend.fail("internal")
    config = otlp_collector_config(
        redis_url,
        otlp_backend.http_endpoint,
        **{"otlp.protocol": "http", "otlp.token": TOKEN, "otlp.max_attempts": 2, "otlp.signals": ["logs", "traces"]},
    )
    first = Workload(start_ns=time.time_ns())
    with first.scope("POST /v1/completions"):
        first.generation("r1")
    with collector_thread(config):
        publish(redis_client, first.events)
        wait_until(lambda: redis_client.xlen(NAMES.dead) == len(first.events), what="the batch in the dead letters")
        assert sum(1 for attempt in otlp_backend.attempts if attempt.signal == "logs") == 2
        otlp_backend.recover()
        second = Workload(start_ns=time.time_ns())
        second.outside()
        publish(redis_client, second.events)
        wait_until(lambda: set(otlp_backend.event_ids()) == {e.id for e in second.events}, what="the next batch")
    reasons = [fields[b"reason"] for _, fields in redis_client.xrange(NAMES.dead)]
    assert all(b"HTTP 500" in reason and b"after 2 tries" in reason for reason in reasons), reasons
