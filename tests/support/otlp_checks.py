"""Trace-integrity checks over parsed OTLP requests (generated opentelemetry-proto classes only)."""

from __future__ import annotations

from typing import Any, Iterable

from opentelemetry.proto.trace.v1 import trace_pb2

IS_REMOTE = trace_pb2.SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
ERROR = trace_pb2.Status.StatusCode.STATUS_CODE_ERROR


def attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        value = getattr(pair.value, kind) if kind else None
        if kind == "array_value":
            value = [getattr(v, v.WhichOneof("value")) for v in value.values]
        out[pair.key] = value
    return out


def integrity_problems(spans: Iterable[Any], log_records: Iterable[Any]) -> list[str]:
    """Every span's parent exported or remote, unique span ids, no log record in a missing trace."""
    spans = list(spans)
    problems: list[str] = []
    ids = [span.span_id for span in spans]
    if len(ids) != len(set(ids)):
        problems.append(f"{len(ids) - len(set(ids))} duplicate span ids")
    exported = set(ids)
    traces = {span.trace_id for span in spans}
    for span in spans:
        if span.parent_span_id and span.parent_span_id not in exported and not span.flags & IS_REMOTE:
            problems.append(f"span {span.name!r} points to parent {span.parent_span_id.hex()} that was never exported")
    for record in log_records:
        if record.trace_id and record.trace_id not in traces:
            problems.append(f"log record {record.event_name!r} points to trace {record.trace_id.hex()} with no span")
        if record.span_id and record.span_id not in exported:
            problems.append(f"log record {record.event_name!r} points to span {record.span_id.hex()} never exported")
    return problems
