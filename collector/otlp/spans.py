"""Which events become spans, with which ids, times and status. Pure but for :class:`StartTimes`.

Contract decision 2 (trace integrity):

- a ``span.ended`` event is the span of an emitter scope: its envelope ids are
  the span's own (trace, span, parent), ``parent_remote`` marks a parent that
  came from outside (a W3C ``traceparent``);
- a span derived from a single event (``generation.completed``, a failed
  generation, any event carrying a duration) takes the first 16 hex digits of
  the event's ``id`` as its span id, so it never collides with its scope or a
  sibling; its parent is the event's ``span_id`` (the enclosing scope) and its
  trace the event's ``trace_id``; an event outside every scope gets its own
  ``id`` as trace id and no parent.

A failed generation is an ``error`` event raised while serving one (it names
a ``request_id``, or its context says ``operation=generate``) or a
``generation.completed`` with error severity or ``finish_reason`` ``error``.
Its duration is the event's own ``duration_ms`` when it carries one, else the
time since the ``generation.started`` of the same request seen by this
collector, else zero.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Optional

from emitters.events import (
    SEVERITY_RANK,
    ErrorEvent,
    Event,
    GenerationCompleted,
    GenerationStarted,
    ModelLoaded,
    SpanEnded,
)

__all__ = [
    "Failure",
    "SpanShape",
    "StartTimes",
    "failure_of",
    "is_failed_generation",
    "generation_duration_ms",
    "span_shape",
    "makes_span",
    "makes_log",
    "OTHER_ERROR",
]

# The semantic conventions' error.type when nothing more specific is known.
OTHER_ERROR = "_OTHER"
_ERROR_RANK = SEVERITY_RANK["error"]
_DURATION_ATTRS = ("duration_ms", "load_ms")
_MESSAGE_ATTRS = ("exception.message", "error.message", "message")
_START_MEMORY = 10_000


class Failure(NamedTuple):
    error_type: str
    message: str
    stacktrace: Optional[str] = None


class SpanShape(NamedTuple):
    trace_id: bytes
    span_id: bytes
    parent_span_id: Optional[bytes]
    parent_remote: bool
    start_ns: int
    end_ns: int
    failure: Optional[Failure]
    generation: bool  # named and attributed as a GenAI operation


class StartTimes:
    """``generation.started`` timestamps by request id, the most recent few thousand."""

    def __init__(self, limit: int = _START_MEMORY) -> None:
        self._limit = limit
        self._starts: OrderedDict[str, int] = OrderedDict()

    def note(self, event: Event) -> None:
        if type(event) is GenerationStarted:
            self._starts[event.request_id] = event.ts
            if len(self._starts) > self._limit:
                self._starts.popitem(last=False)

    def get(self, request_id: Optional[str]) -> Optional[int]:
        return None if request_id is None else self._starts.get(request_id)


def _attr_duration(attrs: dict) -> Optional[float]:
    if not attrs:  # most events: asked for every event, so answer the common case first
        return None
    for key in _DURATION_ATTRS:
        value = attrs.get(key)
        if type(value) in (int, float) and value >= 0:
            return float(value)
    return None


def _attr_text(attrs: dict, keys: tuple[str, ...]) -> Optional[str]:
    for key in keys:
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def failure_of(event: Event) -> Optional[Failure]:
    """What went wrong, for an event that reports a failure; None otherwise."""
    kind = type(event)
    if kind is ErrorEvent:
        return Failure(event.error_type, event.message, event.stack)
    if kind is SpanEnded:
        if event.status != "error":
            return None
        return Failure(event.error_type or OTHER_ERROR, event.status_message or event.error_type or event.name)
    failed_finish = kind is GenerationCompleted and event.finish_reason == "error"
    if SEVERITY_RANK[event.severity] < _ERROR_RANK and not failed_finish:
        return None
    error_type = _attr_text(event.attrs, ("error.type",)) or OTHER_ERROR
    message = _attr_text(event.attrs, _MESSAGE_ATTRS)
    if message is None:
        message = f"{event.type} failed" + (f" (finish_reason={event.finish_reason})" if failed_finish else "")
    return Failure(error_type, message)


def is_failed_generation(event: Event) -> bool:
    kind = type(event)
    if kind is ErrorEvent:
        context = event.context or {}
        return event.request_id is not None or context.get("operation") == "generate"
    return kind is GenerationCompleted and failure_of(event) is not None


def generation_duration_ms(event: Event, starts: StartTimes) -> float:
    """The duration of a generation, completed or failed (see the module docstring)."""
    if type(event) is GenerationCompleted:
        return event.duration_ms
    own = _attr_duration(event.attrs)
    if own is None and type(event) is ErrorEvent and event.context:
        own = _attr_duration(event.context)
    if own is not None:
        return own
    started = starts.get(event.request_id)
    return max(0.0, (event.ts - started) / 1e6) if started is not None else 0.0


def _duration_ms(event: Event) -> Optional[float]:
    if type(event) is ModelLoaded and event.load_ms is not None:
        return event.load_ms
    return _attr_duration(event.attrs)


def makes_span(event: Event) -> bool:
    """Whether :func:`span_shape` gives this event a span (no state needed to know)."""
    kind = type(event)
    return kind is SpanEnded or kind is GenerationCompleted or is_failed_generation(event) or _duration_ms(event) is not None


def makes_log(event: Event) -> bool:
    """Every event is a log record except a scope's end, which is its span."""
    return type(event) is not SpanEnded


def span_shape(event: Event, starts: StartTimes) -> Optional[SpanShape]:
    kind = type(event)
    if kind is SpanEnded:
        trace_id, span_id, parent = _own_ids(event)
        return SpanShape(
            trace_id,
            span_id,
            parent,
            event.parent_remote and parent is not None,
            event.start_ts,
            event.start_ts + round(event.duration_ms * 1_000_000),
            failure_of(event),
            False,
        )
    generation = kind is GenerationCompleted or is_failed_generation(event)
    duration_ms = generation_duration_ms(event, starts) if generation else _duration_ms(event)
    if duration_ms is None:
        return None
    trace_id, span_id, parent = _derived_ids(event)
    start = max(0, event.ts - round(duration_ms * 1_000_000))
    return SpanShape(trace_id, span_id, parent, False, start, event.ts, failure_of(event), generation)


def _own_ids(event: Event) -> tuple[bytes, bytes, Optional[bytes]]:
    if event.trace_id is None or event.span_id is None:
        return _derived_ids(event)
    parent = bytes.fromhex(event.parent_span_id) if event.parent_span_id else None
    return bytes.fromhex(event.trace_id), bytes.fromhex(event.span_id), parent


def _derived_ids(event: Event) -> tuple[bytes, bytes, Optional[bytes]]:
    span_id = bytes.fromhex(event.id[:16])
    if event.trace_id is None:
        return bytes.fromhex(event.id), span_id, None
    parent = bytes.fromhex(event.span_id) if event.span_id else None
    return bytes.fromhex(event.trace_id), span_id, parent
