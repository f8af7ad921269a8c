"""The batcher: a bounded buffer drained by one worker thread into the shipper.

Callers only append captures to the buffer (``offer``). The worker claims up
to ``batch_size`` of them, builds them (EventBuilder), and hands the batch to
the shipper, preparing the next batch while Redis runs the current one. A
batch the shipper could not deliver is retried as is (same token, so never
twice) with capped, jittered backoff. Every event that leaves the buffer
without reaching Redis is counted in :class:`Losses`.

The worker cannot die silently: an unexpected failure is recorded in
``last_error``, logged once, and the loop starts again after a backoff.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

from emitters.building import EventBuilder, TooLarge
from emitters.context import new_trace_id
from emitters.diagnostics import log, warn_once
from emitters.events import TokenGenerated
from emitters.losses import Losses
from emitters.shipper import TO_REPORT, RedisRefused, RedisShipper, ShipFailed
from emitters.validation import ValidationError

__all__ = ["Batcher"]

_MAX_BATCH_BYTES = 1 << 20
_REFUSALS_BEFORE_DROP = 3
_time_ns = time.time_ns


class _Batch:
    """Events on their way: captures when claimed, (route, payload) once prepared."""

    __slots__ = ("token", "items", "prepared", "refusals", "reports")

    def __init__(self, captures: list[tuple[Any, ...]]) -> None:
        self.token = new_trace_id()
        self.items: list[Any] = captures
        self.prepared = False
        self.refusals = 0
        self.reports = 0


class Batcher:
    def __init__(
        self,
        builder: EventBuilder,
        shipper: RedisShipper,
        losses: Losses,
        *,
        buffer_size: int,
        batch_size: int,
        flush_interval: float,
        live_flush_interval: float,
        lingers: bool,
        max_backoff: float,
        periodic: Callable[[], float],
    ) -> None:
        self._builder = builder
        self._shipper = shipper
        self._losses = losses
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._live_flush_ns = int(live_flush_interval * 1e9)
        self._lingers = lingers
        self.max_backoff = max_backoff
        self._periodic = periodic
        self.reset()

    def reset(self) -> None:
        """(Re)create everything that must not be shared with a forked parent.

        A child starts with an empty buffer: what the parent had buffered is
        the parent's to send, and sending it twice would duplicate it. Locks
        are new: a parent thread may have held the old ones at fork time.
        """
        self._buffer: deque[tuple[Any, ...]] = deque()
        self._inflight: Optional[_Batch] = None  # being shipped; retried as is until Redis takes it
        self._staged: Optional[_Batch] = None  # prepared while Redis runs the inflight batch
        self._owed = 0  # buffered events that waited out the hold-back: they ship in this drain
        self._lock = threading.Lock()  # worker start, batch hand-over
        self._idle = threading.Condition(self._lock)
        self._wake = threading.Event()  # ship now: batch full, flush, close, an event ends a linger
        self._arrived = threading.Event()  # the buffer was empty and is not any more
        self._stop = threading.Event()
        self.closed = False
        self._worker: Optional[threading.Thread] = None
        self._lingering = False  # the worker holds back live tokens; other events wake it
        self._sleeping = False  # the worker waits for the buffer to fill; the first event wakes it
        self._flush_requested = False  # flush() wants everything buffered shipped now
        self.connected: Optional[bool] = None
        self.last_error: Optional[str] = None
        self.restarts = 0

    # -- callers' side ------------------------------------------------------

    def offer(self, capture: tuple[Any, ...], always: bool = False) -> None:
        """Append a capture, or count why not. ``always``: even past a full buffer (client reports)."""
        if self.closed:
            self._losses.drop("closed")
            return
        buffer = self._buffer
        if len(buffer) >= self.buffer_size and not always:
            self._losses.drop("buffer_full")
            return
        buffer.append(capture)
        if self._worker is None:
            self._start_worker()
        elif self._sleeping and not self._arrived.is_set():
            self._arrived.set()
        elif (len(buffer) >= self.batch_size or (self._lingering and capture[0] is not TokenGenerated)) and not self._wake.is_set():
            self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer) + self._batched()

    def _batched(self) -> int:
        return sum(len(batch.items) for batch in (self._inflight, self._staged) if batch is not None)

    def flush(self, timeout: float) -> bool:
        """Wait until everything buffered so far reached Redis; False on timeout."""
        deadline = time.monotonic() + timeout
        self._flush_requested = True
        self._wake.set()
        with self._idle:
            while self._buffer or self._inflight is not None or self._staged is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._worker is None or not self._worker.is_alive():
                    return False
                self._idle.wait(min(remaining, 0.05))
        return True

    def close(self, timeout: float, unsent_reason: str) -> None:
        """Stop the worker; what is still buffered is counted under ``unsent_reason``."""
        self.closed = True
        self._stop.set()
        self._wake.set()
        self._arrived.set()
        if self._worker is not None:
            self._worker.join(max(0.0, min(timeout, 1.0)))
        with self._lock:
            self._losses.drop(unsent_reason, len(self._buffer) + self._batched())
            self._buffer.clear()
            self._inflight = self._staged = None

    # -- worker -------------------------------------------------------------

    def _start_worker(self) -> None:
        with self._lock:
            if self._worker is not None or self.closed:
                return
            self._worker = threading.Thread(target=self._run, name="mlx-telemetry-emitter", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        """The worker loop, restarted after any failure it did not expect."""
        while not self._stop.is_set():
            try:
                self._loop()
            except Exception as exc:  # noqa: BLE001 - the worker must outlive its own bugs
                self.last_error = f"worker failed, restarting: {type(exc).__name__}: {exc}"
                self.restarts += 1
                if self.restarts == 1:
                    log.exception("telemetry emitter worker failed; restarting it")
                else:
                    warn_once(f"worker:{type(exc).__name__}", "telemetry emitter worker failed again: %s", self.last_error)
                self._stop.wait(min(self.max_backoff, 0.05 * 2 ** min(self.restarts, 8)))

    def _loop(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            periodic_due = self._periodic()
            if backoff:
                self._wake.wait(backoff)
            elif self._sleep_while_empty(periodic_due):
                continue
            else:
                self._hold_back()
            self._flush_requested = False
            self._wake.clear()
            self._owed = len(self._buffer)
            while self._inflight is not None or self._staged is not None or self._due_now():
                if self._stop.is_set():
                    return
                if self._ship_one():
                    backoff = 0.0
                    continue
                # Full jitter, capped: many emitters must not reconnect in lockstep.
                backoff = min(self.max_backoff, max(0.05, backoff * 2))
                self._stop.wait(random.uniform(backoff / 2, backoff))
                break

    def _due_now(self) -> bool:
        """Whether buffered events ship at once, behind the batch in flight: those that
        waited out the hold-back, a full batch, or all when flush() or close() asked.

        Events that arrive while a batch ships wait for the next hold-back unless they
        fill a batch: a trickle must not turn into a stream of one-event batches.
        """
        buffer = self._buffer
        return bool(buffer) and (self._owed > 0 or len(buffer) >= self.batch_size or self._wake.is_set())

    def _sleep_while_empty(self, timeout: float) -> bool:
        """With nothing buffered, sleep until an event arrives (``offer`` wakes us), the
        emitter closes or ``timeout`` passes; True when the buffer is still empty.

        An idle emitter must cost its host nothing: polling every ``flush_interval``
        cost ~0.7% of a core doing nothing (100 timed waits a second).
        """
        if self._buffer:
            return False
        self._arrived.clear()
        self._sleeping = True  # set before looking at the buffer: an offer after this wakes us
        try:
            if not self._buffer and not self._stop.is_set():
                self._arrived.wait(timeout)
        finally:
            self._sleeping = False
        return not self._buffer

    def _hold_back(self) -> None:
        """Let a young batch grow before it ships: ``flush_interval``, or, while only live
        token events are buffered, until the oldest is ``live_flush_interval`` old.

        Each batch costs the host process a fixed 0.1-0.3 ms of CPU, so a token
        stream shipped every ``flush_interval`` would pay it for a handful of events;
        lingering ships the same tokens in a few larger batches. A full batch,
        flush() or close() ends the wait (``offer`` and ``flush`` set ``_wake``); any
        other event cuts it to ``flush_interval`` from its arrival, so that what
        follows it closely (a generation's ``span.ended`` after its
        ``generation.completed``) rides in the same batch.
        """
        if len(self._buffer) >= self.batch_size:
            return
        if self._lingers:
            self._lingering = True  # from here on, an offered non-token event wakes us
            linger = self._live_linger()
            if linger is not None:
                woken = linger > 0 and self._wake.wait(linger)
                self._lingering = False
                if woken and not self._must_ship():
                    self._wake.clear()
                    if not self._must_ship():
                        self._wake.wait(self.flush_interval)
                return
            self._lingering = False
        self._wake.wait(self.flush_interval)

    def _must_ship(self) -> bool:
        """A full batch, flush() or close(): what is buffered ships without waiting."""
        return self._flush_requested or self._stop.is_set() or len(self._buffer) >= self.batch_size

    def _live_linger(self) -> Optional[float]:
        """Seconds until the oldest buffered event is due, when the buffer holds
        nothing but live token events; None otherwise."""
        pending = self._buffer.copy()  # atomic under the GIL, unlike iterating the deque
        if not pending or not all(capture[0] is TokenGenerated for capture in pending):
            return None
        return max(0.0, (pending[0][3] + self._live_flush_ns - _time_ns()) / 1e9)

    def _claim(self) -> _Batch:
        """Move up to ``batch_size`` captures out of the buffer into a batch.

        Only pops happen under the lock, so a caller counting a drop never
        waits for the worker's encoding. The batch is registered before the
        lock is released, so flush() never sees the events in neither place.
        """
        with self._idle:
            self._losses.buffered(len(self._buffer))
            captures = [self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))]
            self._owed -= len(captures)
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
        size = reports = too_large = 0
        build = self._builder.build
        captures = batch.items
        for index, capture in enumerate(captures):
            if size >= _MAX_BATCH_BYTES:
                with self._idle:
                    self._buffer.extendleft(reversed(captures[index:]))
                    self._owed += len(captures) - index
                break
            try:
                route, payload = build(capture)
            except TooLarge:
                too_large += 1
                continue
            except ValidationError as exc:
                self._losses.invalid(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a bad event is counted, never fatal
                self._losses.invalid(exc)
                continue
            if route is TO_REPORT:
                reports += 1
            items.append((route, payload))
            size += len(payload)
        self._losses.drop("too_large", too_large)
        with self._idle:
            batch.items = items
            batch.reports = reports
            batch.prepared = True

    def _prepare_next(self) -> None:
        if self._staged is None and self._due_now():
            self._prepare(self._claim())

    def _ship_one(self) -> bool:
        batch = self._inflight
        if batch is None:
            batch = self._claim()
        if not batch.prepared:
            self._prepare(batch)
        if batch.items:
            try:
                self._shipper.ship(batch.token, batch.items, self._prepare_next)
            except ShipFailed as exc:
                self._mark_down(exc)
                if not isinstance(exc, RedisRefused):
                    return False
                # Redis answered but refused (OOM, READONLY, NOPERM): retrying forever would
                # wedge the pipeline, so give the batch a few tries and then count it.
                batch.refusals += 1
                if batch.refusals < _REFUSALS_BEFORE_DROP:
                    return False
                self._losses.drop(exc.reason, len(batch.items))
                self._done()
                return False
            # Client reports are the emitter's own, not the host's events.
            self._losses.delivered(len(batch.items) - batch.reports)
        self._done()
        if self.connected is not True:
            if self.connected is False:
                log.info("telemetry redis reachable again; shipping buffered events")
                self._losses.reconnected()
            self.connected = True
        return True

    def _done(self) -> None:
        with self._idle:
            self._inflight, self._staged = self._staged, None
            self._idle.notify_all()

    def _mark_down(self, exc: ShipFailed) -> None:
        self.last_error = str(exc)
        if self.connected is not False:
            log.warning("telemetry redis unavailable, buffering events: %s", self.last_error)
        self.connected = False
