"""Scopes as spans, and client reports, against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

import emitters
from collector.embedded import RedisProcess
from emitters import Emitter, ValidationError
from emitters.streams import stream_names
from tests.support.emitter_streams import host_events, of_type, wait_for

NAMES = stream_names("telemetry")


@pytest.fixture
def emitter(redis_url: str):
    emitter = Emitter("engine-1", redis_url, hash_secret="test-secret")
    yield emitter
    emitter.close(2)


class TestScopesAreSpans:
    def test_every_scope_ends_as_one_span_with_its_own_ids(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """Each scope yields exactly one span.ended carrying the scope's trace, span and parent ids."""
        with emitter.context("POST /v1/chat", request_id="r-1") as outer:
            emitter.event("request.received")
            with emitter.context("generate") as inner:
                emitter.event("generation.step")
        assert emitter.flush(10)
        spans = {span.name: span for span in of_type(redis_client, NAMES.events, "span.ended")}
        assert sorted(spans) == ["POST /v1/chat", "generate"]
        request, generate = spans["POST /v1/chat"], spans["generate"]
        assert (request.trace_id, request.span_id, request.parent_span_id) == (outer["trace_id"], outer["span_id"], None)
        assert (generate.span_id, generate.parent_span_id) == (inner["span_id"], outer["span_id"])
        assert generate.trace_id == request.trace_id and generate.request_id == "r-1"
        assert request.status == "ok" and not request.parent_remote
        assert request.duration_ms >= generate.duration_ms >= 0 and request.start_ts <= generate.start_ts
        received, step = host_events(redis_client, NAMES.events)
        assert received.span_id == request.span_id and step.span_id == generate.span_id

    def test_a_failing_block_ends_its_span_as_an_error_and_reraises(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """The exception propagates unchanged; the span says error with its type and message."""
        boom = KeyError("shard 3")
        with pytest.raises(KeyError) as caught:
            with emitter.context("load"):
                raise boom
        assert caught.value is boom
        assert emitter.flush(10)
        (span,) = of_type(redis_client, NAMES.events, "span.ended")
        assert (span.status, span.error_type, span.status_message) == ("error", "KeyError", "'shard 3'")

    def test_traceparent_continues_the_callers_trace_under_a_remote_parent(
        self, emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """A W3C traceparent gives the scope the caller's trace and its span as remote parent."""
        trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        with emitter.context("POST /v1/completions", traceparent=f"00-{trace}-{parent}-01") as scope:
            emitter.generation_started("tiny", "r-2")
        with emitter.context("bad header", traceparent="00-zz-00f067aa0ba902b7-01"):
            pass
        assert emitter.flush(10)
        spans = {span.name: span for span in of_type(redis_client, NAMES.events, "span.ended")}
        remote = spans["POST /v1/completions"]
        assert (remote.trace_id, remote.parent_span_id, remote.parent_remote) == (trace, parent, True)
        assert remote.span_id == scope["span_id"] != parent
        (started,) = host_events(redis_client, NAMES.events)
        assert (started.trace_id, started.span_id, started.parent_span_id) == (trace, remote.span_id, parent)
        fresh = spans["bad header"]
        assert fresh.trace_id != trace and fresh.parent_span_id is None and not fresh.parent_remote

    def test_module_level_correlation_ends_through_the_latest_emitter(
        self, emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """emitters.correlation() scopes end as span.ended too, and hash a user id like context()."""
        with emitters.correlation("batch", job_id="j-1", user_id="alice@example.com"):
            emitter.event("job.started")
        assert emitter.flush(10)
        (span,) = of_type(redis_client, NAMES.events, "span.ended")
        (started,) = host_events(redis_client, NAMES.events)
        assert span.name == "batch" and span.job_id == started.job_id == "j-1"
        assert span.user_id == started.user_id == emitter.keyed_hash("alice@example.com")

    def test_strict_mode_names_a_bad_scope_id(self, redis_url: str) -> None:
        """strict=True refuses a malformed id at scope entry, stating the rule in words."""
        with Emitter("engine-1", redis_url, strict=True, hash_secret="s") as em:
            with pytest.raises(ValidationError, match=r"of 32 lowercase hex digits - at `\$.trace_id`"):
                with em.context(trace_id="nope"):
                    pass
            with pytest.raises(ValidationError, match=r"traceparent"):
                with em.context(traceparent="garbage"):
                    pass


class TestClientReports:
    def test_close_ships_what_changed_since_the_last_report(self, redis_url: str, redis_client: redis.Redis) -> None:
        """Drops by reason, the sent count and the buffer mark reach Redis as one client.report."""
        em = Emitter("engine-1", redis_url, buffer_size=10, batch_size=10, flush_interval=5.0, hash_secret="s")
        em.event("Not A Type")
        for index in range(25):
            em.event("load.tick", attrs={"n": index})
        em.close(10)
        (report,) = of_type(redis_client, NAMES.events, "client.report")
        stats = em.stats()
        full = stats["dropped"]["buffer_full"]
        assert full > 0 and report.dropped == {"buffer_full": full, "invalid": 1} and report.dropped_total == full + 1
        assert report.sent == stats["sent"] == 25 - full
        assert 1 <= report.buffer_high_water <= 10 and report.interval_s >= 0

    def test_reports_are_periodic_and_only_when_something_changed(self, redis_process: RedisProcess) -> None:
        """Every report_interval a report carries the changes; a quiet interval sends none."""
        client = redis_process.client()
        em = Emitter("engine-1", redis_process.url, report_interval=0.3, socket_timeout=0.5, max_backoff=0.1, hash_secret="s")
        em.event("warmup.done")
        assert em.flush(10)
        redis_process.stop()
        for _ in range(5):
            em.event("load.tick")
        assert not em.flush(0.5)
        redis_process.start()
        assert em.flush(30)
        wait_for(lambda: sum(r.sent for r in of_type(client, NAMES.events, "client.report")) >= 6, 10)
        reports = of_type(client, NAMES.events, "client.report")
        assert sum(r.sent for r in reports) == 6
        assert sum(r.reconnects for r in reports) == 1 and all(r.dropped_total == 0 for r in reports)
        quiet = len(reports)
        time.sleep(1.0)  # more than three intervals with nothing new
        assert len(of_type(client, NAMES.events, "client.report")) == quiet
        em.close()
