"""Halving a serialized logs or traces request after a 413, and naming the events in one.

Rare path: the request is parsed with the generated classes, its records
(log records or spans) listed in order with their resource and scope, and two
requests built from the two halves, each keeping its records' resource and
scope. A request of one record cannot be split: that record is what the
backend can never take, and only it is dead-lettered.
"""

from __future__ import annotations

from typing import Any, Optional

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.otlp.config import Signal

__all__ = ["split_request", "event_ids"]

# request class, resource group field, scope group field, record field
_SHAPES: dict[str, tuple[Any, str, str, str]] = {
    "logs": (ExportLogsServiceRequest, "resource_logs", "scope_logs", "log_records"),
    "traces": (ExportTraceServiceRequest, "resource_spans", "scope_spans", "spans"),
}
_EVENT_ID_KEY = "event.id"


def _records(signal: Signal, payload: bytes) -> list[tuple[Any, Any, Any]]:
    request_type, resources, scopes, records = _SHAPES[signal]
    request = request_type.FromString(payload)
    return [
        (resource_group, scope_group, record)
        for resource_group in getattr(request, resources)
        for scope_group in getattr(resource_group, scopes)
        for record in getattr(scope_group, records)
    ]


def _build(signal: Signal, items: list[tuple[Any, Any, Any]]) -> bytes:
    request_type, resources, scopes, records = _SHAPES[signal]
    request = request_type()
    last_resource = last_scope = None
    resource_out = scope_out = None
    for resource_group, scope_group, record in items:
        if resource_group is not last_resource:
            resource_out = getattr(request, resources).add()
            resource_out.resource.CopyFrom(resource_group.resource)
            resource_out.schema_url = resource_group.schema_url
            last_resource, last_scope = resource_group, None
        if scope_group is not last_scope:
            scope_out = getattr(resource_out, scopes).add()
            scope_out.scope.CopyFrom(scope_group.scope)
            scope_out.schema_url = scope_group.schema_url
            last_scope = scope_group
        getattr(scope_out, records).add().CopyFrom(record)
    return request.SerializeToString()


def split_request(signal: Signal, payload: bytes) -> Optional[tuple[bytes, bytes]]:
    """Two requests holding the first and second half of the records; None for a single record."""
    items = _records(signal, payload)
    if len(items) < 2:
        return None
    middle = len(items) // 2
    return _build(signal, items[:middle]), _build(signal, items[middle:])


def event_ids(signal: Signal, payload: bytes) -> set[str]:
    """The ``event.id`` of every record in a logs or traces request."""
    ids = set()
    for _, _, record in _records(signal, payload):
        for pair in record.attributes:
            if pair.key == _EVENT_ID_KEY:
                ids.add(pair.value.string_value)
                break
    return ids
