"""The daemon's timers: when each chore is due, and running the ones that are.

The loop runs chores on timers rather than threads: the due ones before each
read, and inside its waits (``reading=False``) only those that read nothing
new, so a collector waiting on a sink or on Redis still beats, ticks its
alerts and pings the watchdog. Claiming is timed here too; the loop does the
claim itself, when :meth:`Timers.claim_due` says so.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

import redis
import structlog

from collector.config import CollectorConfig
from collector.housekeeping import Housekeeping
from collector.pacing import Counters
from collector.refusals import refusal
from collector.sdnotify import SystemdNotifier

if TYPE_CHECKING:
    from collector.alerts.stage import AlertStage

__all__ = ["Timers"]

log = structlog.get_logger("collector.daemon")


class Timers:
    """``beat`` writes the heartbeat; ``lock`` serializes it with the keepalive thread's beats."""

    def __init__(
        self,
        settings: CollectorConfig,
        *,
        chores: Housekeeping,
        notifier: SystemdNotifier,
        counters: Counters,
        alert_engine: Optional["AlertStage"],
        status: Callable[[], str],
        beat: Callable[[], None],
        lock: threading.Lock,
    ) -> None:
        self._settings = settings
        self._chores = chores
        self._notifier = notifier
        self._counters = counters
        self._alert_engine = alert_engine
        self._status = status
        self._beat = beat
        self._lock = lock
        # Claiming runs often enough that an idle entry waits at most ~1.5x claim_idle.
        self._claim_every = min(max(settings.claim_idle / 2, 0.05), 30.0)
        now = time.monotonic()
        self._due: dict[str, float] = {
            "heartbeat": now,
            "claim": now,
            "stats": now + settings.stats_interval,
            "trim": now + min(settings.trim_interval, 10.0),
        }
        if notifier.watchdog_interval:
            self._due["watchdog"] = now
        if alert_engine is not None:
            self._due["alerts"] = now + 1.0

    def until_next(self, now: float) -> float:
        """Seconds until the next chore (or claim) is due; 0 or less when one is."""
        return min(self._due.values()) - now

    def claim_due(self, now: float) -> bool:
        return now >= self._due["claim"]

    def claimed(self, now: float, *, more: bool) -> None:
        """A claim scan ran: keep scanning right away while XAUTOCLAIM has more of the pending list."""
        self._due["claim"] = now if more else now + self._claim_every

    def run_due(self, *, reading: bool) -> None:
        """Timed chores. Outside ``reading`` (inside a wait) only the ones that read nothing new."""
        now = time.monotonic()
        due = self._due
        if "watchdog" in due and now >= due["watchdog"]:
            self._notifier.watchdog()
            due["watchdog"] = now + self._notifier.watchdog_interval  # type: ignore[operator]
        if now >= due["heartbeat"]:
            due["heartbeat"] = now + self._settings.heartbeat_interval
            with self._lock:
                self._guarded(self._beat, quiet=not reading)
        if self._chores.trim_soon:  # the lag check (by the loop or the keepalive thread) saw a crowded stream
            due["trim"] = min(due["trim"], now)
        if now >= due["stats"]:
            due["stats"] = now + self._settings.stats_interval
            log.info("collector_stats", status=self._status(), lag=dict(self._chores.lag), **self._counters.as_dict())
        if self._alert_engine is not None and now >= due["alerts"]:
            due["alerts"] = now + 1.0
            self._alert_engine.tick(time.time())
        if reading and now >= due["trim"]:
            due["trim"] = now + self._settings.trim_interval
            self._guarded(self._chores.trim, quiet=False)
            self._guarded(self._chores.remove_idle_consumers, quiet=False)

    def beat_while_blocked(self) -> None:
        """From the keepalive thread, while a sink call holds the loop (see collector/keepalive.py)."""
        self._guarded(self._beat, quiet=True)
        if self._notifier.watchdog_interval:
            self._notifier.watchdog()

    @staticmethod
    def _guarded(chore: Callable[[], object], *, quiet: bool) -> None:
        """Inside a wait Redis may be the thing that is down: do not fail the wait on it.

        A refused write (a heartbeat under OOM) skips the chore in any case: the
        delivery path meets the same refusal and reports it.
        """
        try:
            chore()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not quiet:
                raise
            log.debug("housekeeping_skipped", chore=getattr(chore, "__name__", repr(chore)), error=str(exc))
        except redis.ResponseError as exc:
            code = refusal(exc)
            if code is None:
                raise
            log.warning("housekeeping_refused", chore=getattr(chore, "__name__", repr(chore)), refusal=code, error=str(exc))
