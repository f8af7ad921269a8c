"""End to end: Emitter -> Redis -> Collector -> OTLP test backend, over gRPC and HTTP.

Real parts throughout: the emitter's worker writing to a real redis-server,
the daemon reading it as a consumer group, the OTLP sink exporting to the
gRPC/HTTP receiver in ``tests/otlp_backend.py``. Faults are the backend's:
an outage in the middle of a stream, refused credentials.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from collector.config import Config, load_config
from collector.daemon import Collector
from emitters import Emitter
from emitters.events import decode
from emitters.streams import stream_names
from tests.otlp_backend import DATASET, TOKEN, OtlpBackend, attributes, otlp_backend  # noqa: F401 (fixture)
from tests.support.stream_entries import dead_letters, pending_count
from tests.support.inprocess_collector import running
from tests.support.waiting import wait_for as wait_until

NAMES = stream_names("telemetry")
MODEL = "tiny-llama"


def otlp_config(redis_url: str, backend: OtlpBackend, protocol: str, **extra: Any) -> Config:
    overrides = {
        "redis.url": redis_url,
        "jsonl.enabled": False,
        "alerts.enabled": False,
        "collector.block_ms": 50,
        "collector.heartbeat_interval": "200ms",
        "collector.max_backoff": "1s",
        "collector.auth_retry_interval": "500ms",
        "collector.events_maxlen": 100_000,
        "otlp.endpoint": backend.endpoint(protocol),
        "otlp.protocol": protocol,
        "otlp.token": TOKEN,
        "otlp.dataset": DATASET,
        "otlp.deployment_environment": "e2e",
    }
    overrides.update(extra)
    return load_config(overrides=overrides, environ={})


def emitted(client: redis.Redis) -> dict[str, Any]:
    """Every event in both streams, by id."""
    events = {}
    for stream in (NAMES.events, NAMES.errors):
        for _, fields in client.xrange(stream):
            event = decode(fields[b"event"])
            events[event.id] = event
    return events


def logged(events: dict[str, Any]) -> set[str]:
    """The ids that become log records: a closed scope (`span.ended`) is a span only."""
    return {event_id for event_id, event in events.items() if event.type != "span.ended"}


def serve_requests(emitter: Emitter, count: int) -> None:
    """What an engine emits: a model load, generations in their own scope, an error, a job event."""
    emitter.model_loaded(MODEL, "/models/tiny", load_ms=120.0, quantization="int4")
    for n in range(count):
        with emitter.context(request_id=f"req-{n}", job_id="job-1"):
            emitter.generation_started(MODEL, f"req-{n}", prompt_tokens=10 + n, max_tokens=64)
            emitter.generation_completed(
                MODEL, f"req-{n}", 10 + n, 20, 250.0 + n, ttft_ms=40.0, tokens_per_second=80.0, finish_reason="stop"
            )
    emitter.error(TimeoutError("decode step timed out"), model=MODEL)
    emitter.event("job.completed", job_id="job-1", duration_ms=900.0, items=count)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
class TestEndToEnd:
    def test_events_spans_and_metrics_arrive(
        self, redis_url: str, redis_client: redis.Redis, otlp_backend: OtlpBackend, protocol: str
    ) -> None:
        """Every event id arrives as a log record; spans and metrics carry the right names, units,
        values, trace ids and resource attributes; the Authorization and Dash0-Dataset headers arrive."""
        emitter = Emitter("engine", redis_url, strict=True)
        serve_requests(emitter, 10)
        assert emitter.flush(10)
        emitter.close()
        events = emitted(redis_client)
        assert len(events) == 1 + 20 + 10 + 1 + 1  # each scope adds its span.ended

        collector = Collector(otlp_config(redis_url, otlp_backend, protocol))
        with running(collector) as handle:
            wait_until(lambda: set(otlp_backend.event_ids()) >= logged(events), what="every event at the backend")
            wait_until(lambda: pending_count(redis_client) + pending_count(redis_client, NAMES.errors) == 0,
                       what="the pending lists to drain")
            handle.stop()

        for resource, record in otlp_backend.log_records():
            event = events[attributes(record.attributes)["event.id"]]
            assert record.event_name == event.type
            assert record.time_unix_nano == event.ts
            assert record.trace_id.hex() == (event.trace_id or "")  # outside every scope: no trace
            assert record.span_id.hex() == (event.span_id or "")
            assert {key: resource[key] for key in ("service.name", "host.name", "process.pid", "deployment.environment.name", "deployment.environment")} == {
                "service.name": "engine",
                "host.name": event.host,
                "process.pid": event.pid,
                "deployment.environment.name": "e2e",
                "deployment.environment": "e2e",
            }

        completed = {e.id[:16]: e for e in events.values() if e.type == "generation.completed"}
        spans = {span.span_id.hex(): (resource, span) for resource, span in otlp_backend.spans()}
        assert set(completed) <= set(spans)
        for span_id, event in completed.items():
            resource, span = spans[span_id]
            span_attributes = attributes(span.attributes)
            assert span.name == f"text_completion {MODEL}"
            assert span.trace_id.hex() == event.trace_id
            assert span.end_time_unix_nano == event.ts
            assert span.end_time_unix_nano - span.start_time_unix_nano == round(event.duration_ms * 1e6)
            assert span_attributes["gen_ai.usage.input_tokens"] == event.prompt_tokens
            assert span_attributes["gen_ai.usage.output_tokens"] == 20
            assert span_attributes["gen_ai.response.finish_reasons"] == ["stop"]
            assert resource["service.name"] == "engine"
        span_names = sorted(span.name for _, span in otlp_backend.spans())
        assert f"model.loaded {MODEL}" in span_names and "job.completed" in span_names

        metrics = {}
        for resource, scope, metric in otlp_backend.metrics():
            assert resource["service.name"] == "engine"
            assert attributes(scope.attributes)["mlx.collector.instance"] == collector.consumer
            metrics.setdefault(metric.name, []).append(metric)
        units = {name: found[0].unit for name, found in metrics.items()}
        assert units == {
            "gen_ai.server.request.duration": "s",
            "gen_ai.server.time_to_first_token": "s",
            "gen_ai.server.time_per_output_token": "s",
            "mlx.tokens.generated": "{token}",
            "mlx.tokens.prompt": "{token}",
            "mlx.models.loaded": "{model}",
            "mlx.errors": "{error}",
            "mlx.generation.errors": "{error}",
        }
        durations = [p for m in metrics["gen_ai.server.request.duration"] for p in m.histogram.data_points]
        assert sum(p.count for p in durations) == 10
        assert sum(p.sum for p in durations) == pytest.approx(sum(250.0 + n for n in range(10)) / 1000)
        generated = [p.as_int for m in metrics["mlx.tokens.generated"] for p in m.sum.data_points]
        assert sum(generated) == 200
        errors = [(attributes(p.attributes), p.as_int) for m in metrics["mlx.errors"] for p in m.sum.data_points]
        assert errors == [({"error.type": "TimeoutError"}, 1)]

        for item in otlp_backend.received:
            assert item.transport == protocol
            assert item.headers["authorization"] == f"Bearer {TOKEN}"
            assert item.headers["dash0-dataset"] == DATASET
        assert dead_letters(redis_client) == []

    def test_refused_credentials_pause_without_loss(
        self, redis_url: str, redis_client: redis.Redis, otlp_backend: OtlpBackend, protocol: str
    ) -> None:
        """A 401: no crash loop, a clear error in the log and the status, entries stay pending;
        once the credentials are accepted again everything is delivered."""
        otlp_backend.token = "rotated-token"
        emitter = Emitter("engine", redis_url, strict=True)
        serve_requests(emitter, 5)
        assert emitter.flush(10)
        emitter.close()
        events = emitted(redis_client)

        collector = Collector(otlp_config(redis_url, otlp_backend, protocol))
        with capture_logs() as logs, running(collector) as handle:
            wait_until(lambda: collector.status == "paused_auth", what="the collector to pause on auth")
            pause_started = time.monotonic()
            wait_until(lambda: len(otlp_backend.attempts) >= 3, what="a few slow retries")
            elapsed = time.monotonic() - pause_started
            assert handle.thread.is_alive()
            assert len(otlp_backend.attempts) <= 3 + elapsed / 0.5 + 1, "retries must be paced, not spinning"
            assert pending_count(redis_client) + pending_count(redis_client, NAMES.errors) == len(events)
            heartbeat = redis_client.hgetall(NAMES.heartbeat(collector.consumer))
            assert heartbeat[b"status"] == b"paused_auth"
            assert otlp_backend.received == []

            otlp_backend.token = TOKEN  # the operator fixed the credentials
            wait_until(lambda: set(otlp_backend.event_ids()) >= logged(events), what="delivery after the fix")
            wait_until(lambda: pending_count(redis_client) + pending_count(redis_client, NAMES.errors) == 0,
                       what="the pending lists to drain")
            handle.stop()

        auth_errors = [entry for entry in logs if entry["event"] == "sink_auth_failed"]
        assert auth_errors and all(entry["sink"] == "otlp" for entry in auth_errors)
        assert "refused the credentials" in auth_errors[0]["error"]
        assert TOKEN not in repr(logs) and "rotated-token" not in repr(logs)
        assert dead_letters(redis_client) == []


@pytest.mark.slow
def test_backend_outage_mid_stream_loses_nothing(
    redis_url: str, redis_client: redis.Redis, otlp_backend: OtlpBackend
) -> None:
    """The backend is down for 30 s in the middle of a 20,000-event stream: every event arrives
    (once: a retried batch is not re-sent in part), none is dead-lettered, the pending list drains."""
    total = 20_000
    emitter = Emitter("engine", redis_url, events_maxlen=100_000, buffer_size=total, strict=False)
    collector = Collector(otlp_config(redis_url, otlp_backend, "grpc", **{"collector.batch_size": 500}))
    with running(collector) as handle:
        for n in range(total // 2):
            emitter.event("job.progress_updated", job_id=f"job-{n % 50}", n=n)
        assert emitter.flush(30)
        wait_until(lambda: len(otlp_backend.event_ids()) >= total // 4, timeout=60, what="the stream to flow")

        otlp_backend.fail("unavailable", duration=30.0, retry_after=1.0)
        outage_started = time.monotonic()
        for n in range(total // 2, total):
            emitter.event("job.progress_updated", job_id=f"job-{n % 50}", n=n)
        assert emitter.flush(30)
        wait_until(lambda: collector.status == "backpressure", timeout=30, what="backpressure during the outage")

        wait_until(lambda: len(set(otlp_backend.event_ids())) >= total, timeout=150, what="all events after recovery")
        assert time.monotonic() - outage_started >= 30.0
        wait_until(lambda: pending_count(redis_client) == 0, timeout=30, what="the pending list to drain")
        handle.stop()
    emitter.close()

    sent = emitted(redis_client)
    assert len(sent) == total
    assert sorted(otlp_backend.event_ids()) == sorted(sent)
    assert any(attempt.status == "unavailable" for attempt in otlp_backend.attempts)
    assert dead_letters(redis_client) == []
    assert not any(emitter.stats()["dropped"].values())
