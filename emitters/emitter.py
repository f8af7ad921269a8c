"""The emitter: a non-blocking client that ships events into Redis Streams.

A helper call only captures the event (its arguments, timestamp and
correlation scope) in a bounded deque and returns. One daemon thread builds,
validates and encodes the captures with one reused msgpack Encoder and ships
them in batches. Every event that does not reach Redis is counted by reason.

Each batch is written by one Lua script call that first claims a random batch
token with ``SET NX EX``. If Redis hangs (SIGSTOP, a stalled network) the
client times out without knowing whether the batch landed; it retries the
same batch with the same token, and the script skips a batch it has already
applied. That is what makes delivery exactly-once across hangs and restarts
(within the token TTL), not merely at-least-once.
"""

from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import os
import random
import re
import secrets
import socket
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Literal, Mapping, Optional

import msgspec

from emitters import context as _context
from emitters.events import (
    MAX_MESSAGE_LEN,
    MAX_STACK_LEN,
    SEVERITY_RANK,
    TYPED_EVENTS,
    CustomEvent,
    Envelope,
    ErrorEvent,
    GenerationCompleted,
    GenerationStarted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    RuntimeStatus,
    TokenGenerated,
    decode,
)
from emitters.fingerprint import error_type_name, fingerprint, fingerprint_exception, format_stack, message_template
from emitters.policy import out_of_range
from emitters.streams import (
    DEFAULT_ERRORS_MAXLEN,
    DEFAULT_EVENTS_MAXLEN,
    PAYLOAD_FIELD,
    SHIP_BATCH,
    SHIP_BATCH_SHA,
    ship_keys,
    stream_names,
)

if TYPE_CHECKING:
    import redis

__all__ = ["Emitter", "DROP_REASONS", "TokenEvents"]

log = logging.getLogger("mlx_telemetry.emitter")

TokenEvents = Literal["live", "sample", "stream", "off"]
DROP_REASONS = ("buffer_full", "invalid", "too_large", "redis_unavailable", "closed")

# Buffer entries are captures: (event class, helper arguments, kwargs, ts, scope).
# Encoded events travel as (route, payload); the route picks the Redis destination.
_TO_EVENTS, _TO_ERRORS, _TO_LIVE = "e", "x", "l"
_ERROR_RANK = SEVERITY_RANK["error"]
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__)
_FIELDS = {cls: frozenset(cls.__struct_fields__) for cls in (*TYPED_EVENTS.values(), CustomEvent)}
# The named arguments of each typed helper, in order: helpers capture a tuple of
# them (cheaper than a dict on the caller's thread) and the worker names them.
_ARGUMENTS: dict[type, tuple[str, ...]] = {
    ModelLoaded: ("model", "model_path"),
    ModelUnloaded: ("model",),
    ModelInvalidated: ("model", "reason"),
    GenerationStarted: ("model", "request_id"),
    TokenGenerated: ("model", "request_id", "token", "index"),
    GenerationCompleted: ("model", "request_id", "prompt_tokens", "generation_tokens", "duration_ms"),
    RuntimeStatus: ("status", "models_loaded"),
    ErrorEvent: (),
    CustomEvent: ("type",),
}
_SCALARS = (str, int, float, bool)

# Envelope fields the emitter generates or checks once, at construction or scope
# entry, instead of per event: their regex constraints cost ~5 us an event.
_TRUSTED_FIELDS = frozenset({"id", "trace_id", "span_id", "parent_span_id", "service", "host"})
_HEX32 = re.compile("^[0-9a-f]{32}$")
_HEX16 = re.compile("^[0-9a-f]{16}$")
_SERVICE = re.compile("^[A-Za-z0-9_-]{1,100}$")
_ID_PATTERNS = {"id": _HEX32, "trace_id": _HEX32, "span_id": _HEX16, "parent_span_id": _HEX16}
_CALLER_CHECKED = frozenset({"user_id", "trace_id", "span_id", "parent_span_id"})


def _trusting(cls: type) -> type:
    """``cls`` with the trusted fields' constraints dropped; every other field
    keeps its contract type, so caller-supplied values are still validated."""
    fields: list[tuple[Any, ...]] = []
    for info in msgspec.structs.fields(cls):
        field_type = (Optional[str] if info.name == "parent_span_id" else str) if info.name in _TRUSTED_FIELDS else info.type
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


def check_id(name: str, value: Any) -> None:
    """Raise ValidationError unless ``value`` is a valid ``name`` (trace_id, span_id, ...)."""
    pattern = _ID_PATTERNS[name]
    if not isinstance(value, str) or not pattern.match(value):
        raise msgspec.ValidationError(f"Expected `str` matching regex {pattern.pattern!r} - at `$.{name}`")


_current_scope = _context._scope.get
_random_bits = random.getrandbits
_time_ns = time.time_ns


class _TooLarge(ValueError):
    pass


class _Batch:
    """Events on their way: captures when claimed, (route, payload) once prepared."""

    __slots__ = ("token", "items", "refusals")

    def __init__(self, captures: list[tuple[Any, ...]]) -> None:
        self.token = _context.new_trace_id()
        self.items: list[Any] = captures
        self.refusals = 0


class Emitter:
    """Ships telemetry events to Redis without ever blocking or crashing its host.

    Typed fields of an event are keyword arguments of its helper; any other
    keyword argument is a correlation id (``request_id``, ``job_id``, ...) or
    goes into ``attrs``. ``emit`` and all helpers return None and never raise,
    unless ``strict=True`` (tests and development), where invalid events raise
    ``msgspec.ValidationError`` at the call site.
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
        redis_options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if not isinstance(service, str) or not _SERVICE.match(service):
            raise ValueError(f"service: expected a name matching {_SERVICE.pattern!r}, got {service!r}")
        if host is not None and not 1 <= len(host) <= 255:
            raise ValueError(f"host: expected 1 to 255 characters, got {len(host)}")
        if token_events not in ("live", "sample", "stream", "off"):
            raise ValueError(f"token_events must be live, sample, stream or off, got {token_events!r}")
        for name, value in (
            ("events_maxlen", events_maxlen),
            ("errors_maxlen", errors_maxlen),
            ("buffer_size", buffer_size),
            ("batch_size", batch_size),
            ("token_sample_rate", token_sample_rate),
            ("max_event_bytes", max_event_bytes),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name, seconds in (("flush_interval", flush_interval), ("live_flush_interval", live_flush_interval)):
            if seconds <= 0:
                raise ValueError(f"{name} must be > 0 seconds, got {seconds!r}")
        self.service = service
        self.names = stream_names(stream_prefix)
        self.events_maxlen = events_maxlen
        self.errors_maxlen = errors_maxlen
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._live_flush_ns = int(live_flush_interval * 1e9)
        self.token_events: TokenEvents = token_events
        self.token_sample_rate = token_sample_rate
        self.strict = strict
        self.max_event_bytes = max_event_bytes
        self.capture_prompts = capture_prompts
        self.host = host or socket.gethostname()[:255] or "unknown"
        self.max_backoff = max_backoff
        self.batch_token_ttl = batch_token_ttl
        self.exit_timeout = exit_timeout
        self._redis_url = redis_url
        self._redis_options = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": min(socket_timeout, 2.0),
            "socket_keepalive": True,
            "health_check_interval": 30,
            **(redis_options or {}),
        }
        # Imported here rather than at module level so that `import emitters`
        # stays light (redis-py imports OpenTelemetry when it is installed), and
        # not later on the worker, which may first run during interpreter exit.
        import redis  # noqa: F401

        self._hash_key = self._resolve_hash_secret(hash_secret)
        self._encoder = msgspec.msgpack.Encoder()
        self._init_state()

        # Bound to a weakref so neither hook keeps a dropped Emitter alive.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (emitter := ref()) and emitter._init_state())
        self._atexit_hook = lambda: (emitter := ref()) and emitter.close(emitter.exit_timeout)
        atexit.register(self._atexit_hook)

    # -- state ------------------------------------------------------------

    def _init_state(self) -> None:
        """(Re)create everything that must not be shared with a forked parent.

        A child starts with an empty buffer: what the parent had buffered is
        the parent's to send, and sending it twice would duplicate it.
        """
        self._pid = os.getpid()
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._inflight: Optional[_Batch] = None  # being shipped; retried as is until Redis takes it
        self._staged: Optional[_Batch] = None  # prepared while Redis runs the inflight batch
        self._lock = threading.Lock()  # worker start, drop counters, batch hand-over
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._worker: Optional[threading.Thread] = None
        self._lingering = False  # the worker holds back live tokens; other events wake it
        self._client: Optional["redis.Redis"] = None
        self._sent = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)
        self._token_counter = 0
        self._connected: Optional[bool] = None
        self._last_error: Optional[str] = None

    def _resolve_hash_secret(self, configured: str | bytes | None) -> bytes:
        secret = configured if configured is not None else os.environ.get("TELEMETRY_HASH_SECRET")
        if secret:
            return secret.encode() if isinstance(secret, str) else secret
        log.warning(
            "no hash secret configured (hash_secret= or TELEMETRY_HASH_SECRET): user ids and "
            "prompt hashes are keyed per process and cannot be correlated across processes"
        )
        return secrets.token_bytes(32)

    def keyed_hash(self, value: str) -> str:
        """HMAC-SHA256 of ``value`` under the configured secret (128-bit hex)."""
        return hmac.new(self._hash_key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]

    # -- public API -------------------------------------------------------

    @contextmanager
    def context(self, **ids: Optional[str]) -> Iterator[Mapping[str, str]]:
        """Scope in which every event carries these correlation ids.

        A new span inside the current trace; a new trace when none is set.
        """
        if ids.get("user_id") is not None:
            ids["user_id"] = self.keyed_hash(str(ids["user_id"]))
        for name in ("trace_id", "span_id"):
            if ids.get(name) is not None:
                try:
                    check_id(name, ids[name])
                except msgspec.ValidationError:
                    if self.strict:
                        raise
                    # A malformed propagated id must not poison every event in the
                    # scope: start a fresh trace/span instead.
                    log.warning("ignoring malformed %s %r passed to context()", name, ids[name])
                    ids[name] = None
        with _context.correlation(**ids) as scope:
            yield scope

    def event(self, type: str, **fields: Any) -> None:
        """Emit an event by name: typed when the contract knows it, custom otherwise."""
        cls = TYPED_EVENTS.get(type)
        if cls is None:
            self._submit(CustomEvent, (type,), fields)
        else:
            self._submit(cls, (), fields)

    def model_loaded(self, model: str, model_path: str, **fields: Any) -> None:
        self._submit(ModelLoaded, (model, model_path), fields)

    def model_unloaded(self, model: str, **fields: Any) -> None:
        self._submit(ModelUnloaded, (model,), fields)

    def model_invalidated(self, model: str, reason: str, **fields: Any) -> None:
        self._submit(ModelInvalidated, (model, reason), fields)

    def generation_started(self, model: str, request_id: str, **fields: Any) -> None:
        prompt = fields.pop("prompt", None)
        if prompt is not None:
            if self.capture_prompts:
                fields["prompt"] = prompt
            else:
                fields["prompt_chars"] = len(prompt)
                fields["prompt_hash"] = self.keyed_hash(prompt)
        self._submit(GenerationStarted, (model, request_id), fields)

    def token_generated(self, model: str, request_id: str, token: str, index: int, **fields: Any) -> None:
        if self.token_events == "off":
            return
        self._submit(TokenGenerated, (model, request_id, token, index), fields)

    def generation_completed(
        self,
        model: str,
        request_id: str,
        prompt_tokens: int,
        generation_tokens: int,
        duration_ms: float,
        **fields: Any,
    ) -> None:
        arguments = (model, request_id, prompt_tokens, generation_tokens, duration_ms)
        self._submit(GenerationCompleted, arguments, fields)

    def runtime_status(self, status: str, models_loaded: int, **fields: Any) -> None:
        self._submit(RuntimeStatus, (status, models_loaded), fields)

    def error(self, exc_or_message: BaseException | str, *, severity: str = "error", **context: Any) -> None:
        """Report an exception or a message; extra keyword fields become ``context``.

        Captures error_type, message, stack and a fingerprint that groups
        occurrences of the same error (see :mod:`emitters.fingerprint`).
        """
        try:
            fields = self._error_fields(exc_or_message, severity, context)
        except Exception:  # noqa: BLE001 - telemetry must never crash its host
            if self.strict:
                raise
            self._count_drop("invalid")
            return
        self._submit(ErrorEvent, (), fields)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything buffered so far reached Redis; False on timeout."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._idle:
            while self._buffer or self._inflight is not None or self._staged is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._worker is None or not self._worker.is_alive():
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush within ``timeout``, then stop; what could not be sent is counted."""
        if self._closed:
            return
        flushed = self.flush(timeout) if self._worker is not None else not self._buffer
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(max(0.0, min(timeout, 1.0)))
        with self._lock:
            if not flushed:
                self._dropped["redis_unavailable"] += len(self._buffer) + self._batched()
                self._buffer.clear()
                self._inflight = self._staged = None
        if self._client is not None:
            self._client.close()
        atexit.unregister(self._atexit_hook)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": self._sent,
                "buffered": len(self._buffer) + self._batched(),
                "dropped": dict(self._dropped),
                "connected": self._connected,
                "last_error": self._last_error,
            }

    def _batched(self) -> int:
        return sum(len(batch.items) for batch in (self._inflight, self._staged) if batch is not None)

    def __enter__(self) -> "Emitter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- hot path ---------------------------------------------------------

    def _submit(self, cls: type, arguments: tuple[Any, ...], fields: dict[str, Any]) -> None:
        """Capture the event; the worker builds, validates and encodes it.

        Encoding here would cost the caller ~3x more (measured by `bench`); what
        is captured is immutable or a private copy, so deferring changes nothing
        the host can observe except the cost.
        """
        capture = (cls, arguments, fields, _time_ns(), _current_scope())
        if self.strict:
            route, payload = self._materialize(capture)  # raises ValidationError naming the field
            capture = (None, route, payload, 0, None)
        elif "attrs" in fields:
            fields["attrs"] = dict(fields["attrs"] or ())
        if self._closed:
            self._count_drop("closed")
            return
        if len(self._buffer) >= self.buffer_size:
            self._count_drop("buffer_full")
            return
        self._buffer.append(capture)
        if self._worker is None:
            self._start_worker()
        elif (len(self._buffer) >= self.batch_size or (self._lingering and cls is not TokenGenerated)) and not self._wake.is_set():
            self._wake.set()

    def _materialize(self, capture: tuple[Any, ...]) -> tuple[str, bytes]:
        """Build, encode and validate a captured event: (route, payload).

        Raises msgspec.ValidationError/DecodeError/TypeError for invalid events
        and _TooLarge for oversized ones.
        """
        cls, arguments, fields, ts, scope = capture
        if cls is None:
            return arguments, fields  # strict mode encoded it at the call site
        allowed = _FIELDS[cls]
        # The captured kwargs dict is ours alone: when every key is a typed field
        # (the usual case) it becomes the event's fields without a copy.
        typed = fields if fields.keys() <= allowed else self._split_attrs(allowed, fields)
        typed.update(zip(_ARGUMENTS[cls], arguments))
        if not _CALLER_CHECKED.isdisjoint(typed):
            self._check_caller_ids(typed)
        ids = "%080x" % _random_bits(320)  # one call for id, trace id and span id
        if scope is None:
            typed.setdefault("trace_id", ids[32:64])
            typed.setdefault("span_id", ids[64:])
        else:
            for name, value in scope.items():
                typed.setdefault(name, value)
        typed.setdefault("ts", ts)
        typed.update(id=ids[:32], service=self.service, host=self.host, pid=self._pid)
        # convert validates every caller-supplied field against the contract and
        # builds the struct in one pass; a ValidationError names the field and rule.
        event = msgspec.convert(typed, _WIRE_STRUCTS[cls])
        out_of_range_reason = out_of_range(event, _time_ns())  # the data policy (issue #16)
        if out_of_range_reason is not None:
            raise msgspec.ValidationError(out_of_range_reason)
        payload = self._encoder.encode(event)
        if self.strict:
            decode(payload)  # the full contract, trusted fields included
        if len(payload) > self.max_event_bytes:
            raise _TooLarge(f"event of {len(payload)} bytes exceeds max_event_bytes={self.max_event_bytes}")
        if cls is TokenGenerated:
            return self._token_route(), payload
        if cls is ErrorEvent or SEVERITY_RANK[event.severity] >= _ERROR_RANK:
            return _TO_ERRORS, payload
        return _TO_EVENTS, payload

    @staticmethod
    def _split_attrs(allowed: frozenset[str], fields: dict[str, Any]) -> dict[str, Any]:
        """Typed fields and correlation ids stay at the top level, the rest go to ``attrs``."""
        typed: dict[str, Any] = {}
        attrs: dict[str, Any] = dict(fields.pop("attrs", None) or ())
        for name, value in fields.items():
            if name in allowed:
                typed[name] = value
            elif value is not None:
                attrs[name] = value
        if attrs:
            typed["attrs"] = attrs
        return typed

    def _check_caller_ids(self, typed: dict[str, Any]) -> None:
        """Hash a caller's user_id; validate trace/span ids the caller passed in."""
        if typed.get("user_id") is not None:
            typed["user_id"] = self.keyed_hash(str(typed["user_id"]))
        for name in ("trace_id", "span_id", "parent_span_id"):
            if typed.get(name) is not None:
                check_id(name, typed[name])

    def _token_route(self) -> str:
        mode = self.token_events
        if mode == "live":
            return _TO_LIVE
        if mode == "stream":
            return _TO_EVENTS
        self._token_counter += 1
        return _TO_EVENTS if self._token_counter % self.token_sample_rate == 0 else _TO_LIVE

    def _count_drop(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] += 1

    def _error_fields(self, exc_or_message: BaseException | str, severity: str, context: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {"severity": severity}
        for name in ("code", "model", "fingerprint", "attrs", *_ENVELOPE_FIELDS):
            if name in context:
                fields[name] = context.pop(name)
        if isinstance(exc_or_message, BaseException):
            error_type = context.pop("error_type", None) or error_type_name(exc_or_message)
            message = str(exc_or_message) or error_type
            fields.setdefault("fingerprint", fingerprint_exception(exc_or_message))
            stack = format_stack(exc_or_message, MAX_STACK_LEN)
            if stack:
                fields["stack"] = stack
        else:
            error_type = context.pop("error_type", None) or "Error"
            message = str(exc_or_message)
            fields.setdefault("fingerprint", fingerprint(error_type, message_template(message)))
        fields["error_type"] = str(error_type)[:256]
        fields["message"] = message[:MAX_MESSAGE_LEN]
        if context:
            # Context is diagnostic: keep it even when a value is not a scalar.
            fields["context"] = {
                str(key)[:128]: value if isinstance(value, _SCALARS) else repr(value)[:1024]
                for key, value in list(context.items())[:64]
                if value is not None
            }
        return fields

    # -- worker -----------------------------------------------------------

    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is not None or self._closed:
                return
            self._worker = threading.Thread(target=self._run, name="mlx-telemetry-emitter", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            linger = 0.0 if backoff else self._live_linger()
            if linger > 0:
                # Only young live tokens are buffered: sleep until they are due,
                # unless another event arrives first (_submit wakes us then).
                self._lingering = True
                self._wake.wait(linger)
                self._lingering = False
            elif not self._wake.wait(backoff or self.flush_interval) and not backoff and self._live_linger() > 0:
                continue
            self._wake.clear()
            while self._buffer or self._inflight is not None or self._staged is not None:
                if self._stop.is_set():
                    return
                if self._ship_one():
                    backoff = 0.0
                    continue
                # Full jitter, capped: many emitters must not reconnect in lockstep.
                backoff = min(self.max_backoff, max(0.05, backoff * 2))
                self._stop.wait(random.uniform(backoff / 2, backoff))
                break

    def _live_linger(self) -> float:
        """Seconds the buffer may still wait, when it holds nothing but live token
        events younger than ``live_flush_interval``; 0 otherwise.

        Each batch costs the host process a fixed ~0.2 ms of CPU, so a token
        stream shipped every ``flush_interval`` would pay it for a handful of
        events; lingering ships the same tokens in a few larger batches.
        """
        if self.token_events not in ("live", "sample") or self._inflight is not None or self._staged is not None:
            return 0.0
        pending = self._buffer.copy()  # atomic under the GIL, unlike iterating the deque
        if not pending or not all(capture[0] is TokenGenerated for capture in pending):
            return 0.0
        return max(0.0, (pending[0][3] + self._live_flush_ns - _time_ns()) / 1e9)

    def _claim(self) -> _Batch:
        """Move up to ``batch_size`` captures out of the buffer into a batch.

        Only pops happen under the lock, so an emitter counting a drop never
        waits for the worker's encoding. The batch is registered before the
        lock is released, so flush() never sees the events in neither place.
        """
        with self._idle:
            captures = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            batch = _Batch(captures)
            if self._inflight is None:
                self._inflight = batch
            else:
                self._staged = batch
            return batch

    def _prepare(self, batch: _Batch) -> None:
        """Build, validate and encode a claimed batch, counting what is dropped.

        A batch over 1 MiB hands its tail back to the front of the buffer, in
        order, so no single script call carries an unbounded argument list.
        """
        items: list[tuple[str, bytes]] = []
        size = 0
        invalid = too_large = 0
        captures = batch.items
        for index, capture in enumerate(captures):
            if size >= 1 << 20:
                with self._idle:
                    self._buffer.extendleft(reversed(captures[index:]))
                break
            # Broad except on purpose: a bad event is counted, never fatal.
            try:
                route, payload = self._materialize(capture)
            except _TooLarge:
                too_large += 1
                continue
            except Exception:  # noqa: BLE001
                invalid += 1
                continue
            items.append((route, payload))
            size += len(payload)
        with self._idle:
            batch.items = items
            self._dropped["invalid"] += invalid
            self._dropped["too_large"] += too_large

    def _ship_one(self) -> bool:
        import redis  # already loaded by __init__

        batch = self._inflight
        if batch is None:
            batch = self._claim()
            self._prepare(batch)
        if batch.items:
            try:
                self._ship(batch)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._mark_down(exc)
                return False
            except redis.ResponseError as exc:
                # Redis answered but refused (NOPERM, OOM, ...): retrying forever would
                # wedge the pipeline, so give the batch a few tries and then count it.
                batch.refusals += 1
                self._mark_down(exc)
                if batch.refusals < 3:
                    return False
                with self._idle:
                    self._dropped["redis_unavailable"] += len(batch.items)
                    self._inflight, self._staged = self._staged, None
                    self._idle.notify_all()
                return False
        with self._idle:
            self._sent += len(batch.items)
            self._inflight, self._staged = self._staged, None
            self._idle.notify_all()
        if self._connected is not True:
            if self._connected is False:
                log.info("telemetry redis reachable again; shipping buffered events")
            self._connected = True
        return True

    def _ship(self, batch: _Batch) -> None:
        """One script call for the batch; the next batch is prepared meanwhile.

        Sending and reading the reply are split so that encoding batch N+1
        overlaps Redis running batch N (about half of the emitter's time at
        full speed goes to waiting for that reply).
        """
        import redis

        if self._client is None:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # Retries are ours: capped, jittered, and never on the caller's thread.
            options = {"retry": Retry(NoBackoff(), 0), **self._redis_options}
            self._client = redis.Redis.from_url(self._redis_url, **options)
        args: list[Any] = [
            self.batch_token_ttl,
            self.events_maxlen,
            self.errors_maxlen,
            self.names.live,
            PAYLOAD_FIELD,
        ]
        live: list[bytes] = []
        for route, payload in batch.items:
            if route == _TO_LIVE:
                live.append(payload)
            else:
                args.append(route)
                args.append(payload)
        if live:
            # One message for all of a batch's tokens: a PUBLISH per token costs
            # Redis (and, on a small machine, the engine's cores) ~20 us each.
            args.append(_TO_LIVE)
            args.append(self._encoder.encode(live))
        keys = ship_keys(self.names, batch.token)
        command = ("EVALSHA", SHIP_BATCH_SHA, len(keys), *keys, *args)
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command(*command)
            if self._staged is None and self._buffer:
                self._prepare(self._claim())
            try:
                connection.read_response()
            except redis.exceptions.NoScriptError:
                # A restarted Redis forgot the script; the batch token makes resending safe.
                connection.send_command("SCRIPT", "LOAD", SHIP_BATCH)
                connection.read_response()
                connection.send_command(*command)
                connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def _mark_down(self, exc: Exception) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._connected is not False:
            log.warning("telemetry redis unavailable, buffering events: %s", self._last_error)
        self._connected = False
