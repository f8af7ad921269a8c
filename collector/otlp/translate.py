"""Events to OTLP logs and spans, as ready-to-send protobuf bytes. Pure: no I/O.

Every event becomes one ``LogRecord``: ``time_unix_nano`` is the event's own
timestamp, ``observed_time_unix_nano`` when the collector translated it,
severity from the event, ``event_name`` and the ``event.name`` attribute from
its type, the body its message (error events) or its type, and
``trace_id``/``span_id`` from its hex ids.

``trace_id``/``span_id`` are set only when the event has them: an event
outside every scope belongs to no trace, and its record says so.

Spans (ids and times: :mod:`collector.otlp.spans`): a ``span.ended`` event is
the span of an emitter scope (and no log record: the span is its record); a
``generation.completed`` or failed generation becomes a span named
``{gen_ai.operation.name} {model}``, any other event carrying a duration
(``load_ms`` of ``model.loaded``, a numeric ``duration_ms``/``load_ms`` in
``attrs``) one named after its type. A failure makes the span's status ERROR
with the error message as description, ``error.type``, and an ``exception``
span event.

Attribute names (logs and spans):

- envelope: ``event.id``, ``event.name`` (logs), ``request.id``, ``job.id``,
  ``worker.id``, ``machine.id``, ``user.id`` (already hashed by the emitter),
  ``span.parent_id``;
- typed fields: the semantic-convention name where there is one
  (:data:`FIELD_KEYS`: ``gen_ai.request.model``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.response.finish_reasons``,
  ``gen_ai.request.*``, ``exception.message/type/stacktrace``; errors also get
  ``error.type``), otherwise ``mlx.<entity>.<field>``
  (``mlx.generation.ttft_ms``, ``mlx.generation.tokens_per_second``,
  ``mlx.model.load_ms``, with ``mlx.model.path`` and ``mlx.token.text``);
  maps (``metadata``, ``context``) flatten to ``mlx.<entity>.<field>.<key>``;
- ``attrs`` keep their own keys, so an emitter can add semantic-convention
  attributes itself; on generation spans ``gen_ai.operation.name`` (``chat``)
  and ``gen_ai.provider.name`` from ``attrs`` replace the defaults
  (``text_completion``, ``mlx``). A key that collides with one of ours
  becomes ``attrs.<key>``.

Prompt and token text (``prompt``, ``token``) are content: they are exported
only with ``capture_content`` on.

Resource attributes come from each event: ``service.name``, ``host.name``,
``process.pid``, plus ``deployment.environment.name`` (and the older
``deployment.environment``) from config; records are grouped by resource.
Requests are split so none exceeds ``max_request_bytes``.
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional

import msgspec
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.otlp import wire
from collector.otlp.attributes import (
    ENVELOPE_KEYS,
    FIELD_KEYS,
    OPERATION_KEY,
    PROVIDER_KEY,
    PROVIDER_KEYS,
    attribute_key_for,
    operation_name,
    provider_name,
)
from collector.otlp.attributes import (  # the translator's own tables, computed once
    ARRAY as _ARRAY,
    ENVELOPE_PLAN as _ENVELOPE_PLAN,
    ERROR_TYPE_ENCODED as _ERROR_TYPE_ENCODED,
    ERROR_TYPE_KEY as _ERROR_TYPE_KEY,
    EVENT_NAME_KEY as _EVENT_NAME_KEY,
    OPERATION_ENCODED as _OPERATION_ENCODED,
    PLANS as _PLANS,
    RESERVED as _RESERVED,
    SCALAR as _SCALAR,
    SPAN_CONSUMED as _SPAN_CONSUMED,
)
from collector.otlp.options import TranslateOptions
from collector.otlp.resources import Resources
from collector.otlp.spans import Failure, SpanShape, StartTimes, makes_log, span_shape
from emitters.events import ErrorEvent, Event, SpanEnded

__all__ = [
    "TranslateOptions",
    "Translator",
    "FIELD_KEYS",
    "OPERATION_KEY",
    "PROVIDER_KEY",
    "ENVELOPE_KEYS",
    "SEVERITY_NUMBERS",
    "attribute_key_for",
    "operation_name",
    "provider_name",
    "PROVIDER_KEYS",
]

# OTLP SeverityNumber: DEBUG=5, INFO=9, WARN=13, ERROR=17, FATAL=21.
SEVERITY_NUMBERS: dict[str, int] = {"debug": 5, "info": 9, "warn": 13, "error": 17, "critical": 21}

_SPAN_KIND_INTERNAL = trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
_STATUS_ERROR = trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
_SAMPLED = 0x01
# SpanFlags: bit 8 says whether the parent is remote is known, bit 9 that it is.
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x200
_CACHE_LIMIT = 4096


# -- tags, derived from the generated descriptors ------------------------------

_LOG = logs_pb2.LogRecord.DESCRIPTOR
_T_TIME = wire.tag(_LOG, "time_unix_nano")
_T_OBSERVED = wire.tag(_LOG, "observed_time_unix_nano")
_T_SEVERITY_NUMBER = wire.tag(_LOG, "severity_number")
_T_SEVERITY_TEXT = wire.tag(_LOG, "severity_text")
_T_BODY = wire.tag(_LOG, "body")
_T_LOG_ATTRIBUTE = wire.tag(_LOG, "attributes")
_T_LOG_TRACE_ID = wire.tag(_LOG, "trace_id")
_T_LOG_SPAN_ID = wire.tag(_LOG, "span_id")
_T_EVENT_NAME = wire.tag(_LOG, "event_name")

_SPAN = trace_pb2.Span.DESCRIPTOR
_T_SPAN_TRACE_ID = wire.tag(_SPAN, "trace_id")
_T_SPAN_SPAN_ID = wire.tag(_SPAN, "span_id")
_T_SPAN_PARENT = wire.tag(_SPAN, "parent_span_id")
_T_SPAN_NAME = wire.tag(_SPAN, "name")
_T_SPAN_KIND = wire.tag(_SPAN, "kind")
_T_SPAN_START = wire.tag(_SPAN, "start_time_unix_nano")
_T_SPAN_END = wire.tag(_SPAN, "end_time_unix_nano")
_T_SPAN_ATTRIBUTE = wire.tag(_SPAN, "attributes")
_T_SPAN_STATUS = wire.tag(_SPAN, "status")
_T_SPAN_FLAGS = wire.tag(_SPAN, "flags")
_T_SPAN_EVENT = wire.tag(_SPAN, "events")
_SPAN_EVENT = trace_pb2.Span.Event.DESCRIPTOR
_T_SPAN_EVENT_TIME = wire.tag(_SPAN_EVENT, "time_unix_nano")
_T_SPAN_EVENT_NAME = wire.tag(_SPAN_EVENT, "name")
_T_SPAN_EVENT_ATTRIBUTE = wire.tag(_SPAN_EVENT, "attributes")
_T_STATUS_MESSAGE = wire.tag(trace_pb2.Status.DESCRIPTOR, "message")
_T_STATUS_CODE = wire.tag(trace_pb2.Status.DESCRIPTOR, "code")

_T_SCOPE_NAME = wire.tag(common_pb2.InstrumentationScope.DESCRIPTOR, "name")
_T_SCOPE_VERSION = wire.tag(common_pb2.InstrumentationScope.DESCRIPTOR, "version")
_T_STRING = wire.tag(common_pb2.AnyValue.DESCRIPTOR, "string_value")


class _Envelope(msgspec.Struct, frozen=True):
    """The nesting of one signal: request -> resource group -> scope group -> items."""

    resource_group: bytes  # Export*ServiceRequest.resource_*
    resource: bytes  # Resource* .resource
    scope_group: bytes  # Resource* .scope_*
    scope: bytes  # Scope* .scope
    item: bytes  # Scope* .log_records / .spans
    resource_schema: bytes  # Resource* .schema_url
    scope_schema: bytes  # Scope* .schema_url


_LOGS = _Envelope(
    resource_group=wire.tag(logs_service_pb2.ExportLogsServiceRequest.DESCRIPTOR, "resource_logs"),
    resource=wire.tag(logs_pb2.ResourceLogs.DESCRIPTOR, "resource"),
    scope_group=wire.tag(logs_pb2.ResourceLogs.DESCRIPTOR, "scope_logs"),
    scope=wire.tag(logs_pb2.ScopeLogs.DESCRIPTOR, "scope"),
    item=wire.tag(logs_pb2.ScopeLogs.DESCRIPTOR, "log_records"),
    resource_schema=wire.tag(logs_pb2.ResourceLogs.DESCRIPTOR, "schema_url"),
    scope_schema=wire.tag(logs_pb2.ScopeLogs.DESCRIPTOR, "schema_url"),
)
_TRACES = _Envelope(
    resource_group=wire.tag(trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR, "resource_spans"),
    resource=wire.tag(trace_pb2.ResourceSpans.DESCRIPTOR, "resource"),
    scope_group=wire.tag(trace_pb2.ResourceSpans.DESCRIPTOR, "scope_spans"),
    scope=wire.tag(trace_pb2.ScopeSpans.DESCRIPTOR, "scope"),
    item=wire.tag(trace_pb2.ScopeSpans.DESCRIPTOR, "spans"),
    resource_schema=wire.tag(trace_pb2.ResourceSpans.DESCRIPTOR, "schema_url"),
    scope_schema=wire.tag(trace_pb2.ScopeSpans.DESCRIPTOR, "schema_url"),
)

_SEVERITY_FIELDS: dict[str, bytes] = {
    name: _T_SEVERITY_NUMBER + wire.varint(number) + wire.length_delimited(_T_SEVERITY_TEXT, name.encode())
    for name, number in SEVERITY_NUMBERS.items()
}

_ResourceKey = tuple[str, str, int]


class _TypeFields(msgspec.Struct, frozen=True):
    """Encodings that depend only on the event type."""

    body: bytes  # LogRecord.body = the type (events other than `error`)
    name_attribute: bytes  # LogRecord.attributes `event.name`
    event_name: bytes  # LogRecord.event_name


class Translator:
    """Translates batches of events; keeps only caches of constant encodings.

    Output is a list of serialized ``ExportLogsServiceRequest`` /
    ``ExportTraceServiceRequest`` payloads, each at most
    ``options.max_request_bytes`` (unless a single record is larger).
    """

    def __init__(self, options: TranslateOptions | None = None, resources: Resources | None = None) -> None:
        self.options = options or TranslateOptions()
        self._provider_key = wire.attribute_key(self.options.provider_key)
        self._resources = resources or Resources(self.options)
        schema = self.options.schema_url.encode()
        scope = wire.length_delimited(_T_SCOPE_NAME, self.options.scope_name.encode())
        scope += wire.length_delimited(_T_SCOPE_VERSION, self.options.scope_version.encode())
        self._scope = scope
        self._schema = {
            id(shape): (
                wire.length_delimited(shape.resource_schema, schema),
                wire.length_delimited(shape.scope_schema, schema),
            )
            for shape in (_LOGS, _TRACES)
        }
        self._types: dict[str, _TypeFields] = {}
        self._plan_index = 1 if self.options.capture_content else 0
        # Failed generations take their start from the request's generation.started.
        self.starts = StartTimes()

    # -- logs and spans ----------------------------------------------------

    def translate(
        self, events: Iterable[Event], observed_ns: int, *, logs: bool = True, spans: bool = True
    ) -> tuple[list[bytes], list[bytes]]:
        """(``ExportLogsServiceRequest`` payloads, ``ExportTraceServiceRequest`` payloads).

        One log record per event, one span per event carrying a duration;
        each event's attributes are encoded once for both. No span, no
        trace request.
        """
        log_groups: dict[_ResourceKey, list[bytes]] = {}
        span_groups: dict[_ResourceKey, list[bytes]] = {}
        log_tag, span_tag = _LOGS.item, _TRACES.item
        starts = self.starts
        for event in events:
            starts.note(event)
            shape = span_shape(event, starts) if spans else None
            log = logs and makes_log(event)
            if not log and shape is None:
                continue
            key = (event.service, event.host, event.pid)
            items = self._attribute_items(event)
            if log:
                record = self._log_record(event, observed_ns, items)
                log_groups.setdefault(key, []).append(wire.length_delimited(log_tag, record))
            if shape is not None:
                span = self._span(event, shape, items)
                span_groups.setdefault(key, []).append(wire.length_delimited(span_tag, span))
        return self._requests(_LOGS, log_groups), self._requests(_TRACES, span_groups)

    def logs(self, events: Iterable[Event], observed_ns: int) -> list[bytes]:
        """``ExportLogsServiceRequest`` payloads holding one record per event."""
        return self.translate(events, observed_ns, spans=False)[0]

    def spans(self, events: Iterable[Event]) -> list[bytes]:
        """``ExportTraceServiceRequest`` payloads; empty when no event makes a span."""
        return self.translate(events, 0, logs=False)[1]

    def log_record(self, event: Event, observed_ns: int) -> bytes:
        """One serialized ``LogRecord`` (without its enclosing field tag)."""
        return self._log_record(event, observed_ns, self._attribute_items(event))

    def span(self, event: Event) -> Optional[bytes]:
        """One serialized ``Span``, or None when the event makes none."""
        self.starts.note(event)
        shape = span_shape(event, self.starts)
        return None if shape is None else self._span(event, shape, self._attribute_items(event))

    def _log_record(self, event: Event, observed_ns: int, items: list[bytes]) -> bytes:
        fields = self._types.get(event.type) or self._type_fields(event.type)
        if type(event) is ErrorEvent:
            body = wire.length_delimited(_T_BODY, wire.length_delimited(_T_STRING, event.message.encode()))
        else:
            body = fields.body
        parts = [
            wire.fixed64(_T_TIME, event.ts),
            wire.fixed64(_T_OBSERVED, observed_ns),
            _SEVERITY_FIELDS[event.severity],
            body,
            fields.name_attribute,
            wire.repeated(_T_LOG_ATTRIBUTE, items),
        ]
        if event.trace_id is not None:
            parts.append(_T_LOG_TRACE_ID + b"\x10" + bytes.fromhex(event.trace_id))
            if event.span_id is not None:
                parts.append(_T_LOG_SPAN_ID + b"\x08" + bytes.fromhex(event.span_id))
        parts.append(fields.event_name)
        return b"".join(parts)

    def _type_fields(self, event_type: str) -> _TypeFields:
        if len(self._types) >= _CACHE_LIMIT:  # custom event types are open-ended
            self._types.clear()
        name = event_type.encode()
        fields = _TypeFields(
            body=wire.length_delimited(_T_BODY, wire.length_delimited(_T_STRING, name)),
            name_attribute=_T_LOG_ATTRIBUTE + wire.sized_attribute(_EVENT_NAME_KEY, event_type),
            event_name=wire.length_delimited(_T_EVENT_NAME, name),
        )
        self._types[event_type] = fields
        return fields

    def _span(self, event: Event, shape: SpanShape, items: list[bytes]) -> bytes:
        model = getattr(event, "model", None)
        parts = [
            _T_SPAN_TRACE_ID + b"\x10" + shape.trace_id,
            _T_SPAN_SPAN_ID + b"\x08" + shape.span_id,
        ]
        flags = _SAMPLED
        if shape.parent_span_id is not None:
            parts.append(_T_SPAN_PARENT + b"\x08" + shape.parent_span_id)
            flags |= _HAS_IS_REMOTE | (_IS_REMOTE if shape.parent_remote else 0)
        parts.append(_T_SPAN_FLAGS + struct.pack("<I", flags))
        if type(event) is SpanEnded:
            name = event.name
        elif shape.generation:
            operation = operation_name(event, self.options)
            name = f"{operation} {model or 'unknown'}"
            generation = [
                wire.sized_attribute(_OPERATION_ENCODED, operation),
                wire.sized_attribute(self._provider_key, provider_name(event, self.options)),
            ]
            if not _SPAN_CONSUMED.isdisjoint(event.attrs):
                items = self._attribute_items(event, consumed=_SPAN_CONSUMED)
            items = generation + items
        else:
            name = f"{event.type} {model}" if model else event.type
        failure = shape.failure
        if failure is not None and type(event) is not ErrorEvent and _ERROR_TYPE_KEY not in event.attrs:
            items = items + [wire.sized_attribute(_ERROR_TYPE_ENCODED, failure.error_type)]
        parts.append(wire.length_delimited(_T_SPAN_NAME, name.encode()))
        parts.append(_T_SPAN_KIND + wire.varint(_SPAN_KIND_INTERNAL))
        parts.append(wire.fixed64(_T_SPAN_START, shape.start_ns))
        parts.append(wire.fixed64(_T_SPAN_END, shape.end_ns))
        parts.append(wire.repeated(_T_SPAN_ATTRIBUTE, items))
        if failure is not None:
            parts.append(wire.length_delimited(_T_SPAN_EVENT, _exception_event(event.ts, failure)))
            status = _T_STATUS_CODE + wire.varint(_STATUS_ERROR)
            status += wire.length_delimited(_T_STATUS_MESSAGE, failure.message.encode())
            parts.append(wire.length_delimited(_T_SPAN_STATUS, status))
        return b"".join(parts)

    # -- shared ------------------------------------------------------------

    def _attribute_items(self, event: Event, consumed: frozenset[str] = frozenset()) -> list[bytes]:
        """The event's attributes as length-prefixed ``KeyValue`` items (see :func:`wire.repeated`)."""
        attribute = wire.sized_attribute
        items = []
        for field, key in _ENVELOPE_PLAN:
            value = getattr(event, field)
            if value is not None:
                items.append(attribute(key, value))
        cls = type(event)
        plans = _PLANS.get(cls)
        if plans is not None:
            for field, key, kind, name in plans[self._plan_index]:
                value = getattr(event, field)
                if value is None:
                    continue
                if kind == _SCALAR:
                    items.append(attribute(key, value))
                elif kind == _ARRAY:
                    items.append(wire.length_delimited(b"", wire.string_array_attribute(key, (value,))))
                else:
                    for map_key, map_value in value.items():
                        items.append(attribute(wire.attribute_key(f"{name}.{map_key}"), map_value))
            if cls is ErrorEvent:
                items.append(attribute(_ERROR_TYPE_ENCODED, event.error_type))
        if event.attrs:
            reserved = _RESERVED.get(cls) or _RESERVED[None]
            for key, value in event.attrs.items():
                if key in consumed:
                    continue
                if key in reserved:
                    key = f"attrs.{key}"
                items.append(attribute(wire.attribute_key(key), value))
        return items

    def _requests(self, shape: _Envelope, groups: dict[_ResourceKey, list[bytes]]) -> list[bytes]:
        """Assemble items into requests of at most ``max_request_bytes`` each.

        A resource group that does not fit is continued in the next request;
        an item larger than the limit travels alone.
        """
        limit = self.options.max_request_bytes
        resource_schema, scope_schema = self._schema[id(shape)]
        scope = wire.length_delimited(shape.scope, self._scope) + scope_schema
        requests: list[bytes] = []
        current: list[bytes] = []  # resource groups of the request being built
        size = 0
        for key, items in groups.items():
            head = wire.length_delimited(shape.resource, self._resources.encoded(key)) + resource_schema
            overhead = len(head) + len(scope) + 16  # tags and length prefixes
            run: list[bytes] = []
            run_size = 0
            for item in items:
                if (run or current) and size + overhead + run_size + len(item) > limit:
                    if run:
                        current.append(_group(shape, head, scope, run))
                    requests.append(b"".join(current))
                    current, size, run, run_size = [], 0, [], 0
                run.append(item)
                run_size += len(item)
            if run:
                group = _group(shape, head, scope, run)
                current.append(group)
                size += len(group)
        if current:
            requests.append(b"".join(current))
        return requests


def _exception_event(ts: int, failure: Failure) -> bytes:
    """The semantic conventions' ``exception`` span event."""
    attributes = [("exception.type", failure.error_type), ("exception.message", failure.message)]
    if failure.stacktrace:
        attributes.append(("exception.stacktrace", failure.stacktrace))
    return b"".join(
        [
            wire.fixed64(_T_SPAN_EVENT_TIME, ts),
            wire.length_delimited(_T_SPAN_EVENT_NAME, b"exception"),
            *(
                wire.length_delimited(_T_SPAN_EVENT_ATTRIBUTE, wire.attribute(key, value))
                for key, value in attributes
            ),
        ]
    )


def _group(shape: _Envelope, head: bytes, scope: bytes, items: list[bytes]) -> bytes:
    scope_group = wire.length_delimited(shape.scope_group, scope + b"".join(items))
    return wire.length_delimited(shape.resource_group, head + scope_group)
