"""Scopes: correlation ids carried by contextvars; every scope is one span.

The scope is per thread and per asyncio task, like any contextvar. One context
is shared by all emitters in the process: a request that crosses two emitter
instances keeps its trace. When a scope closes, its span ends: the emitter it
is bound to emits one ``span.ended`` event with the scope's own ids.

An event emitted outside every scope carries no trace or span id.
"""

from __future__ import annotations

import random
import re
import time
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping, Optional, Protocol

from emitters.diagnostics import warn_once
from emitters.events import MAX_ID_LEN
from emitters.validation import ValidationError, check_id, invalid

__all__ = [
    "CORRELATION_KEYS",
    "Span",
    "SpanSink",
    "correlation",
    "current",
    "new_trace_id",
    "new_span_id",
    "parse_traceparent",
    "scope",
    "set_default_sink",
    "forget_default_sink",
]

# Ids a scope can carry besides trace_id/span_id.
CORRELATION_KEYS = ("request_id", "job_id", "worker_id", "machine_id", "user_id")
_SCOPE_KEYS = frozenset(CORRELATION_KEYS) | {"trace_id", "span_id"}
# A user id travels hashed, so its raw length is not the wire's limit; this only bounds memory.
_MAX_USER_ID_LEN = 1 << 16

_scope: ContextVar[Optional[Mapping[str, str]]] = ContextVar("mlx_telemetry_scope", default=None)

# random.getrandbits is reseeded after fork by the random module itself, and is
# several times cheaper than os.urandom for ids that need to be unique, not secret.
_bits = random.getrandbits

# W3C trace-context: version-traceid-parentid-flags; version ff and all-zero ids are invalid.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def new_trace_id() -> str:
    return "%032x" % _bits(128)


def new_span_id() -> str:
    return "%016x" % _bits(64)


def current() -> Optional[Mapping[str, str]]:
    """The ids of the innermost scope, or None outside any scope."""
    return _scope.get()


def parse_traceparent(value: Any) -> Optional[tuple[str, str]]:
    """(trace id, parent span id) from a W3C ``traceparent`` header value, None if invalid."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id


class Span:
    """A scope while it is open, and what its ``span.ended`` event reports."""

    __slots__ = ("name", "ids", "start_ts", "_start", "duration_ms", "status", "status_message", "error_type", "parent_remote")

    def __init__(self, name: str, ids: dict[str, str], parent_remote: bool) -> None:
        self.name = name
        self.ids = ids
        self.parent_remote = parent_remote
        self.start_ts = time.time_ns()
        self._start = time.perf_counter()
        self.duration_ms = 0.0
        self.status = "ok"
        self.status_message: Optional[str] = None
        self.error_type: Optional[str] = None

    def fail(self, exc: BaseException) -> None:
        self.status = "error"
        self.error_type = type(exc).__qualname__[:256]
        try:
            self.status_message = str(exc)[:1024] or None
        except Exception:  # noqa: BLE001 - an exception whose __str__ fails still ends the span
            self.status_message = None

    def end(self) -> None:
        self.duration_ms = max(0.0, (time.perf_counter() - self._start) * 1000.0)


class SpanSink(Protocol):
    strict: bool

    def end_span(self, span: Span) -> None: ...


_default_sink: Optional[weakref.ReferenceType[SpanSink]] = None


def set_default_sink(sink: Optional[SpanSink]) -> None:
    """The emitter that ends scopes opened by :func:`correlation` (the latest one made)."""
    global _default_sink
    _default_sink = None if sink is None else weakref.ref(sink)


def forget_default_sink(sink: SpanSink) -> None:
    """A closed emitter no longer ends :func:`correlation` scopes."""
    if _default_sink is not None and _default_sink() is sink:
        set_default_sink(None)


def _rejected(strict: bool, error: ValidationError) -> None:
    if strict:
        raise error
    warn_once(str(error), "telemetry scope: ignoring an invalid id: %s", error)


def _open(name: Any, traceparent: Any, ids: dict[str, Any], strict: bool) -> Span:
    """The span of a new scope inside the current one; invalid input is dropped (or raised)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 256:
        _rejected(strict, invalid("name", "Expected a scope name of 1 to 256 characters"))
        name = name[:256] if isinstance(name, str) and name else "scope"
    outer = _scope.get() or {}
    scope_ids = {key: value for key, value in outer.items() if key != "parent_span_id"}
    for key, value in ids.items():
        if value is None:
            continue
        if key not in _SCOPE_KEYS:
            _rejected(strict, invalid(key, f"Expected a correlation id ({', '.join(sorted(_SCOPE_KEYS))})"))
        elif key in ("trace_id", "span_id"):
            try:
                check_id(key, value)
            except ValidationError as error:
                _rejected(strict, error)
                continue
            scope_ids[key] = value
        elif isinstance(value, str) and 1 <= len(value) <= (MAX_ID_LEN if key != "user_id" else _MAX_USER_ID_LEN):
            scope_ids[key] = value  # user_id is hashed when an event is built (emitters.privacy)
        elif isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**64:
            scope_ids[key] = str(value)
        else:
            _rejected(strict, invalid(key, f"Expected `str` of 1 to {MAX_ID_LEN} characters"))
    parent: Optional[str] = None
    remote = False
    propagated = parse_traceparent(traceparent) if traceparent is not None else None
    if traceparent is not None and propagated is None:
        _rejected(strict, invalid("traceparent", "Expected a W3C traceparent 00-<32 hex>-<16 hex>-<2 hex>"))
    if propagated is not None:
        scope_ids["trace_id"], parent = propagated
        remote = True
    elif ids.get("span_id") is not None and "span_id" in scope_ids and scope_ids["span_id"] != outer.get("span_id"):
        parent, remote = scope_ids["span_id"], True  # a span id given by the caller: a remote parent
    elif outer.get("span_id") and scope_ids.get("trace_id") == outer.get("trace_id"):
        parent = outer["span_id"]
    if "trace_id" not in scope_ids:
        scope_ids["trace_id"] = new_trace_id()
    scope_ids["span_id"] = new_span_id()
    if parent is not None:
        scope_ids["parent_span_id"] = parent
    return Span(name, scope_ids, remote)


@contextmanager
def scope(name: Any, traceparent: Any, ids: dict[str, Any], sink: Optional[SpanSink]) -> Iterator[Mapping[str, str]]:
    """Open a scope whose span ends through ``sink`` (nothing is emitted without one)."""
    span = _open(name, traceparent, ids, bool(sink is not None and sink.strict))
    token = _scope.set(span.ids)
    try:
        yield span.ids
    except BaseException as exc:
        span.fail(exc)
        raise
    finally:
        try:
            _scope.reset(token)
        except ValueError:  # closed in another context than it was opened in
            _scope.set(None)
        span.end()
        if sink is not None:
            sink.end_span(span)


def correlation(name: Any = "scope", /, *extra: Any, traceparent: Any = None, **ids: Any) -> Any:
    """Open a scope: a new span inside the current trace (or a new trace).

    ``traceparent`` (a W3C header value) continues a propagated trace with the
    caller's span as a remote parent; ``trace_id`` switches to a given trace;
    ids not given are inherited from the enclosing scope. ``None`` values are
    ignored, so callers can pass optional ids straight through. The span ends,
    as one ``span.ended`` event, through the most recently created emitter.
    """
    sink = _default_sink() if _default_sink is not None else None
    # Like the emitter's entry points, it accepts any call: a name given by keyword
    # is the name, extra positional arguments are reported and ignored.
    if "name" in ids:
        name = ids.pop("name")
    if extra:
        _rejected(bool(sink is not None and sink.strict), invalid("name", f"Expected one positional argument, got {1 + len(extra)}"))
    return scope(name, traceparent, ids, sink)
