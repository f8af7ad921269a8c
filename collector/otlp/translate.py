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
``deployment.environment``) from config; records are grouped by resource
(:mod:`collector.otlp.resources`) and requests split so none exceeds
``max_request_bytes`` (:mod:`collector.otlp.envelopes`). Attributes are
encoded once per event for its record and span
(:mod:`collector.otlp.event_attributes`).
"""

from __future__ import annotations

import struct
from typing import Iterable, Optional

import msgspec
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.otlp import wire
from collector.otlp.attributes import (
    ENVELOPE_KEYS,
    ERROR_TYPE_KEY,
    FIELD_KEYS,
    OPERATION_KEY,
    PROVIDER_KEY,
    PROVIDER_KEYS,
    SPAN_CONSUMED,
    attribute_key_for,
    operation_name,
    provider_name,
)
from collector.otlp.envelopes import LOGS, TRACES, RequestBuilder
from collector.otlp.event_attributes import AttributeEncoder
from collector.otlp.options import TranslateOptions
from collector.otlp.resources import ResourceKey, Resources
from collector.otlp.spans import Failure, SpanShape, StartTimes, makes_log, span_shape
from collector.otlp.wire import AttributeKey
from emitters.events import ErrorEvent, Event, GenerationStarted, SpanEnded

__all__ = [
    "TranslateOptions",
    "Translator",
    "Payloads",
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
_LOG_TRACE_ID = wire.tag(_LOG, "trace_id") + b"\x10"
_LOG_SPAN_ID = wire.tag(_LOG, "span_id") + b"\x08"
_HEX_LOG_TRACE_ID, _HEX_LOG_SPAN_ID = _LOG_TRACE_ID.hex(), _LOG_SPAN_ID.hex()
_T_EVENT_NAME = wire.tag(_LOG, "event_name")

_SPAN = trace_pb2.Span.DESCRIPTOR
_T_SPAN_TRACE_ID_16 = wire.tag(_SPAN, "trace_id") + b"\x10"
_T_SPAN_SPAN_ID_8 = wire.tag(_SPAN, "span_id") + b"\x08"
_T_SPAN_PARENT_ID = wire.tag(_SPAN, "parent_span_id") + b"\x08"
_T_SPAN_NAME = wire.tag(_SPAN, "name")
_KIND_INTERNAL = wire.tag(_SPAN, "kind") + wire.varint(_SPAN_KIND_INTERNAL)
_T_SPAN_START = wire.tag(_SPAN, "start_time_unix_nano")
_T_SPAN_END = wire.tag(_SPAN, "end_time_unix_nano")
_T_SPAN_ATTRIBUTE = wire.tag(_SPAN, "attributes")
_T_SPAN_STATUS = wire.tag(_SPAN, "status")
_T_SPAN_FLAGS = wire.tag(_SPAN, "flags")
_FLAGS_ROOT = _T_SPAN_FLAGS + struct.pack("<I", _SAMPLED)
_FLAGS_LOCAL = _T_SPAN_FLAGS + struct.pack("<I", _SAMPLED | _HAS_IS_REMOTE)
_FLAGS_REMOTE = _T_SPAN_FLAGS + struct.pack("<I", _SAMPLED | _HAS_IS_REMOTE | _IS_REMOTE)
_T_SPAN_EVENT = wire.tag(_SPAN, "events")
_SPAN_EVENT = trace_pb2.Span.Event.DESCRIPTOR
_T_SPAN_EVENT_TIME = wire.tag(_SPAN_EVENT, "time_unix_nano")
_T_SPAN_EVENT_NAME = wire.tag(_SPAN_EVENT, "name")
_T_SPAN_EVENT_ATTRIBUTE = wire.tag(_SPAN_EVENT, "attributes")
_T_STATUS_MESSAGE = wire.tag(trace_pb2.Status.DESCRIPTOR, "message")
_T_STATUS_CODE = wire.tag(trace_pb2.Status.DESCRIPTOR, "code")
_T_STRING = wire.tag(common_pb2.AnyValue.DESCRIPTOR, "string_value")

_SEVERITY_FIELDS: dict[str, bytes] = {
    name: _T_SEVERITY_NUMBER + wire.varint(number) + wire.length_delimited(_T_SEVERITY_TEXT, name.encode())
    for name, number in SEVERITY_NUMBERS.items()
}
_EVENT_NAME = AttributeKey("event.name")
_OPERATION = AttributeKey(OPERATION_KEY)
_ERROR_TYPE = AttributeKey(ERROR_TYPE_KEY)
_pack_fixed64 = struct.Struct("<Q").pack
_SMALL_VARINTS = wire.SMALL_VARINTS


class _TypeFields(msgspec.Struct, frozen=True):
    """Encodings that depend only on the event type."""

    body_and_name: bytes  # LogRecord.body = the type, then the `event.name` attribute
    name_attribute: bytes  # the `event.name` attribute alone (error events: the body is the message)
    event_name: bytes  # LogRecord.event_name


class Payloads(list[bytes]):
    """Serialized requests of one signal, and how many records (log records or spans) they hold."""

    records: int = 0


class Translator:
    """Translates batches of events; keeps only caches of constant encodings.

    Output is serialized ``ExportLogsServiceRequest`` /
    ``ExportTraceServiceRequest`` payloads, each at most
    ``options.max_request_bytes`` (unless a single record is larger).
    """

    def __init__(self, options: TranslateOptions | None = None, resources: Resources | None = None) -> None:
        self.options = options or TranslateOptions()
        self._provider = AttributeKey(self.options.provider_key)
        resources = resources or Resources(self.options)
        self._logs = RequestBuilder(LOGS, self.options, resources)
        self._traces = RequestBuilder(TRACES, self.options, resources)
        self._attributes = AttributeEncoder(self.options.capture_content)
        self._types: dict[str, _TypeFields] = {}
        self._generation: dict[tuple[str, str], list[bytes]] = {}
        # Failed generations take their start from the request's generation.started.
        self.starts = StartTimes()

    # -- logs and spans ----------------------------------------------------

    def translate(
        self, events: Iterable[Event], observed_ns: int, *, logs: bool = True, spans: bool = True
    ) -> tuple[Payloads, Payloads]:
        """(``ExportLogsServiceRequest`` payloads, ``ExportTraceServiceRequest`` payloads).

        One log record per event, one span per event carrying a duration;
        each event's attributes are encoded once for both. No span, no
        trace request.
        """
        log_groups: dict[ResourceKey, list[bytes]] = {}
        span_groups: dict[ResourceKey, list[bytes]] = {}
        log_count = span_count = 0
        # After each record's time: the observed time (the same for the batch) and its severity.
        after_time = {name: _T_OBSERVED + _pack_fixed64(observed_ns) + fields for name, fields in _SEVERITY_FIELDS.items()}
        starts = self.starts
        attribute_items, log_record = self._attributes.items, self._log_record
        for event in events:
            if spans and type(event) is GenerationStarted:  # start times serve failed generations' spans only
                starts.note(event)
            shape = span_shape(event, starts) if spans else None
            log = logs and makes_log(event)
            if not log and shape is None:
                continue
            key = (event.service, event.host, event.pid)
            items = attribute_items(event)
            if log:
                record = log_record(event, after_time[event.severity], items)
                size = len(record)
                group = log_groups.get(key)
                if group is None:
                    group = log_groups[key] = []
                group.append((_SMALL_VARINTS[size] if size < 16384 else wire.varint(size)) + record)
                log_count += 1
            if shape is not None:
                group = span_groups.get(key)
                if group is None:
                    group = span_groups[key] = []
                group.append(_sized(self._span(event, shape, items)))
                span_count += 1
        return _payloads(self._logs.build(log_groups), log_count), _payloads(self._traces.build(span_groups), span_count)

    def logs(self, events: Iterable[Event], observed_ns: int) -> list[bytes]:
        """``ExportLogsServiceRequest`` payloads holding one record per event."""
        return self.translate(events, observed_ns, spans=False)[0]

    def spans(self, events: Iterable[Event]) -> list[bytes]:
        """``ExportTraceServiceRequest`` payloads; empty when no event makes a span."""
        return self.translate(events, 0, logs=False)[1]

    def log_record(self, event: Event, observed_ns: int) -> bytes:
        """One serialized ``LogRecord`` (without its enclosing field tag)."""
        after_time = _T_OBSERVED + _pack_fixed64(observed_ns) + _SEVERITY_FIELDS[event.severity]
        return self._log_record(event, after_time, self._attributes.items(event))

    def span(self, event: Event) -> Optional[bytes]:
        """One serialized ``Span``, or None when the event makes none."""
        self.starts.note(event)
        shape = span_shape(event, self.starts)
        return None if shape is None else self._span(event, shape, self._attributes.items(event))

    def _log_record(self, event: Event, after_time: bytes, items: list[bytes]) -> bytes:
        fields = self._types.get(event.type) or self._type_fields(event.type)
        if type(event) is ErrorEvent:
            body = wire.length_delimited(_T_BODY, wire.length_delimited(_T_STRING, event.message.encode()))
            body += fields.name_attribute
        else:
            body = fields.body_and_name
        trace_id = event.trace_id
        if trace_id is None:
            ids = b""
        elif event.span_id is None:
            ids = bytes.fromhex(_HEX_LOG_TRACE_ID + trace_id)
        else:  # one conversion for both ids and their tags
            ids = bytes.fromhex(_HEX_LOG_TRACE_ID + trace_id + _HEX_LOG_SPAN_ID + event.span_id)
        attributes = _T_LOG_ATTRIBUTE + _T_LOG_ATTRIBUTE.join(items) if items else b""  # wire.repeated, inline
        return b"".join((_T_TIME, _pack_fixed64(event.ts), after_time, body, attributes, ids, fields.event_name))

    def _type_fields(self, event_type: str) -> _TypeFields:
        if len(self._types) >= _CACHE_LIMIT:  # custom event types are open-ended
            self._types.clear()
        name = event_type.encode()
        name_attribute = _T_LOG_ATTRIBUTE + _EVENT_NAME.item(event_type)
        fields = _TypeFields(
            body_and_name=wire.length_delimited(_T_BODY, wire.length_delimited(_T_STRING, name)) + name_attribute,
            name_attribute=name_attribute,
            event_name=wire.length_delimited(_T_EVENT_NAME, name),
        )
        self._types[event_type] = fields
        return fields

    def _span(self, event: Event, shape: SpanShape, items: list[bytes]) -> bytes:
        model = getattr(event, "model", None)
        if type(event) is SpanEnded:
            name = event.name
        elif shape.generation:
            operation = operation_name(event, self.options)
            name = f"{operation} {model or 'unknown'}"
            if not SPAN_CONSUMED.isdisjoint(event.attrs):
                items = self._attributes.items(event, consumed=SPAN_CONSUMED)
            items = self._generation_items(operation, provider_name(event, self.options)) + items
        else:
            name = f"{event.type} {model}" if model else event.type
        failure = shape.failure
        if failure is not None and type(event) is not ErrorEvent and ERROR_TYPE_KEY not in event.attrs:
            items = items + [_ERROR_TYPE.item(failure.error_type)]
        if shape.parent_span_id is None:
            parent = _FLAGS_ROOT
        else:
            parent = _T_SPAN_PARENT_ID + shape.parent_span_id + (_FLAGS_REMOTE if shape.parent_remote else _FLAGS_LOCAL)
        parts = [
            _T_SPAN_TRACE_ID_16,
            shape.trace_id,
            _T_SPAN_SPAN_ID_8,
            shape.span_id,
            parent,
            wire.length_delimited(_T_SPAN_NAME, name.encode()),
            _KIND_INTERNAL,
            _T_SPAN_START,
            _pack_fixed64(shape.start_ns),
            _T_SPAN_END,
            _pack_fixed64(shape.end_ns),
            wire.repeated(_T_SPAN_ATTRIBUTE, items),
        ]
        if failure is not None:
            parts.append(wire.length_delimited(_T_SPAN_EVENT, _exception_event(event.ts, failure)))
            status = _T_STATUS_CODE + wire.varint(_STATUS_ERROR)
            status += wire.length_delimited(_T_STATUS_MESSAGE, failure.message.encode())
            parts.append(wire.length_delimited(_T_SPAN_STATUS, status))
        return b"".join(parts)

    def _generation_items(self, operation: str, provider: str) -> list[bytes]:
        """``gen_ai.operation.name`` and the provider: a handful of values, encoded once each."""
        pair = self._generation.get((operation, provider))
        if pair is None:
            if len(self._generation) >= _CACHE_LIMIT:  # the values may come from attrs
                self._generation.clear()
            pair = self._generation[(operation, provider)] = [_OPERATION.item(operation), self._provider.item(provider)]
        return pair


def _sized(message: bytes) -> bytes:
    """``message`` with its length prefix, ready for :func:`wire.repeated`."""
    size = len(message)
    return (_SMALL_VARINTS[size] if size < 16384 else wire.varint(size)) + message


def _payloads(requests: list[bytes], records: int) -> Payloads:
    payloads = Payloads(requests)
    payloads.records = records
    return payloads


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
