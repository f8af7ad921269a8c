"""Metric points per export interval: aggregated per batch, persisted, exported on a timer.

:meth:`MetricPipeline.add` folds a batch's metric events into the current
interval; :meth:`MetricPipeline.persist` saves the state before the daemon
acks the batch (see :mod:`collector.otlp.metric_store` for why that is as good
as acking only exported entries). A background thread closes the interval
every ``interval`` seconds, exports the closed intervals oldest first, one
request each (one point per series per interval), and forgets an interval
only once the backend accepted it (or refused it for good: counted, logged).
It also adopts the unexported state of collectors that died.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional, Sequence

import msgspec
import redis
import structlog
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector.otlp.intervals import Interval, MetricState, decode_state, encode_state, interval_request
from collector.otlp.metric_store import MetricStore
from collector.otlp.metrics import Observation, is_metric_event, observations
from collector.otlp.spans import StartTimes
from collector.otlp.transport import Failed, Rejected, TooLarge, Transport
from collector.otlp.translate import TranslateOptions
from collector.sinks import SinkAuthError, SinkUnavailable
from emitters.events import Event

__all__ = ["MetricPipeline", "MetricStats"]

log = structlog.get_logger("collector.otlp")

_BACKOFF_CAP = 30.0
_CLOSE_DEADLINE = 5.0


class MetricStats(msgspec.Struct):
    intervals_exported: int = 0
    points_exported: int = 0
    points_dropped: int = 0  # refused for good by the backend: counted, logged
    failures: int = 0
    adopted: int = 0  # states of dead collectors taken over


class MetricPipeline:
    def __init__(
        self,
        *,
        instance: str,
        options: TranslateOptions,
        starts: StartTimes,
        transport: Transport,
        store: MetricStore,
        resource: Callable[[tuple[str, str, int]], Resource],
        interval: float,
        temporality: str,
        max_attempts: int,
        schema_url: str,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.instance = instance
        self.stats = MetricStats()
        self._options = options
        self._starts = starts
        self._transport = transport
        self._store = store
        self._resource = resource
        self._interval = interval
        self._temporality = temporality
        self._max_attempts = max_attempts
        self._schema_url = schema_url
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._states: dict[str, MetricState] = {}
        self._attempts: dict[int, int] = {}  # id(interval) -> failed tries
        self._adopt()
        if instance not in self._states:
            self._states[instance] = MetricState.new(instance, temporality, clock())  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)
        self._thread.start()

    # -- the daemon's thread ----------------------------------------------------------------------

    def add(self, events: Sequence[Event]) -> int:
        """Fold the batch's metric events into the current interval; returns how many contributed."""
        found: list[Observation] = []
        contributed = 0
        for event in events:
            if is_metric_event(event):
                contributed += 1
                found.extend(observations(event, self._options, self._starts))
        with self._lock:
            self._states[self.instance].observe(found)
        return contributed

    def persist(self) -> None:
        """Save this collector's state; raises SinkUnavailable when Redis cannot take it."""
        with self._lock:
            try:
                self._save(self.instance)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                raise SinkUnavailable(f"OTLP metrics: cannot save the interval's aggregation to Redis: {exc}") from None

    def close(self) -> None:
        """Close the current interval and export what is pending, briefly; the rest stays in Redis."""
        self._stop.set()
        self._thread.join(timeout=self._interval + _CLOSE_DEADLINE + 30)
        with self._lock:
            for state in self._states.values():
                if state.current.series:
                    state.roll(self._clock())
        deadline = time.monotonic() + _CLOSE_DEADLINE
        try:
            while time.monotonic() < deadline and self._export_one():
                pass
        except (SinkUnavailable, SinkAuthError) as exc:
            # Kept in Redis: this collector under the same name, or any other once its heartbeat expires, exports it.
            log.warning("otlp_metrics_left_for_later", error=str(exc))
        with self._lock:
            for origin in list(self._states):
                self._guarded_save(origin)

    # -- the exporter thread ----------------------------------------------------------------------

    def _run(self) -> None:
        due = time.monotonic() + self._interval
        failures = 0
        while not self._stop.wait(max(0.0, due - time.monotonic()) if not failures else self._backoff(failures)):
            now = time.monotonic()
            if now >= due:
                # On the grid; after a long stall one roll, not one per missed interval.
                due = due + self._interval if due + self._interval > now else now + self._interval
                self._roll()
            try:
                while self._export_one():
                    failures = 0
            except (SinkUnavailable, SinkAuthError) as exc:
                failures += 1
                self.stats.failures += 1
                log.warning("otlp_metrics_export_failed", error=str(exc), attempt=failures)

    def _backoff(self, failures: int) -> float:
        return random.uniform(0, min(_BACKOFF_CAP, 0.5 * 2**failures))

    def _roll(self) -> None:
        now = self._clock()
        with self._lock:
            self._states[self.instance].roll(now)
            self._guarded_save(self.instance)
        self._adopt()

    def _adopt(self) -> None:
        try:
            found = self._store.load()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("otlp_metrics_adopt_skipped", error=str(exc))
            return
        with self._lock:
            for origin, data in found.items():
                if origin in self._states:
                    continue
                state = decode_state(data)
                if origin != self.instance:
                    state.roll(self._clock())  # its collector is gone: nothing more comes
                    self.stats.adopted += 1
                    log.info("otlp_metrics_adopted", origin=origin, intervals=len(state.closed))
                self._states[origin] = state

    def _next(self) -> Optional[tuple[MetricState, Interval]]:
        with self._lock:
            for state in self._states.values():
                if state.closed:
                    return state, state.closed[0]
        return None

    def _export_one(self) -> bool:
        """Export the oldest closed interval; False when none is left. Raises on transient failure."""
        found = self._next()
        if found is None:
            return False
        state, interval = found
        request = interval_request(
            state, interval, self._resource, self._options.scope_name, self._options.scope_version, self._schema_url
        )
        points = len(interval.series)
        try:
            result = self._transport.export("metrics", request.SerializeToString())
        except TooLarge as exc:
            self._split(state, interval, exc.reason)
            return True
        except Rejected as exc:
            self._forget(state, interval, dropped=exc.reason)
            return True
        except Failed as exc:
            tries = self._attempts.get(id(interval), 0) + 1
            self._attempts[id(interval)] = tries
            if tries >= self._max_attempts:
                self._forget(state, interval, dropped=f"{exc.reason} (after {tries} tries)")
                return True
            raise SinkUnavailable(exc.reason, retry_after=exc.retry_after) from None
        if result.rejected or result.message:
            log.warning("otlp_partial_success", signal="metrics", rejected=result.rejected, backend_message=result.message)
        self.stats.intervals_exported += 1
        self.stats.points_exported += points - result.rejected
        self.stats.points_dropped += result.rejected
        self._forget(state, interval)
        return True

    def _split(self, state: MetricState, interval: Interval, reason: str) -> None:
        if len(interval.series) < 2:
            self._forget(state, interval, dropped=reason)
            return
        middle = len(interval.series) // 2
        halves = [
            Interval(interval.start_ns, interval.end_ns, interval.series[:middle]),
            Interval(interval.start_ns, interval.end_ns, interval.series[middle:]),
        ]
        with self._lock:
            index = state.closed.index(interval)
            state.closed[index : index + 1] = halves
            self._guarded_save(state.origin)

    def _forget(self, state: MetricState, interval: Interval, *, dropped: Optional[str] = None) -> None:
        if dropped is not None:
            self.stats.points_dropped += len(interval.series)
            log.error("otlp_metrics_dropped", points=len(interval.series), reason=dropped)
        self._attempts.pop(id(interval), None)
        with self._lock:
            state.closed.remove(interval)
            if state.origin != self.instance and state.empty:
                del self._states[state.origin]
            self._guarded_save(state.origin)

    # -- persistence (under the lock) -------------------------------------------------------------

    def _save(self, origin: str) -> None:
        state = self._states.get(origin)
        gone = state is None or state.empty
        self._store.save(origin, None if gone else encode_state(state))  # type: ignore[arg-type]

    def _guarded_save(self, origin: str) -> None:
        """Off the daemon's path a failed save is retried with the next one; memory is the truth meanwhile."""
        try:
            self._save(origin)
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            log.warning("otlp_metrics_save_failed", origin=origin, error=str(exc))
