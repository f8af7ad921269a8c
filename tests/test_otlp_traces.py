"""Trace integrity and visible failures (contract decisions 1 and 2) in the translator."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.otlp.translate import Translator
from emitters.events import Event, GenerationCompleted
from tests.support.otlp_checks import ERROR, IS_REMOTE, attributes, integrity_problems
from tests.support.otlp_events import Workload

HAS_IS_REMOTE = trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK


def export(events: list[Event]) -> tuple[list[Any], list[Any]]:
    logs, spans = Translator().translate(events, 1)
    traces = ExportTraceServiceRequest()
    for payload in spans:
        traces.MergeFromString(payload)
    records = ExportLogsServiceRequest()
    for payload in logs:
        records.MergeFromString(payload)
    span_list = [s for rs in traces.resource_spans for ss in rs.scope_spans for s in ss.spans]
    log_list = [r for rl in records.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    return span_list, log_list


class TestTraceIntegrity:
    def test_demo_traffic_has_whole_traces(self) -> None:
        """Scopes are spans, parents exist or are remote, ids unique, no log record in a missing trace."""
        events = Workload().demo(requests=9, failures=2)
        spans, records = export(events)
        assert integrity_problems(spans, records) == []
        assert sum(1 for span in spans if span.name == "POST /v1/chat/completions") == 9

    def test_remote_parent_is_kept_and_flagged(self) -> None:
        """A scope continuing a caller's traceparent keeps that trace and parent, flagged remote."""
        workload = Workload()
        with workload.scope("POST /v1/completions", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"):
            workload.generation("r1")
        spans, _ = export(workload.events)
        request = next(span for span in spans if span.name == "POST /v1/completions")
        generation = next(span for span in spans if span.name.startswith("text_completion"))
        assert request.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
        assert request.parent_span_id.hex() == "b7ad6b7169203331"
        assert request.flags & IS_REMOTE and request.flags & HAS_IS_REMOTE
        assert generation.parent_span_id == request.span_id
        assert generation.flags & HAS_IS_REMOTE and not generation.flags & IS_REMOTE

    def test_duration_event_and_generation_in_one_scope_get_distinct_ids(self) -> None:
        """Two derived spans of the same scope: span id = first 16 hex of each event id, same parent."""
        workload = Workload()
        with workload.scope("job") as scope:
            first = workload.generation("r1")
            second = workload.add(type(first), **{k: getattr(first, k) for k in ("model", "request_id", "prompt_tokens", "generation_tokens", "duration_ms")})
        spans, _ = export(workload.events)
        derived = [span for span in spans if span.name.startswith("text_completion")]
        assert {span.span_id.hex() for span in derived} == {first.id[:16], second.id[:16]}
        assert {span.parent_span_id.hex() for span in derived} == {scope["span_id"]}

    def test_event_outside_scopes_has_no_trace(self) -> None:
        """Outside every scope: the log record carries no ids, a derived span is its own root."""
        workload = Workload()
        workload.outside()
        spans, records = export(workload.events)
        assert all(not record.trace_id and not record.span_id for record in records)
        (load,) = spans
        loaded = workload.events[1]
        assert load.trace_id.hex() == loaded.id and load.span_id.hex() == loaded.id[:16] and not load.parent_span_id

    def test_span_ended_is_a_span_not_a_log(self) -> None:
        """span.ended becomes the scope's span with its own times; no log record repeats it."""
        workload = Workload()
        with workload.scope("outer"):
            pass
        spans, records = export(workload.events)
        (span,) = spans
        ended = workload.events[0]
        assert span.name == "outer" and span.span_id.hex() == ended.span_id
        assert span.start_time_unix_nano == ended.start_ts
        assert span.end_time_unix_nano == ended.start_ts + round(ended.duration_ms * 1e6)
        assert records == []


class TestFailures:
    def test_failed_generation_is_an_error_span(self) -> None:
        """An error inside a generation: ERROR span, message as description, error.type, exception event."""
        workload = Workload()
        with workload.scope("POST /v1/chat/completions"):
            error = workload.generation("r1", fail="MemoryError")
        spans, _ = export(workload.events)
        span = next(span for span in spans if span.name == "text_completion tiny")
        attrs = attributes(span.attributes)
        assert span.status.code == ERROR and span.status.message == error.message
        assert attrs["error.type"] == "MemoryError"
        assert span.end_time_unix_nano - span.start_time_unix_nano == 1_000_000  # since generation.started
        (exception,) = span.events
        assert exception.name == "exception"
        assert attributes(exception.attributes)["exception.type"] == "MemoryError"

    def test_completed_with_error_keeps_standard_names(self) -> None:
        """A generation.completed with error severity: its error.type stays error.type, message from attrs."""
        workload = Workload()
        event = workload.add(
            GenerationCompleted, model="m", request_id="r", prompt_tokens=1, generation_tokens=0, duration_ms=2.0,
            severity="error", finish_reason="error",
            attrs={"error.type": "TimeoutError", "exception.message": "engine timed out"},
        )
        spans, records = export([event])
        (span,) = spans
        assert span.status.code == ERROR and span.status.message == "engine timed out"
        assert attributes(span.attributes)["error.type"] == "TimeoutError"
        assert "attrs.error.type" not in attributes(records[0].attributes)

    def test_failed_scope_is_error(self) -> None:
        """A scope whose with-block raised: ERROR with the message, error.type and an exception event."""
        workload = Workload()
        with workload.scope("POST /x") as scope:
            scope["fail"](status="error", status_message="boom", error_type="ValueError")
        (span,), _ = export(workload.events)
        assert span.status.code == ERROR and span.status.message == "boom"
        assert attributes(span.attributes)["error.type"] == "ValueError"
        assert span.events[0].name == "exception"
