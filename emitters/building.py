"""Event building: from a helper call's capture to a validated, encoded event.

A helper call only captures ``(event class, helper arguments, keyword fields,
ts, scope)``; the emitter's worker builds the event from it here, applies the
privacy policy, validates it against the contract and encodes it. Strict mode
builds on the caller's thread instead, so a bad call raises where it was made.
"""

from __future__ import annotations

import random
import reprlib
import time
from typing import Any, Optional

import msgspec

from emitters.events import (
    MAX_MESSAGE_LEN,
    MAX_STACK_LEN,
    SEVERITY_RANK,
    TYPED_EVENTS,
    ClientReport,
    CustomEvent,
    Envelope,
    ErrorEvent,
    GenerationCompleted,
    GenerationStarted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    RuntimeStatus,
    SpanEnded,
    TokenGenerated,
    decode,
)
from emitters.fingerprint import error_type_name, fingerprint, fingerprint_exception, format_stack, message_template
from emitters.policy import out_of_range
from emitters.privacy import Privacy
from emitters.shipper import TO_ERRORS, TO_EVENTS, TO_LIVE, TO_REPORT
from emitters.tokens import TokenTemplates
from emitters.validation import ValidationError, check_id, explain, invalid, overflowing_field

__all__ = ["ARGUMENTS", "MISSING", "EventBuilder", "TooLarge", "error_fields"]


class _Missing:
    """The default of a helper's positional argument the caller did not give."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()

_ERROR_RANK = SEVERITY_RANK["error"]
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__)
_FIELDS = {cls: frozenset(cls.__struct_fields__) for cls in (*TYPED_EVENTS.values(), CustomEvent)}
# The named arguments of each typed helper, in order: helpers capture a tuple of
# them (cheaper than a dict on the caller's thread) and the worker names them.
ARGUMENTS: dict[type, tuple[str, ...]] = {
    ModelLoaded: ("model", "model_path"),
    ModelUnloaded: ("model",),
    ModelInvalidated: ("model", "reason"),
    GenerationStarted: ("model", "request_id"),
    TokenGenerated: ("model", "request_id", "token", "index"),
    GenerationCompleted: ("model", "request_id", "prompt_tokens", "generation_tokens", "duration_ms"),
    RuntimeStatus: ("status", "models_loaded"),
    ErrorEvent: (),
    SpanEnded: (),
    ClientReport: (),
    CustomEvent: ("type",),
}
_SCALARS = (str, int, float, bool)
_TEMPLATE_FIELDS = frozenset({"logprob"})

# Envelope fields the emitter generates or checks once, at construction or scope
# entry, instead of per event: their regex constraints cost ~5 us an event.
_TRUSTED_FIELDS = frozenset({"id", "trace_id", "span_id", "parent_span_id", "service", "host"})
_CALLER_CHECKED = frozenset({"trace_id", "span_id", "parent_span_id"})
_OPTIONAL_IDS = frozenset({"trace_id", "span_id", "parent_span_id"})


def _trusting(cls: type) -> type:
    """``cls`` with the trusted fields' constraints dropped; every other field
    keeps its contract type, so caller-supplied values are still validated."""
    fields: list[tuple[Any, ...]] = []
    for info in msgspec.structs.fields(cls):
        field_type = info.type
        if info.name in _TRUSTED_FIELDS:
            field_type = Optional[str] if info.name in _OPTIONAL_IDS else str
        if info.required:
            fields.append((info.name, field_type))
        elif info.default_factory is not msgspec.NODEFAULT:
            fields.append((info.name, field_type, msgspec.field(default_factory=info.default_factory)))
        else:
            fields.append((info.name, field_type, info.default))
    config = cls.__struct_config__  # type: ignore[attr-defined]
    return msgspec.defstruct(
        cls.__name__, fields, kw_only=True, omit_defaults=True, tag=config.tag, tag_field=config.tag_field
    )


_WIRE_STRUCTS = {cls: _trusting(cls) for cls in _FIELDS}
_time_ns = time.time_ns
_random_bits = random.getrandbits


class TooLarge(ValidationError):
    """An event whose encoded size is over ``max_event_bytes``."""


class EventBuilder:
    """Builds, scrubs, validates and encodes captured events; picks their route."""

    def __init__(
        self,
        *,
        service: str,
        host: str,
        privacy: Privacy,
        token_route: str,
        token_sample_rate: int,
        max_event_bytes: int,
        strict: bool,
    ) -> None:
        self.service = service
        self.host = host
        self._tokens = TokenTemplates()
        self.pid = 0
        self._privacy = privacy
        self._token_mode = token_route
        self._sample_rate = token_sample_rate
        self._token_counter = 0
        self._max_bytes = max_event_bytes
        self._strict = strict
        self._encoder = msgspec.msgpack.Encoder()

    @property
    def pid(self) -> int:
        return self._pid

    @pid.setter
    def pid(self, pid: int) -> None:
        self._pid = pid
        self._tokens.clear()  # their pid is the parent's

    def encode(self, value: Any) -> bytes:
        return self._encoder.encode(value)

    def build(self, capture: tuple[Any, ...]) -> tuple[str, bytes]:
        """(route, payload) for a capture; raises ValidationError (TooLarge for size)."""
        cls, arguments, fields, ts, scope = capture
        if cls is None:
            return arguments, fields  # strict mode built it at the call site
        template = False
        if cls is TokenGenerated and not self._strict:
            event = self._tokens.event(arguments, fields, ts, scope)
            if event is not None:
                payload = self._encoder.encode(event)
                if len(payload) <= self._max_bytes:
                    return self._token_route(), payload
            # A plain call (a logprob at most) makes its generation's template.
            template = len(arguments) == 4 and fields.keys() <= _TEMPLATE_FIELDS
        allowed = _FIELDS[cls]
        # The captured kwargs dict is ours alone: when every key is a typed field
        # (the usual case) it becomes the event's fields without a copy.
        typed = fields if fields.keys() <= allowed else _split_attrs(allowed, fields)
        names = ARGUMENTS[cls]
        if len(arguments) > len(names):
            raise ValidationError(f"Expected at most {len(names)} positional arguments, got {len(arguments)}; pass fields by keyword")
        for name, value in zip(names, arguments):
            if value is not MISSING:
                if name in typed:
                    raise invalid(name, "Expected one value, got it both by position and by keyword")
                typed[name] = value
        if not _CALLER_CHECKED.isdisjoint(typed):
            for name in _CALLER_CHECKED & typed.keys():
                if typed[name] is not None:
                    check_id(name, typed[name])
        if scope is not None:
            for name, value in scope.items():
                typed.setdefault(name, value)
        self._privacy.scrub(typed)
        typed.setdefault("ts", ts)
        typed.update(id="%032x" % _random_bits(128), service=self.service, host=self.host, pid=self._pid)
        try:
            # convert validates every caller-supplied field against the contract and
            # builds the struct in one pass; a ValidationError names the field and rule.
            event = msgspec.convert(typed, _WIRE_STRUCTS[cls])
            reason = out_of_range(event, _time_ns())  # the data policy, as the collector applies it
            if reason is not None:
                raise ValidationError(reason)
            payload = self._encoder.encode(event)
            if self._strict:
                decode(payload)  # the full contract, trusted fields included
        except OverflowError:
            raise overflowing_field(typed) from None
        except msgspec.ValidationError as exc:
            raise explain(exc) from None
        if len(payload) > self._max_bytes:
            raise TooLarge(f"Expected an event of at most max_event_bytes={self._max_bytes} bytes, got {len(payload)}")
        if cls is TokenGenerated:
            if template:
                self._tokens.remember(event, scope)
            return self._token_route(), payload
        if cls is ClientReport:
            return TO_REPORT, payload
        if cls is ErrorEvent or SEVERITY_RANK[event.severity] >= _ERROR_RANK:
            return TO_ERRORS, payload
        return TO_EVENTS, payload

    def _token_route(self) -> str:
        mode = self._token_mode
        if mode == "live":
            return TO_LIVE
        if mode == "stream":
            return TO_EVENTS
        self._token_counter += 1
        return TO_EVENTS if self._token_counter % self._sample_rate == 0 else TO_LIVE


def _split_attrs(allowed: frozenset[str], fields: dict[str, Any]) -> dict[str, Any]:
    """Typed fields and correlation ids stay at the top level, the rest go to ``attrs``."""
    typed: dict[str, Any] = {}
    given = fields.pop("attrs", None)
    if given is not None and not isinstance(given, dict):
        typed["attrs"] = given  # not a mapping: convert names it as invalid
        return typed
    attrs: dict[str, Any] = dict(given or ())
    for name, value in fields.items():
        if name in allowed:
            typed[name] = value
        elif value is not None:
            attrs[name] = value
    if attrs:
        typed["attrs"] = attrs
    return typed


def _text(value: Any, limit: int) -> str:
    """``str(value)`` cut to ``limit``; a value whose __str__ fails becomes its type name."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # noqa: BLE001 - the caller's object, not our failure
        text = f"<unprintable {type(value).__name__}>"
    return text[:limit]


def error_fields(exc_or_message: Any, severity: Any, context: dict[str, Any]) -> dict[str, Any]:
    """The fields of an error event for an exception or a message, on the caller's thread
    (the traceback is only there). Extra keywords become ``context``."""
    fields: dict[str, Any] = {"severity": severity}
    for name in ("code", "model", "fingerprint", "attrs", *_ENVELOPE_FIELDS):
        if name in context:
            fields[name] = context.pop(name)
    error_type = context.pop("error_type", None)
    if isinstance(exc_or_message, BaseException):
        error_type = _text(error_type or error_type_name(exc_or_message), 256)
        message = _text(exc_or_message, MAX_MESSAGE_LEN) or error_type
        fields.setdefault("fingerprint", fingerprint_exception(exc_or_message))
        stack = format_stack(exc_or_message, MAX_STACK_LEN)
        if stack:
            fields["stack"] = stack
    else:
        error_type = _text(error_type or "Error", 256)
        message = _text(exc_or_message, MAX_MESSAGE_LEN)
        fields.setdefault("fingerprint", fingerprint(error_type, message_template(message)))
    fields["error_type"] = error_type
    fields["message"] = message
    if context:
        # Context is diagnostic: keep it even when a value is not a scalar.
        fields["context"] = {
            _text(key, 128): value if isinstance(value, _SCALARS) else _text(_repr(value), 1024)
            for key, value in list(context.items())[:64]
            if value is not None
        }
    return fields


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 1024


def _repr(value: Any) -> str:
    try:
        return _REPR.repr(value)
    except Exception:  # noqa: BLE001 - an object without a working repr
        return f"<{type(value).__name__}>"
