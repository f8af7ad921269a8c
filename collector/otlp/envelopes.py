"""Encoded log records or spans into ``Export*ServiceRequest`` payloads of bounded size. Pure.

Items arrive grouped by resource (service, host, pid) as length-prefixed
messages without their field tag (see :func:`collector.otlp.wire.repeated`);
each group goes under its resource and this collector's instrumentation scope,
and a request that would pass ``max_request_bytes`` is closed and the group
continued in the next one. An item larger than the limit travels alone.
"""

from __future__ import annotations

from typing import Any

import msgspec
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.otlp import wire
from collector.otlp.options import TranslateOptions
from collector.otlp.resources import ResourceKey, Resources

__all__ = ["Envelope", "LOGS", "TRACES", "RequestBuilder"]

_T_SCOPE_NAME = wire.tag(common_pb2.InstrumentationScope.DESCRIPTOR, "name")
_T_SCOPE_VERSION = wire.tag(common_pb2.InstrumentationScope.DESCRIPTOR, "version")


class Envelope(msgspec.Struct, frozen=True):
    """The nesting of one signal: request -> resource group -> scope group -> items."""

    resource_group: bytes  # Export*ServiceRequest.resource_*
    resource: bytes  # Resource* .resource
    scope_group: bytes  # Resource* .scope_*
    scope: bytes  # Scope* .scope
    item: bytes  # Scope* .log_records / .spans
    resource_schema: bytes  # Resource* .schema_url
    scope_schema: bytes  # Scope* .schema_url

    @classmethod
    def of(cls, request: Any, resources: Any, scopes: Any, group: str, scope_group: str, items: str) -> Envelope:
        """The tags of one signal, read from its protobuf descriptors."""
        return cls(
            resource_group=wire.tag(request.DESCRIPTOR, group),
            resource=wire.tag(resources.DESCRIPTOR, "resource"),
            scope_group=wire.tag(resources.DESCRIPTOR, scope_group),
            scope=wire.tag(scopes.DESCRIPTOR, "scope"),
            item=wire.tag(scopes.DESCRIPTOR, items),
            resource_schema=wire.tag(resources.DESCRIPTOR, "schema_url"),
            scope_schema=wire.tag(scopes.DESCRIPTOR, "schema_url"),
        )


LOGS = Envelope.of(
    logs_service_pb2.ExportLogsServiceRequest, logs_pb2.ResourceLogs, logs_pb2.ScopeLogs,
    "resource_logs", "scope_logs", "log_records",
)  # fmt: skip
TRACES = Envelope.of(
    trace_service_pb2.ExportTraceServiceRequest, trace_pb2.ResourceSpans, trace_pb2.ScopeSpans,
    "resource_spans", "scope_spans", "spans",
)  # fmt: skip


class RequestBuilder:
    """Builds the requests of one signal; keeps only constant encodings."""

    def __init__(self, shape: Envelope, options: TranslateOptions, resources: Resources) -> None:
        self._shape = shape
        self._limit = options.max_request_bytes
        self._resources = resources
        schema = options.schema_url.encode()
        scope = wire.length_delimited(_T_SCOPE_NAME, options.scope_name.encode())
        scope += wire.length_delimited(_T_SCOPE_VERSION, options.scope_version.encode())
        self._resource_schema = wire.length_delimited(shape.resource_schema, schema)
        self._scope = wire.length_delimited(shape.scope, scope) + wire.length_delimited(shape.scope_schema, schema)

    def build(self, groups: dict[ResourceKey, list[bytes]]) -> list[bytes]:
        """The requests holding every group's items, in order, each within the size limit."""
        shape, limit, scope = self._shape, self._limit, self._scope
        requests: list[bytes] = []
        current: list[bytes] = []  # resource groups of the request being built
        size = 0
        for key, items in groups.items():
            head = wire.length_delimited(shape.resource, self._resources.encoded(key)) + self._resource_schema
            overhead = len(head) + len(scope) + 16  # tags and length prefixes
            total = sum(map(len, items)) + len(items)  # with each item's field tag
            if size + overhead + total <= limit:  # the common case: the whole group fits
                group = self._group(head, items)
                current.append(group)
                size += len(group)
                continue
            run: list[bytes] = []
            run_size = 0
            for item in items:
                if (run or current) and size + overhead + run_size + len(item) + 1 > limit:
                    if run:
                        current.append(self._group(head, run))
                    requests.append(b"".join(current))
                    current, size, run, run_size = [], 0, [], 0
                run.append(item)
                run_size += len(item) + 1
            if run:
                group = self._group(head, run)
                current.append(group)
                size += len(group)
        if current:
            requests.append(b"".join(current))
        return requests

    def _group(self, head: bytes, items: list[bytes]) -> bytes:
        shape = self._shape
        scope_group = wire.length_delimited(shape.scope_group, self._scope + wire.repeated(shape.item, items))
        return wire.length_delimited(shape.resource_group, head + scope_group)
