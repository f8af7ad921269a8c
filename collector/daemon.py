"""The collector daemon: Redis Streams consumer group -> sinks, at least once.

One thread runs the loop; sinks write on their own threads:

1. read (:mod:`collector.reading`): one ``XREADGROUP`` over both streams (errors
   listed first, so they are handled first), or an ``XAUTOCLAIM`` of entries
   other consumers left idle longer than ``claim_idle``. On start and after
   every reconnect the consumer's own pending entries (ID ``0``) are read
   before new ones (``>``). Entries are decoded and validated; undecodable,
   invalid, oversized and over-delivered ones become dead letters.
2. deliver (:mod:`collector.delivery`): the batch goes to every sink at once,
   and while a backlog drains (the last read was full) the next batch is read
   and submitted too, up to ``batches_in_flight`` batches. The oldest is
   finished first: every sink accepted it (retrying only the ones that have
   not, with capped jittered backoff), its dead letters are written, then
   every entry is ``XACK``ed.

Nothing is acked before every sink accepted it, so a crash anywhere means
redelivery, never loss, and what a crash delivers twice is bounded by the
batches in flight. Before each read the loop does its housekeeping on
timers (:mod:`collector.timers`): heartbeat hash, lag check against MAXLEN,
claiming (the window is drained first, so no entry of ours is in flight),
``XTRIM MINID`` retention, removal of dead consumers that have nothing
pending, counters in the log, systemd watchdog pings.

Redis going away never ends the process: the loop waits with capped jittered
backoff and carries on with the batches it had in hand, then rereads its
pending list. ``request_stop()`` (SIGTERM) stops reading, finishes the batches
in flight, closes the sinks and returns within ``shutdown_timeout``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import redis
import structlog

from collector.config import Config
from collector.delivery import Delivery, SinkTrouble
from collector.housekeeping import Housekeeping
from collector.keepalive import KeepAlive
from collector.loss import LossBook
from collector.pacing import Backoff, Counters
from collector.reading import Batch, Reader
from collector.records import StreamKind
from collector.redisconn import connect, redact_url
from collector.refusals import REFUSAL_ACTIONS, refusal
from collector.sdnotify import SystemdNotifier
from collector.sinks import Sink, SinkError
from collector.sinks.configured import build_sinks, consumer_name
from collector.timers import Timers
from emitters.streams import stream_names

if TYPE_CHECKING:
    from collector.alerts.stage import AlertStage  # issue-14: the alert stage, wired like a sink

__all__ = ["Collector", "Backoff", "Counters", "build_sinks", "consumer_name", "Status"]

log = structlog.get_logger("collector.daemon")

Status = Literal["running", "backpressure", "paused_auth", "refused", "stopping"]
RUNNING: Status = "running"
BACKPRESSURE: Status = "backpressure"
PAUSED_AUTH: Status = "paused_auth"
REFUSED: Status = "refused"  # Redis answers writes with OOM, READONLY, NOPERM, MISCONF
STOPPING: Status = "stopping"

# The collector's waits for Redis to come back (or accept writes again) stop growing here,
# whatever max_backoff says: emitters flush their backlog within seconds of Redis returning,
# and the group must be there to receive it.
_REATTACH_CAP = 2.0


class _DeadlinePassed(Exception):
    """Stopping, and the shutdown deadline has come: leave the rest pending."""


class Collector:
    """Reads ``{prefix}:errors`` and ``{prefix}:events`` as one consumer of ``group``.

    ``sinks`` defaults to :func:`build_sinks`; ``alert_engine`` (the alert stage, optional, see
    :func:`collector.pipeline.build_collector`) is written every delivered batch, sees
    the lag and a tick once a second; ``notifier`` defaults to systemd's from
    the environment; ``client`` to a connection to ``config.redis.url``.
    :meth:`run` blocks until :meth:`request_stop` (thread- and signal-safe)
    has been served.
    """

    def __init__(
        self,
        config: Config,
        *,
        sinks: Optional[Sequence[Sink]] = None,
        alert_engine: Optional["AlertStage"] = None,
        notifier: Optional[SystemdNotifier] = None,
        client: Optional[redis.Redis] = None,
    ) -> None:
        settings = config.collector
        if client is None and config.redis.url is None:
            raise ValueError("redis.url: the collector needs a Redis URL (start the embedded one first)")
        self.config = config
        self.settings = settings
        self.names = stream_names(config.redis.stream_prefix)
        self.group = settings.group
        self.consumer = consumer_name(config)
        # Errors first: XREADGROUP answers in this order, and the batch is handled in it.
        self.streams: tuple[tuple[StreamKind, str], ...] = (
            ("errors", self.names.errors),
            ("events", self.names.events),
        )
        self.sinks: list[Sink] = list(build_sinks(config) if sinks is None else sinks)
        self.alert_engine = alert_engine
        self.notifier = SystemdNotifier.from_env() if notifier is None else notifier
        self.counters = Counters()
        self.status: Status = RUNNING
        self.stopped = threading.Event()  # set when run() has returned
        self._stop = threading.Event()
        self._deadline: Optional[float] = None
        self._stop_noticed = False
        self._more_waiting = False  # the last read of new entries was full: read ahead
        self._redis_down = False
        self._refusal: Optional[str] = None
        self._keepalive = KeepAlive(
            settings.heartbeat_interval, lambda: self.timers.beat_while_blocked(), self._sink_stalled
        )
        self._attached = False  # the group was there (or made) once: missing later means Redis lost it
        self._refusal_backoff = Backoff(0.1, min(settings.max_backoff, _REATTACH_CAP))
        self._redis = client or connect(
            config.redis.url,  # type: ignore[arg-type]  # checked above
            # A blocking XREADGROUP must not look like a dead socket.
            socket_timeout=settings.block_ms / 1000 + 10.0,
        )
        self.losses = LossBook(
            self._redis, self.names, self.group, kind_of={key: kind for kind, key in self.streams}.get,
            alert_engine=alert_engine,
        )  # fmt: skip
        self.chores = Housekeeping(
            self._redis, self.names, self.streams, stream_prefix=config.redis.stream_prefix, group=self.group, consumer=self.consumer, settings=settings,
            counters=self.counters, losses=self.losses, alert_engine=alert_engine,
            describe=lambda: {"status": self.status, "refusal": self._refusal or ""},
        )  # fmt: skip
        self.timers = Timers(
            settings, chores=self.chores, notifier=self.notifier, counters=self.counters, alert_engine=alert_engine,
            status=lambda: self.status, beat=self._heartbeat, lock=self._keepalive.lock,
        )  # fmt: skip
        self.reader = Reader(
            self._redis, self.streams, group=self.group, consumer=self.consumer, settings=settings,
            counters=self.counters, losses=self.losses,
        )  # fmt: skip
        self.delivery = Delivery(
            self.sinks, client=self._redis, names=self.names, group=self.group, consumer=self.consumer,
            settings=settings, counters=self.counters, keepalive=self._keepalive, alert_engine=alert_engine,
            trouble=SinkTrouble(self._set_status, self._sinks_recovered, self._pause),
        )  # fmt: skip

    # -- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop reading, finish the batches in flight, then return from :meth:`run`.

        Only sets flags, so it is safe from a signal handler (no logging here:
        the handler may interrupt the main thread inside the log handler).
        """
        if self._deadline is None:
            self._deadline = time.monotonic() + self.settings.shutdown_timeout
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until stopped. Returns normally after a requested stop."""
        log.info(
            "collector_starting",
            consumer=self.consumer,
            group=self.group,
            streams=[key for _, key in self.streams],
            redis=redact_url(self.config.redis.url or ""),
            sinks=[sink.name for sink in self.sinks],
            batch_size=self.settings.batch_size,
        )
        try:
            if self._connect():
                self.notifier.ready(self._status_text())
                log.info("collector_ready", consumer=self.consumer, group=self.group)
                self._loop()
        finally:
            self._shutdown()
            self.stopped.set()

    def _loop(self) -> None:
        while True:
            try:
                if not self.delivery.window:
                    if self._stop.is_set():
                        self.delivery.acks.flush()
                        self._notice_stop()
                        return
                    self.timers.run_due(reading=True)
                    self._submit(self._next_batch())
                elif self._may_read_ahead():
                    self.timers.run_due(reading=True)
                    self._submit(self.reader.read(None, before=self.delivery.acks))
                    continue
                else:
                    self.delivery.finish_oldest()
                if self._refusal is not None:
                    self._accepted_again()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not self._reconnect(exc):
                    return
            except redis.ResponseError as exc:
                code = refusal(exc)
                if code is not None:
                    if not self._refused(code, exc):
                        return
                    continue
                if not str(exc).startswith("NOGROUP"):
                    raise
                # The stream or the group vanished (a Redis without persistence restarted, or
                # someone deleted it): recreate it and read our pending list again.
                log.warning("consumer_group_missing", error=str(exc))
                self._ensure_groups()
            except _DeadlinePassed:
                return

    def _refused(self, code: str, error: Exception) -> bool:
        """Redis refused a write: keep the batch, wait, retry; False when stopping ran out of time."""
        delay = self._refusal_backoff.next()
        if self._refusal != code:
            log.error(
                "redis_refused_write",
                refusal=code,
                error=str(error),
                in_flight=self.delivery.entries(),
                action=REFUSAL_ACTIONS[code] + "; entries stay pending in Redis meanwhile",
            )
        self._refusal = code
        self.counters.refusals += 1
        self._set_status(REFUSED)
        try:
            self._pause(delay)
        except _DeadlinePassed:
            return False
        return True

    def _accepted_again(self) -> None:
        log.info("redis_accepting_writes", refusal=self._refusal, refusals=self.counters.refusals)
        self._refusal = None
        self._refusal_backoff.reset()
        self._set_status(STOPPING if self._stop_noticed else RUNNING)

    def _notice_stop(self) -> None:
        if self._stop_noticed:
            return
        self._stop_noticed = True
        self._set_status(STOPPING)
        self.notifier.stopping(self._status_text())
        log.info(
            "collector_stopping",
            in_flight=self.delivery.entries(),
            deadline_s=float(self.settings.shutdown_timeout),
        )

    def _shutdown(self) -> None:
        self._notice_stop()
        if not self._redis_down:
            try:
                # Batches the sinks took but whose acks were still owed (a deadline ended the loop):
                # ack them now rather than have them delivered twice after the restart.
                self.delivery.acks.flush()
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                log.warning("shutdown_acks_not_sent", error=str(exc), note="those entries are delivered again")
        if self.delivery.entries():
            log.warning(
                "shutdown_left_batch_pending",
                entries=self.delivery.entries(),
                note="not acked: another collector claims them, or this one rereads them on restart",
            )
        self.delivery.close(self._deadline)
        for sink in self.sinks:
            try:
                sink.close()
            except SinkError as exc:
                log.error("sink_close_failed", sink=sink.name, error=str(exc))
        if self.alert_engine is not None:
            self.alert_engine.close()
        self._keepalive.close()
        if not self._redis_down:  # otherwise a connect timeout would eat into the deadline; it expires anyway
            try:
                self.chores.remove_heartbeat()
            except (redis.ConnectionError, redis.TimeoutError):
                pass
        log.info("collector_stopped", consumer=self.consumer, **self.counters.as_dict())
        self._redis.close()

    # -- connection -----------------------------------------------------------------------------

    def _ensure_groups(self) -> None:
        """Join the group (made on both streams when missing), then reread our pending list."""
        created = self.reader.attach()
        if created and self._attached:
            self.losses.group_vanished(created, self.chores.lag)
        self._attached = True

    def _connect(self) -> bool:
        backoff = Backoff(0.1, min(self.settings.max_backoff, _REATTACH_CAP))
        while True:
            try:
                self._ensure_groups()
                self._redis_down = False
                return True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self._redis_down = True
                if self._stop.is_set():
                    return False
                delay = backoff.next()
                log.warning("redis_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                self._stop.wait(delay)
            except redis.ResponseError as exc:
                code = refusal(exc)
                if code is None:
                    raise
                if self._stop.is_set() or not self._refused(code, exc):
                    return False

    def _reconnect(self, error: Exception) -> bool:
        """Wait for Redis with capped backoff; False when stopping ran out of time."""
        self.counters.reconnects += 1
        self._redis_down = True
        log.warning("redis_connection_lost", error=str(error), in_flight=self.delivery.entries())
        backoff = Backoff(0.1, min(self.settings.max_backoff, _REATTACH_CAP))
        while True:
            try:
                self._pause(backoff.next())
            except _DeadlinePassed:
                return False
            try:
                self._ensure_groups()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis_reconnect_failed", error=str(exc), attempt=backoff.attempts)
                continue
            except redis.ResponseError as exc:
                if refusal(exc) is None:
                    raise
                log.warning("redis_reconnect_refused", error=str(exc), attempt=backoff.attempts)
                continue
            self._redis_down = False
            log.info("redis_reconnected", attempts=backoff.attempts)
            return True

    # -- reading ----------------------------------------------------------------------------------

    def _next_batch(self) -> Optional[Batch]:
        """With nothing in flight: claim when due, else our pending list or new entries."""
        now = time.monotonic()
        if self.timers.claim_due(now):
            self.delivery.acks.flush()
            batch, more = self.reader.claim()
            self.timers.claimed(now, more=more)
            if batch is not None:
                return batch
        block: Optional[int] = None
        if not self.reader.in_history:
            until_due = self.timers.until_next(time.monotonic())
            block = max(1, min(self.settings.block_ms, int(until_due * 1000)))
        return self.reader.read(block, before=self.delivery.acks)

    def _may_read_ahead(self) -> bool:
        """A backlog is certain (the last read was full) and a batch more may be in flight.

        Claims and rereads of our pending list wait for an empty window: then no
        entry of ours is in flight to be claimed or read twice.
        """
        return (
            self._more_waiting
            and self.delivery.room
            and not self._stop.is_set()
            and not self.reader.in_history
            and not self.timers.claim_due(time.monotonic())
        )

    def _submit(self, batch: Optional[Batch]) -> None:
        self._more_waiting = batch is not None and batch.full
        if batch is not None:
            self.delivery.submit(batch)

    # -- waiting ----------------------------------------------------------------------------------

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, keeping heartbeat and watchdog alive.

        A stop request cuts a wait short once (one more try at once); while
        stopping, waits are bounded by the shutdown deadline and
        :class:`_DeadlinePassed` ends them.
        """
        stopping_before = self._stop.is_set()
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if self._stop.is_set():
                self._notice_stop()
                if not stopping_before:
                    return  # one more try right away: the batch may still make it
                assert self._deadline is not None
                if now >= self._deadline:
                    raise _DeadlinePassed()
                end = min(end, self._deadline)
            if now >= end:
                return
            self.timers.run_due(reading=False)
            step = min(end - now, self.timers.until_next(now))
            # While stopping nothing sets an event we could wait on; `stopped` is set only by
            # run() returning, so this is a plain bounded wait.
            waiter = self.stopped if self._stop.is_set() else self._stop
            waiter.wait(max(step, 0.01))

    # -- sinks ------------------------------------------------------------------------------------

    def _sinks_recovered(self) -> None:
        if self.status in (BACKPRESSURE, PAUSED_AUTH):
            log.info("sinks_recovered")
            self._set_status(STOPPING if self._stop_noticed else RUNNING)

    def _sink_stalled(self, sink: str) -> None:
        log.warning("sink_slow", sink=sink, blocked_s=self.settings.heartbeat_interval, note="beating meanwhile")
        self._set_status(BACKPRESSURE)

    def _heartbeat(self) -> None:
        self.chores.heartbeat()
        self.notifier.status(self._status_text())

    # -- status -----------------------------------------------------------------------------------

    def _set_status(self, status: Status) -> None:
        if status != self.status:
            self.status = status
            self.notifier.status(self._status_text())

    def _status_text(self) -> str:
        counters = self.counters
        return (
            f"{self.status}: read {counters.read}, written {counters.written}, "
            f"dead-lettered {counters.dead_lettered}, claimed {counters.claimed}"
        )
