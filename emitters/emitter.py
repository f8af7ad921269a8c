"""The emitter's public API: a non-blocking client that ships events into Redis Streams.

A helper call only captures the event (its arguments, timestamp and
correlation scope) in a bounded buffer and returns. One daemon thread builds,
validates and encodes the captures and ships them in batches (see
:mod:`emitters.batcher`, :mod:`emitters.building`, :mod:`emitters.shipper`).
Every event that does not reach Redis is counted by reason
(:mod:`emitters.losses`), and the counts leave the process as client reports.

Every public method runs inside one guard: whatever its arguments, a call
returns normally and counts what it dropped; with ``strict=True`` it raises
``ValidationError`` naming the field and the rule instead.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Literal, Mapping, Optional, TypeVar

from emitters import context as _context
from emitters.batcher import Batcher
from emitters.building import MISSING, EventBuilder, error_fields
from emitters.diagnostics import warn_once
from emitters.events import (
    DROP_REASONS,
    TYPED_EVENTS,
    ClientReport,
    CustomEvent,
    ErrorEvent,
    GenerationCompleted,
    GenerationStarted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    RuntimeStatus,
    SpanEnded,
    TokenGenerated,
)
from emitters.lifecycle import ProcessHooks
from emitters.losses import Losses
from emitters.privacy import Privacy, prompt_fields, resolve_secret
from emitters.settings import check_settings
from emitters.shipper import RedisShipper
from emitters.streams import DEFAULT_ERRORS_MAXLEN, DEFAULT_EVENTS_MAXLEN, stream_names
from emitters.validation import ValidationError, explain, invalid

__all__ = ["Emitter", "DROP_REASONS", "TokenEvents"]

TokenEvents = Literal["live", "sample", "stream", "off"]

_current_scope = _context._scope.get
_time_ns = time.time_ns
_F = TypeVar("_F", bound=Callable[..., Any])


def _extra(extra: tuple[Any, ...]) -> ValidationError:
    return ValidationError(f"Expected no more positional arguments, got {len(extra)} more; pass fields by keyword")


def _guarded(fallback: Callable[[], Any] = lambda: None) -> Callable[[_F], _F]:
    """The guard of the entry points that emit no event (context, flush, close, stats).

    Non-strict: any failure, including arguments that do not bind, is logged
    once and the call returns ``fallback()``. Strict: it raises ValidationError.
    The event helpers guard their own bodies the same way (see ``_reject``).
    """

    def wrap(method: _F) -> _F:
        entry = method.__name__

        @functools.wraps(method)
        def guarded(self: "Emitter", *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - telemetry must never crash its host
                if self.strict:
                    if isinstance(exc, ValidationError):
                        raise explain(exc) from None
                    raise ValidationError(f"{entry}(): {exc}") from exc
                warn_once(f"{entry}:{type(exc).__name__}", "telemetry %s() failed: %s: %s", entry, type(exc).__name__, exc)
                return fallback()

        return guarded  # type: ignore[return-value]

    return wrap


class Emitter:
    """Ships telemetry events to Redis without ever blocking or crashing its host.

    Typed fields of an event are keyword arguments of its helper; any other
    keyword argument is a correlation id (``request_id``, ``job_id``, ...) or
    goes into ``attrs``. ``event`` and all helpers return None and never raise,
    unless ``strict=True`` (tests and development), where invalid events raise
    ``ValidationError`` at the call site. Settings are checked here: a bad one
    raises ValueError at once.
    """

    def __init__(
        self,
        service: str,
        redis_url: str = "redis://localhost:6379/0",
        *,
        stream_prefix: str = "telemetry",
        events_maxlen: int = DEFAULT_EVENTS_MAXLEN,
        errors_maxlen: int = DEFAULT_ERRORS_MAXLEN,
        buffer_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.01,
        live_flush_interval: float = 0.25,
        token_events: TokenEvents = "live",
        token_sample_rate: int = 100,
        strict: bool = False,
        max_event_bytes: int = 64 * 1024,
        hash_secret: str | bytes | None = None,
        capture_prompts: bool = False,
        host: Optional[str] = None,
        socket_timeout: float = 5.0,
        max_backoff: float = 5.0,
        batch_token_ttl: int = 600,
        exit_timeout: float = 2.0,
        report_interval: float = 10.0,
        redis_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        check_settings(locals())
        self.service = service
        self.names = stream_names(stream_prefix)
        self.token_events: TokenEvents = token_events
        self.strict = bool(strict)
        self.capture_prompts = bool(capture_prompts)
        self.host = host or socket.gethostname()[:255] or "unknown"
        self.exit_timeout = exit_timeout
        self.report_interval = report_interval
        # Read-only reflections of the settings, for tools that show them (bench, demo).
        self.buffer_size, self.batch_size, self.flush_interval = buffer_size, batch_size, flush_interval
        self.events_maxlen, self.errors_maxlen, self.max_event_bytes = events_maxlen, errors_maxlen, max_event_bytes
        self._privacy = Privacy(resolve_secret(hash_secret))
        self.keyed_hash = self._privacy.keyed_hash
        self._losses = Losses()
        self._builder = EventBuilder(
            service=service, host=self.host, privacy=self._privacy, token_route=token_events,
            token_sample_rate=token_sample_rate, max_event_bytes=max_event_bytes, strict=self.strict,
        )  # fmt: skip
        options = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(socket_timeout, 2.0),
            "socket_keepalive": True,
            "health_check_interval": 30,
            **(redis_options or {}),
        }
        try:
            self._shipper = RedisShipper(
                redis_url, options, self.names, events_maxlen=events_maxlen, errors_maxlen=errors_maxlen,
                token_ttl=batch_token_ttl, encode=self._builder.encode,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise ValueError(f"redis_options: redis-py rejected them: {exc}") from None
        self._batcher = Batcher(
            self._builder, self._shipper, self._losses, buffer_size=buffer_size, batch_size=batch_size,
            flush_interval=flush_interval, live_flush_interval=live_flush_interval,
            lingers=token_events in ("live", "sample"), max_backoff=max_backoff, periodic=self._maybe_report,
        )  # fmt: skip
        self._offer = self._batcher.offer
        self._init_process()
        _context.set_default_sink(self)
        self._hooks = ProcessHooks(self)

    def _init_process(self) -> None:
        self._builder.pid = os.getpid()
        self._next_report = time.monotonic() + self.report_interval

    # -- public API ---------------------------------------------------------

    @_guarded(fallback=lambda: nullcontext({}))
    def context(self, name: str = "scope", *, traceparent: Optional[str] = None, **ids: Any) -> ContextManager[Mapping[str, str]]:
        """Scope in which every event carries these correlation ids: one span.

        A new span inside the current trace, or a new trace. ``traceparent``
        (a W3C header value) continues that trace under a remote parent. When
        the scope closes, one ``span.ended`` event reports it (status error and
        the exception type when the block raised; the exception propagates).
        """
        return _context.scope(name, traceparent, ids, self)

    def end_span(self, span: _context.Span) -> None:
        """Emit ``span.ended`` for a closed scope (called by the scope itself; never raises)."""
        fields: dict[str, Any] = dict(span.ids)
        fields.update(name=span.name, start_ts=span.start_ts, duration_ms=span.duration_ms, status=span.status)
        if span.status_message:
            fields["status_message"] = span.status_message
        if span.error_type:
            fields["error_type"] = span.error_type
        if span.parent_remote:
            fields["parent_remote"] = True
        try:
            self._offer((SpanEnded, (), fields, _time_ns(), None))
        except Exception as exc:  # noqa: BLE001 - a scope's exit must not raise into the host
            self._losses.invalid(exc)

    # The event helpers guard their own bodies (a wrapper would double their cost,
    # ~0.4 us, on the hot path). Their arguments are positional-only with a
    # MISSING default and keywords go to ``fields``, so no call can fail to bind:
    # a missing or doubled argument is reported by the builder, naming the field.

    def event(self, type: Any = MISSING, /, *extra: Any, **fields: Any) -> None:
        """Emit an event by name: typed when the contract knows it, custom otherwise."""
        try:
            if type is MISSING:
                type = fields.pop("type", MISSING)
            cls = TYPED_EVENTS.get(type) if type.__class__ is str else None
            if extra:
                raise _extra(extra)
            if cls is ClientReport:
                raise invalid("type", "Expected a type other than client.report, which only the emitter sends")
            if cls is None:
                self._submit(CustomEvent, (type,), fields)
            else:
                self._submit(cls, (), fields)
        except Exception as exc:  # noqa: BLE001 - the guard: counted, or raised in strict mode
            self._reject(exc)

    def model_loaded(self, model: Any = MISSING, model_path: Any = MISSING, /, *extra: Any, **fields: Any) -> None:
        try:
            self._submit(ModelLoaded, (model, model_path) + extra, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def model_unloaded(self, model: Any = MISSING, /, *extra: Any, **fields: Any) -> None:
        try:
            self._submit(ModelUnloaded, (model,) + extra, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def model_invalidated(self, model: Any = MISSING, reason: Any = MISSING, /, *extra: Any, **fields: Any) -> None:
        try:
            self._submit(ModelInvalidated, (model, reason) + extra, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def generation_started(self, model: Any = MISSING, request_id: Any = MISSING, /, *extra: Any, **fields: Any) -> None:
        """``prompt`` follows the prompt policy (:func:`emitters.privacy.prompt_fields`)."""
        try:
            if "prompt" in fields:
                policy = prompt_fields(fields.pop("prompt"), capture=self.capture_prompts, keyed_hash=self.keyed_hash)
                for name, value in policy.items():
                    fields.setdefault(name, value)
            self._submit(GenerationStarted, (model, request_id) + extra, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def token_generated(
        self, model: Any = MISSING, request_id: Any = MISSING, token: Any = MISSING, index: Any = MISSING, /,
        *extra: Any, **fields: Any,
    ) -> None:  # fmt: skip
        if self.token_events == "off":
            return
        try:
            self._submit(TokenGenerated, (model, request_id, token, index) + extra, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def generation_completed(
        self, model: Any = MISSING, request_id: Any = MISSING, prompt_tokens: Any = MISSING,
        generation_tokens: Any = MISSING, duration_ms: Any = MISSING, /, *extra: Any, **fields: Any,
    ) -> None:  # fmt: skip
        try:
            arguments = (model, request_id, prompt_tokens, generation_tokens, duration_ms)
            self._submit(GenerationCompleted, arguments + extra if extra else arguments, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def runtime_status(self, status: Any = MISSING, models_loaded: Any = MISSING, /, *extra: Any, **fields: Any) -> None:
        try:
            self._submit(RuntimeStatus, (status, models_loaded) + extra, fields)
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def error(self, exc_or_message: Any = MISSING, /, *extra: Any, severity: Any = "error", **context: Any) -> None:
        """Report an exception or a message; extra keyword fields become ``context``.

        Captures error_type, message, stack and a fingerprint that groups
        occurrences of the same error (see :mod:`emitters.fingerprint`).
        """
        try:
            if extra:
                raise _extra(extra)
            if exc_or_message is MISSING:
                raise invalid("message", "Expected an exception or a message")
            self._submit(ErrorEvent, (), error_fields(exc_or_message, severity, context))
        except Exception as exc:  # noqa: BLE001 - the guard
            self._reject(exc)

    def _reject(self, exc: Exception) -> None:
        """The event guard: strict raises ValidationError naming field and rule, else the drop is counted."""
        if self.strict:
            raise explain(exc) if isinstance(exc, ValidationError) else ValidationError(f"{type(exc).__name__}: {exc}") from exc
        self._losses.invalid(exc)

    @_guarded(fallback=lambda: False)
    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything buffered so far reached Redis; False on timeout."""
        return self._batcher.flush(_seconds(timeout))

    @_guarded()
    def close(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout``, then stop; what could not be sent is counted."""
        self._close(_seconds(timeout), "redis_unavailable")

    @_guarded(fallback=dict)
    def stats(self) -> dict[str, Any]:
        """Counts since this process started, and what the emitter knows of its state.

        ``connected`` is None before the first batch, then whether Redis took
        the last one; ``last_error`` the latest transport or worker failure;
        ``last_invalid`` the field and rule of the latest invalid event.
        """
        batcher = self._batcher
        snapshot = self._losses.snapshot()
        snapshot.update(
            buffered=batcher.pending(),
            connected=batcher.connected,
            last_error=batcher.last_error,
            worker_restarts=batcher.restarts,
        )
        return snapshot

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- hot path -----------------------------------------------------------

    def _submit(self, cls: type, arguments: tuple[Any, ...], fields: dict[str, Any]) -> None:
        """Capture the event; the worker builds, validates and encodes it.

        Encoding here would cost the caller ~3x more (measured by `bench`); what
        is captured is immutable or a private copy, so deferring changes nothing
        the host can observe except the cost.
        """
        capture = (cls, arguments, fields, _time_ns(), _current_scope())
        if self.strict:
            route, payload = self._builder.build(capture)  # raises ValidationError naming the field
            capture = (None, route, payload, 0, None)
        elif "attrs" in fields and fields["attrs"].__class__ is dict:
            fields["attrs"] = fields["attrs"].copy()  # the caller may change its dict after we return
        self._offer(capture)

    # -- client reports -----------------------------------------------------

    def _maybe_report(self) -> float:
        """On the worker: ship a client report when one is due and there were losses or
        reconnects; seconds until the next one is due."""
        now = time.monotonic()
        if now >= self._next_report:
            self._next_report = now + self.report_interval
            self._report()
        return self._next_report - now

    def _report(self) -> None:
        fields = self._losses.report()
        if fields is not None:
            self._offer((ClientReport, (), fields, _time_ns(), None), always=True)

    # -- process lifecycle --------------------------------------------------

    def _close(self, timeout: float, unsent_reason: str) -> None:
        batcher = self._batcher
        if batcher.closed:
            return
        if batcher.flush(timeout):
            self._report()  # the final report: what changed since the last one
            batcher.flush(min(timeout, 1.0))
        batcher.close(timeout, unsent_reason)
        self._shipper.close()
        self._hooks.unregister()
        _context.forget_default_sink(self)

    def _restart_in_child(self) -> None:
        """Start over in a forked child: no inherited buffer, lock, thread or Redis client."""
        closed = self._batcher.closed
        self._shipper.abandon_after_fork()
        self._batcher.reset()
        self._batcher.closed = closed
        self._losses.reset()
        self._init_process()


def _seconds(timeout: Any) -> float:
    """A caller's timeout as seconds: NaN and negatives mean do not wait."""
    seconds = float(timeout)
    return seconds if seconds >= 0 else 0.0
