"""The wire contract: every event is a msgspec Struct encoded as msgpack.

Constraints live in the type annotations, so msgspec enforces them on decode
and its error messages name the field path and the rule, e.g.
``Expected `int` >= 0 - at `$.generation_tokens```.

Typed engine events are a tagged union on ``type``. Any other ``type`` is a
:class:`CustomEvent`: a collector that meets a type it does not know decodes
it generically, so a newer emitter never breaks an older collector. Unknown
*fields* are ignored on decode for the same reason.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Dict, Literal, Optional, Union

import msgspec
from msgspec import Meta

__all__ = [
    "SCHEMA_VERSION",
    "SEVERITIES",
    "SEVERITY_RANK",
    "Envelope",
    "TypedEvent",
    "ModelLoaded",
    "ModelUnloaded",
    "ModelInvalidated",
    "GenerationStarted",
    "TokenGenerated",
    "GenerationCompleted",
    "ErrorEvent",
    "RuntimeStatus",
    "SpanEnded",
    "ClientReport",
    "DROP_REASONS",
    "CustomEvent",
    "Event",
    "TYPED_EVENTS",
    "DecodeError",
    "ValidationError",
    "decode",
    "decode_json",
    "encode",
    "validate",
    "is_error",
]

SCHEMA_VERSION = 1

DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError

Severity = Literal["debug", "info", "warn", "error", "critical"]
SEVERITIES: tuple[str, ...] = ("debug", "info", "warn", "error", "critical")
SEVERITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(SEVERITIES)}

# Bounds on every input: a single event can never blow up a consumer.
MAX_ID_LEN = 256
MAX_ATTRS = 64
MAX_ATTR_KEY_LEN = 128
MAX_ATTR_STR_LEN = 4096
MAX_MESSAGE_LEN = 8192
MAX_STACK_LEN = 32768
MAX_PROMPT_LEN = 32768

Hex32 = Annotated[str, Meta(pattern="^[0-9a-f]{32}$")]
Hex16 = Annotated[str, Meta(pattern="^[0-9a-f]{16}$")]
CorrelationId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN)]
ServiceName = Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{1,100}$")]
HostName = Annotated[str, Meta(min_length=1, max_length=255)]
# dotted lowercase entity.action, e.g. job.created, connector.processing_failed
EventTypeName = Annotated[
    str, Meta(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$", max_length=128)
]
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Path = Annotated[str, Meta(min_length=1, max_length=4096)]
ShortText = Annotated[str, Meta(max_length=1024)]
NonNegInt = Annotated[int, Meta(ge=0)]
PosInt = Annotated[int, Meta(gt=0)]
NonNegFloat = Annotated[float, Meta(ge=0)]
AttrKey = Annotated[str, Meta(min_length=1, max_length=MAX_ATTR_KEY_LEN)]
AttrValue = Union[Annotated[str, Meta(max_length=MAX_ATTR_STR_LEN)], bool, int, float]
Attrs = Annotated[Dict[AttrKey, AttrValue], Meta(max_length=MAX_ATTRS)]
Quantization = Union[Literal["none", "int8", "int4"], Annotated[int, Meta(ge=1, le=32)]]


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Fields every event carries."""

    v: Annotated[int, Meta(ge=1)] = SCHEMA_VERSION
    id: Hex32
    ts: NonNegInt
    service: ServiceName
    host: HostName
    pid: NonNegInt
    severity: Severity = "info"
    # None outside every scope: an event carries a trace only when it belongs to one.
    trace_id: Optional[Hex32] = None
    span_id: Optional[Hex16] = None
    parent_span_id: Optional[Hex16] = None
    request_id: Optional[CorrelationId] = None
    job_id: Optional[CorrelationId] = None
    worker_id: Optional[CorrelationId] = None
    machine_id: Optional[CorrelationId] = None
    user_id: Optional[CorrelationId] = None
    attrs: Attrs = {}

    # The event name; a class attribute on typed events, a field on custom ones.
    type: ClassVar[str]


class TypedEvent(Envelope, tag_field="type", kw_only=True):
    """Base of the engine events the contract knows by name."""


class ModelLoaded(TypedEvent, tag="model.loaded", kw_only=True):
    model: Name
    model_path: Path
    quantization: Optional[Quantization] = None
    parameters: Optional[PosInt] = None
    load_ms: Optional[NonNegFloat] = None
    metadata: Optional[Attrs] = None


class ModelUnloaded(TypedEvent, tag="model.unloaded", kw_only=True):
    model: Name
    reason: Optional[ShortText] = None


class ModelInvalidated(TypedEvent, tag="model.invalidated", kw_only=True):
    model: Name
    reason: Annotated[str, Meta(min_length=1, max_length=1024)]


class GenerationStarted(TypedEvent, tag="generation.started", kw_only=True):
    model: Name
    request_id: CorrelationId
    prompt_tokens: Optional[NonNegInt] = None
    max_tokens: Optional[PosInt] = None
    temperature: Optional[NonNegFloat] = None
    top_p: Optional[Annotated[float, Meta(ge=0, le=1)]] = None
    top_k: Optional[NonNegInt] = None
    min_p: Optional[Annotated[float, Meta(ge=0, le=1)]] = None
    repetition_penalty: Optional[NonNegFloat] = None
    seed: Optional[int] = None
    # Prompt text travels only when the emitter is configured to capture it;
    # otherwise its length and a salted hash stand in for it.
    prompt: Optional[Annotated[str, Meta(max_length=MAX_PROMPT_LEN)]] = None
    prompt_chars: Optional[NonNegInt] = None
    prompt_hash: Optional[Annotated[str, Meta(pattern="^[0-9a-f]{16,64}$")]] = None
    # mlx-lm server (#11): prompt tokens found in the server's prompt cache.
    cached_prompt_tokens: Optional[NonNegInt] = None


class TokenGenerated(TypedEvent, tag="token.generated", kw_only=True):
    model: Name
    request_id: CorrelationId
    token: ShortText
    index: NonNegInt
    logprob: Optional[float] = None


class GenerationCompleted(TypedEvent, tag="generation.completed", kw_only=True):
    model: Name
    request_id: CorrelationId
    prompt_tokens: NonNegInt
    generation_tokens: NonNegInt
    duration_ms: NonNegFloat
    ttft_ms: Optional[NonNegFloat] = None
    tokens_per_second: Optional[NonNegFloat] = None
    prompt_tps: Optional[NonNegFloat] = None
    peak_memory_gb: Optional[NonNegFloat] = None
    finish_reason: Optional[Annotated[str, Meta(min_length=1, max_length=64)]] = None
    itl_p50_ms: Optional[NonNegFloat] = None
    itl_p99_ms: Optional[NonNegFloat] = None
    # mlx-lm serving (#11), all optional: prefill apart from decode, queue wait,
    # prompt-cache reuse, continuous batching and speculative decoding.
    cached_prompt_tokens: Optional[NonNegInt] = None
    queue_wait_ms: Optional[NonNegFloat] = None
    prefill_ms: Optional[NonNegFloat] = None
    prefill_tokens: Optional[NonNegInt] = None
    decode_ms: Optional[NonNegFloat] = None
    decode_batch_max: Optional[NonNegInt] = None
    draft_tokens: Optional[NonNegInt] = None
    draft_acceptance: Optional[Annotated[float, Meta(ge=0, le=1)]] = None


class ErrorEvent(TypedEvent, tag="error", kw_only=True):
    severity: Severity = "error"
    message: Annotated[str, Meta(min_length=1, max_length=MAX_MESSAGE_LEN)]
    error_type: Name
    code: Optional[Union[Annotated[str, Meta(max_length=128)], int]] = None
    stack: Optional[Annotated[str, Meta(max_length=MAX_STACK_LEN)]] = None
    model: Optional[Name] = None
    fingerprint: Optional[Annotated[str, Meta(pattern="^[0-9a-f]{8,64}$")]] = None
    context: Optional[Attrs] = None


class RuntimeStatus(TypedEvent, tag="runtime.status", kw_only=True):
    status: Literal["starting", "ready", "busy", "error", "shutdown"]
    models_loaded: NonNegInt
    active_tasks: Optional[NonNegInt] = None
    memory_gb: Optional[NonNegFloat] = None
    peak_memory_gb: Optional[NonNegFloat] = None
    # mlx-lm (#11): MLX unified memory, continuous-batching occupancy, prompt cache.
    memory_cache_gb: Optional[NonNegFloat] = None
    memory_limit_gb: Optional[NonNegFloat] = None
    memory_headroom_gb: Optional[NonNegFloat] = None
    requests_waiting: Optional[NonNegInt] = None
    requests_running: Optional[NonNegInt] = None
    requests_prefilling: Optional[NonNegInt] = None
    decode_batch_size: Optional[NonNegInt] = None
    decode_batch_max: Optional[NonNegInt] = None
    decode_concurrency: Optional[NonNegInt] = None
    prefill_concurrency: Optional[NonNegInt] = None
    prompt_cache_gb: Optional[NonNegFloat] = None
    prompt_cache_sequences: Optional[NonNegInt] = None


class SpanEnded(TypedEvent, tag="span.ended", kw_only=True):
    """A closed scope: its envelope ids are the span's own (trace, span, parent)."""

    name: Name
    start_ts: NonNegInt
    duration_ms: NonNegFloat
    status: Literal["ok", "error"] = "ok"
    status_message: Optional[ShortText] = None
    error_type: Optional[Name] = None
    parent_remote: bool = False


# Why an emitter did not deliver an event; client reports count drops by these.
DROP_REASONS: tuple[str, ...] = (
    "buffer_full",
    "invalid",
    "too_large",
    "redis_unavailable",
    "redis_refused",  # Redis answered with an error (OOM, READONLY, NOPERM)
    "closed",
    "fork_exit",  # a child process ended with events still unsent
)


class ClientReport(TypedEvent, tag="client.report", kw_only=True):
    """An emitter's own losses since its previous report, so they leave the process."""

    # Keyed by plain names, not a Literal: a newer emitter's new reason must still decode.
    dropped: Annotated[Dict[Name, NonNegInt], Meta(max_length=32)] = {}
    dropped_total: NonNegInt = 0
    sent: NonNegInt = 0
    buffer_high_water: NonNegInt = 0
    reconnects: NonNegInt = 0
    interval_s: NonNegFloat = 0.0


class CustomEvent(Envelope, kw_only=True):
    """An event of any other type: envelope plus free-form ``attrs``."""

    type: EventTypeName  # type: ignore[misc]  # a real field here, not a ClassVar


TYPED_EVENTS: dict[str, type[TypedEvent]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        ModelLoaded,
        ModelUnloaded,
        ModelInvalidated,
        GenerationStarted,
        TokenGenerated,
        GenerationCompleted,
        ErrorEvent,
        RuntimeStatus,
        SpanEnded,
        ClientReport,
    )
}
for _name, _cls in TYPED_EVENTS.items():
    _cls.type = _name  # type: ignore[misc]

TypedUnion = Union[tuple(TYPED_EVENTS.values())]  # type: ignore[valid-type]
Event = Union[TypedUnion, CustomEvent]  # type: ignore[valid-type]

_typed_msgpack = msgspec.msgpack.Decoder(TypedUnion)
_custom_msgpack = msgspec.msgpack.Decoder(CustomEvent)
_typed_json = msgspec.json.Decoder(TypedUnion)
_custom_json = msgspec.json.Decoder(CustomEvent)
_encoder = msgspec.msgpack.Encoder()


def _unknown_tag(exc: msgspec.ValidationError) -> bool:
    message = str(exc)
    return message.startswith("Invalid value") and message.endswith("- at `$.type`")


def decode(payload: bytes) -> Event:
    """Decode and validate one msgpack event.

    Raises :class:`DecodeError` for bytes that are not msgpack and
    :class:`ValidationError` (a subclass) for a contract violation; the message
    names the field path and the rule.
    """
    try:
        return _typed_msgpack.decode(payload)
    except msgspec.ValidationError as exc:
        if not _unknown_tag(exc):
            raise
    return _custom_msgpack.decode(payload)


def decode_json(payload: bytes | str) -> Event:
    """Same as :func:`decode` for the JSON form (JSONL archives, dead letters)."""
    try:
        return _typed_json.decode(payload)
    except msgspec.ValidationError as exc:
        if not _unknown_tag(exc):
            raise
    return _custom_json.decode(payload)


def encode(event: Event) -> bytes:
    """Encode without validating; the emitter validates in its worker."""
    return _encoder.encode(event)


def validate(event: Event) -> Event:
    """Round-trip through the validating decoder; raises ValidationError."""
    return decode(_encoder.encode(event))


def is_error(event: Event) -> bool:
    """Errors go to the error stream: type ``error`` or severity >= error."""
    return event.type == "error" or SEVERITY_RANK[event.severity] >= SEVERITY_RANK["error"]
