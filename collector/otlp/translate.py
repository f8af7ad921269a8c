"""Events to OTLP logs and spans, as ready-to-send protobuf bytes. Pure: no I/O.

Every event becomes one ``LogRecord``: ``time_unix_nano`` is the event's own
timestamp, ``observed_time_unix_nano`` when the collector translated it,
severity from the event, ``event_name`` and the ``event.name`` attribute from
its type, the body its message (error events) or its type, and
``trace_id``/``span_id`` from its hex ids.

A ``generation.completed`` event also becomes a span named
``{gen_ai.operation.name} {model}`` that ends at the event's timestamp and
starts ``duration_ms`` earlier; so does any other event carrying a duration
(``load_ms`` of ``model.loaded``, or a numeric ``duration_ms``/``load_ms`` in
``attrs``), named after its type. Spans keep the event's trace id, span id and
parent span id, so logs, spans and the emitter's scopes line up.

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

import importlib.metadata
from typing import Any, Iterable, Optional

import msgspec
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.otlp import wire
from emitters.events import (
    SEVERITY_RANK,
    TYPED_EVENTS,
    Envelope,
    ErrorEvent,
    Event,
    GenerationCompleted,
    ModelLoaded,
)

__all__ = [
    "TranslateOptions",
    "Translator",
    "FIELD_KEYS",
    "OPERATION_KEY",
    "PROVIDER_KEY",
    "ENVELOPE_KEYS",
    "SEVERITY_NUMBERS",
    "attribute_key_for",
    "span_duration_ms",
    "operation_name",
    "provider_name",
    "resource_attributes",
]

try:
    _VERSION = importlib.metadata.version("mlx-telemetry")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"

# OTLP SeverityNumber: DEBUG=5, INFO=9, WARN=13, ERROR=17, FATAL=21.
SEVERITY_NUMBERS: dict[str, int] = {"debug": 5, "info": 9, "warn": 13, "error": 17, "critical": 21}

ENVELOPE_KEYS: dict[str, str] = {
    "id": "event.id",
    "request_id": "request.id",
    "job_id": "job.id",
    "worker_id": "worker.id",
    "machine_id": "machine.id",
    "user_id": "user.id",
    "parent_span_id": "span.parent_id",
}

# Typed fields not named mlx.<entity>.<field>: (event type, field) -> key. Mostly
# semantic-convention names; two plain renames where the default would stutter.
FIELD_KEYS: dict[tuple[str, str], str] = {
    **{(name, "model"): "gen_ai.request.model" for name in TYPED_EVENTS},
    ("generation.started", "prompt_tokens"): "gen_ai.usage.input_tokens",
    ("generation.started", "max_tokens"): "gen_ai.request.max_tokens",
    ("generation.started", "temperature"): "gen_ai.request.temperature",
    ("generation.started", "top_p"): "gen_ai.request.top_p",
    ("generation.started", "top_k"): "gen_ai.request.top_k",
    ("generation.started", "seed"): "gen_ai.request.seed",
    ("generation.completed", "prompt_tokens"): "gen_ai.usage.input_tokens",
    ("generation.completed", "generation_tokens"): "gen_ai.usage.output_tokens",
    ("generation.completed", "finish_reason"): "gen_ai.response.finish_reasons",
    ("error", "message"): "exception.message",
    ("error", "error_type"): "exception.type",
    ("error", "stack"): "exception.stacktrace",
    ("model.loaded", "model_path"): "mlx.model.path",
    ("token.generated", "token"): "mlx.token.text",
    # --- mlx-lm server fields (#11): prompt-cache reuse has a GenAI name; the
    # other serving fields keep the default mlx.<entity>.<field> keys. ---
    ("generation.started", "cached_prompt_tokens"): "gen_ai.usage.cache_read.input_tokens",
    ("generation.completed", "cached_prompt_tokens"): "gen_ai.usage.cache_read.input_tokens",
    # --- end #11 ---
}
# Besides exception.type, errors carry the low-cardinality error.type used by metrics.
_ERROR_TYPE_KEY = "error.type"
# Fields whose value is a list in the convention (a string array attribute).
_ARRAY_FIELDS = frozenset({("generation.completed", "finish_reason")})
# Fields holding a map of attributes, flattened to `<key>.<map key>`.
_MAP_FIELDS = frozenset({("model.loaded", "metadata"), ("error", "context")})
# Content, exported only with capture_content.
_CONTENT_FIELDS = frozenset({("generation.started", "prompt"), ("token.generated", "token")})

OPERATION_KEY = "gen_ai.operation.name"
PROVIDER_KEY = "gen_ai.provider.name"
_DURATION_ATTRS = ("duration_ms", "load_ms")
_SPAN_KIND_INTERNAL = trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
_STATUS_ERROR = trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
_ERROR_RANK = SEVERITY_RANK["error"]
_CACHE_LIMIT = 4096


def attribute_key_for(event_type: str, field: str) -> str:
    """The attribute name of a typed field (see the module docstring)."""
    return FIELD_KEYS.get((event_type, field)) or f"mlx.{event_type.split('.')[0]}.{field}"


class TranslateOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What translation depends on besides the events."""

    deployment_environment: Optional[str] = None
    capture_content: bool = False
    provider_name: str = "mlx"
    default_operation: str = "text_completion"
    scope_name: str = "mlx-telemetry"
    scope_version: str = _VERSION
    max_request_bytes: int = 3 * 1024 * 1024


def operation_name(event: Event, options: TranslateOptions) -> str:
    """``gen_ai.operation.name``: the event's own ``attrs`` value, else the default."""
    value = event.attrs.get(OPERATION_KEY)
    return value if isinstance(value, str) and value else options.default_operation


def provider_name(event: Event, options: TranslateOptions) -> str:
    """``gen_ai.provider.name``: the event's own ``attrs`` value, else the configured one."""
    value = event.attrs.get(PROVIDER_KEY)
    return value if isinstance(value, str) and value else options.provider_name


def span_duration_ms(event: Event) -> Optional[float]:
    """The duration a span is built from, or None when the event carries none."""
    if isinstance(event, GenerationCompleted):
        return event.duration_ms
    if isinstance(event, ModelLoaded) and event.load_ms is not None:
        return event.load_ms
    for key in _DURATION_ATTRS:
        value = event.attrs.get(key)
        if type(value) in (int, float) and value >= 0:  # type: ignore[operator]
            return float(value)  # type: ignore[arg-type]
    return None


def resource_attributes(service: str, host: str, pid: int, environment: Optional[str]) -> dict[str, Any]:
    attributes: dict[str, Any] = {"service.name": service, "host.name": host, "process.pid": pid}
    if environment:
        attributes["deployment.environment.name"] = environment
        attributes["deployment.environment"] = environment
    return attributes


# -- field plans: per event class, which fields become which attributes ------

_SCALAR, _MAP, _ARRAY = 0, 1, 2
_FieldPlan = tuple[str, bytes, int, str]  # field name, encoded key, kind, key (maps: prefix)
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__)


def _plan(cls: type) -> tuple[tuple[_FieldPlan, ...], tuple[_FieldPlan, ...]]:
    """(plan without content fields, plan with them) for a typed event class."""
    event_type = cls.type  # type: ignore[attr-defined]
    base: list[_FieldPlan] = []
    content: list[_FieldPlan] = []
    for field in cls.__struct_fields__:  # type: ignore[attr-defined]
        if field in _ENVELOPE_FIELDS:
            continue
        key = attribute_key_for(event_type, field)
        kind = _MAP if (event_type, field) in _MAP_FIELDS else _ARRAY if (event_type, field) in _ARRAY_FIELDS else _SCALAR
        entry = (field, wire.attribute_key(key), kind, key)
        content.append(entry)
        if (event_type, field) not in _CONTENT_FIELDS:
            base.append(entry)
    return tuple(base), tuple(content)


_PLANS: dict[type, tuple[tuple[_FieldPlan, ...], tuple[_FieldPlan, ...]]] = {
    cls: _plan(cls) for cls in TYPED_EVENTS.values()
}
_ENVELOPE_PLAN = tuple((field, wire.attribute_key(key)) for field, key in ENVELOPE_KEYS.items())
_ERROR_TYPE_ENCODED = wire.attribute_key(_ERROR_TYPE_KEY)
_EVENT_NAME_KEY = wire.attribute_key("event.name")
_OPERATION_ENCODED = wire.attribute_key(OPERATION_KEY)
_PROVIDER_ENCODED = wire.attribute_key(PROVIDER_KEY)


def _reserved(cls: Optional[type]) -> frozenset[str]:
    """Keys an event of ``cls`` sets itself; ``attrs`` with these keys get an ``attrs.`` prefix."""
    keys = set(ENVELOPE_KEYS.values()) | {"event.name", _ERROR_TYPE_KEY}
    if cls is not None:
        keys |= {entry[3] for entry in _PLANS[cls][1]}
    return frozenset(keys)


_RESERVED: dict[Optional[type], frozenset[str]] = {cls: _reserved(cls) for cls in TYPED_EVENTS.values()}
_RESERVED[None] = _reserved(None)
# On generation spans these two attrs name the operation and provider instead.
_SPAN_CONSUMED = frozenset({OPERATION_KEY, PROVIDER_KEY})


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
_T_STATUS_MESSAGE = wire.tag(trace_pb2.Status.DESCRIPTOR, "message")
_T_STATUS_CODE = wire.tag(trace_pb2.Status.DESCRIPTOR, "code")

_T_RESOURCE_ATTRIBUTE = wire.tag(resource_pb2.Resource.DESCRIPTOR, "attributes")
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


_LOGS = _Envelope(
    resource_group=wire.tag(logs_service_pb2.ExportLogsServiceRequest.DESCRIPTOR, "resource_logs"),
    resource=wire.tag(logs_pb2.ResourceLogs.DESCRIPTOR, "resource"),
    scope_group=wire.tag(logs_pb2.ResourceLogs.DESCRIPTOR, "scope_logs"),
    scope=wire.tag(logs_pb2.ScopeLogs.DESCRIPTOR, "scope"),
    item=wire.tag(logs_pb2.ScopeLogs.DESCRIPTOR, "log_records"),
)
_TRACES = _Envelope(
    resource_group=wire.tag(trace_service_pb2.ExportTraceServiceRequest.DESCRIPTOR, "resource_spans"),
    resource=wire.tag(trace_pb2.ResourceSpans.DESCRIPTOR, "resource"),
    scope_group=wire.tag(trace_pb2.ResourceSpans.DESCRIPTOR, "scope_spans"),
    scope=wire.tag(trace_pb2.ScopeSpans.DESCRIPTOR, "scope"),
    item=wire.tag(trace_pb2.ScopeSpans.DESCRIPTOR, "spans"),
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

    def __init__(self, options: TranslateOptions | None = None) -> None:
        self.options = options or TranslateOptions()
        scope = wire.length_delimited(_T_SCOPE_NAME, self.options.scope_name.encode())
        scope += wire.length_delimited(_T_SCOPE_VERSION, self.options.scope_version.encode())
        self._scope = scope
        self._resources: dict[_ResourceKey, bytes] = {}
        self._types: dict[str, _TypeFields] = {}
        self._plan_index = 1 if self.options.capture_content else 0

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
        for event in events:
            duration_ms = span_duration_ms(event) if spans else None
            if not logs and duration_ms is None:
                continue
            key = (event.service, event.host, event.pid)
            items = self._attribute_items(event)
            if logs:
                record = self._log_record(event, observed_ns, items)
                log_groups.setdefault(key, []).append(wire.length_delimited(log_tag, record))
            if duration_ms is not None:
                span = self._span(event, duration_ms, items)
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
        """One serialized ``Span``, or None when the event carries no duration."""
        duration_ms = span_duration_ms(event)
        return None if duration_ms is None else self._span(event, duration_ms, self._attribute_items(event))

    def _log_record(self, event: Event, observed_ns: int, items: list[bytes]) -> bytes:
        fields = self._types.get(event.type) or self._type_fields(event.type)
        if type(event) is ErrorEvent:
            body = wire.length_delimited(_T_BODY, wire.length_delimited(_T_STRING, event.message.encode()))
        else:
            body = fields.body
        return b"".join(
            (
                wire.fixed64(_T_TIME, event.ts),
                wire.fixed64(_T_OBSERVED, observed_ns),
                _SEVERITY_FIELDS[event.severity],
                body,
                fields.name_attribute,
                wire.repeated(_T_LOG_ATTRIBUTE, items),
                _T_LOG_TRACE_ID + b"\x10" + bytes.fromhex(event.trace_id),
                _T_LOG_SPAN_ID + b"\x08" + bytes.fromhex(event.span_id),
                fields.event_name,
            )
        )

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

    def _span(self, event: Event, duration_ms: float, items: list[bytes]) -> bytes:
        model = getattr(event, "model", None)
        parts = [
            _T_SPAN_TRACE_ID + b"\x10" + bytes.fromhex(event.trace_id),
            _T_SPAN_SPAN_ID + b"\x08" + bytes.fromhex(event.span_id),
        ]
        if event.parent_span_id:
            parts.append(_T_SPAN_PARENT + b"\x08" + bytes.fromhex(event.parent_span_id))
        if type(event) is GenerationCompleted:
            operation = operation_name(event, self.options)
            name = f"{operation} {model}"
            generation = [
                wire.sized_attribute(_OPERATION_ENCODED, operation),
                wire.sized_attribute(_PROVIDER_ENCODED, provider_name(event, self.options)),
            ]
            if not _SPAN_CONSUMED.isdisjoint(event.attrs):
                items = self._attribute_items(event, consumed=_SPAN_CONSUMED)
            items = generation + items
        else:
            name = f"{event.type} {model}" if model else event.type
        parts.append(wire.length_delimited(_T_SPAN_NAME, name.encode()))
        parts.append(_T_SPAN_KIND + wire.varint(_SPAN_KIND_INTERNAL))
        parts.append(wire.fixed64(_T_SPAN_START, max(0, event.ts - round(duration_ms * 1_000_000))))
        parts.append(wire.fixed64(_T_SPAN_END, event.ts))
        parts.append(wire.repeated(_T_SPAN_ATTRIBUTE, items))
        if SEVERITY_RANK[event.severity] >= _ERROR_RANK:
            message = event.message if type(event) is ErrorEvent else event.type
            status = _T_STATUS_CODE + wire.varint(_STATUS_ERROR)
            status += wire.length_delimited(_T_STATUS_MESSAGE, message.encode())
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

    def _resource(self, key: _ResourceKey) -> bytes:
        resource = self._resources.get(key)
        if resource is None:
            if len(self._resources) >= _CACHE_LIMIT:
                self._resources.clear()
            attributes = resource_attributes(*key, self.options.deployment_environment)
            resource = b"".join(
                wire.length_delimited(_T_RESOURCE_ATTRIBUTE, wire.attribute(name, value))
                for name, value in attributes.items()
            )
            self._resources[key] = resource
        return resource

    def _requests(self, shape: _Envelope, groups: dict[_ResourceKey, list[bytes]]) -> list[bytes]:
        """Assemble items into requests of at most ``max_request_bytes`` each.

        A resource group that does not fit is continued in the next request;
        an item larger than the limit travels alone.
        """
        limit = self.options.max_request_bytes
        scope = wire.length_delimited(shape.scope, self._scope)
        requests: list[bytes] = []
        current: list[bytes] = []  # resource groups of the request being built
        size = 0
        for key, items in groups.items():
            head = wire.length_delimited(shape.resource, self._resource(key))
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


def _group(shape: _Envelope, head: bytes, scope: bytes, items: list[bytes]) -> bytes:
    scope_group = wire.length_delimited(shape.scope_group, scope + b"".join(items))
    return wire.length_delimited(shape.resource_group, head + scope_group)
