"""Counts of what an emitter sent and lost, and the client reports that carry them out.

Every event the emitter does not deliver is counted here exactly once, under
one reason of :data:`emitters.events.DROP_REASONS`. The counts are readable in
``stats()`` and leave the process as ``client.report`` events (sentry-sdk's
client reports are the model): what changed since the previous report.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

from emitters.diagnostics import warn_once
from emitters.events import DROP_REASONS

__all__ = ["Losses"]


class Losses:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Fresh counts and lock (a forked child starts here: the parent's counts are the parent's)."""
        self._lock = threading.Lock()
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.sent = 0
        self.reconnects = 0
        self.high_water = 0
        self.last_invalid: Optional[str] = None
        self._reported = (dict(self.dropped), 0, 0)
        self._reported_at = time.monotonic()

    def drop(self, reason: str, count: int = 1) -> None:
        if count:
            with self._lock:
                self.dropped[reason] += count

    def invalid(self, error: BaseException, count: int = 1) -> None:
        """Count an invalid event; the first of each kind is logged with its field and rule."""
        message = _describe(error)
        with self._lock:
            self.dropped["invalid"] += count
            self.last_invalid = message
        warn_once(message, "telemetry event dropped as invalid: %s", message)

    def delivered(self, count: int) -> None:
        with self._lock:
            self.sent += count

    def buffered(self, depth: int) -> None:
        """The buffer's depth when the worker took from it (its deepest moments)."""
        if depth > self.high_water:
            self.high_water = depth

    def reconnected(self) -> None:
        with self._lock:
            self.reconnects += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "sent": self.sent,
                "dropped": dict(self.dropped),
                "buffer_high_water": self.high_water,
                "reconnects": self.reconnects,
                "last_invalid": self.last_invalid,
            }

    def report(self) -> Optional[dict[str, Any]]:
        """The fields of a ``client.report`` for what changed since the last one; None when
        nothing was dropped and no reconnect happened since."""
        with self._lock:
            dropped, sent, reconnects = self._reported
            delta = {reason: count - dropped[reason] for reason, count in self.dropped.items() if count != dropped[reason]}
            fields = {
                "dropped": delta,
                "dropped_total": sum(delta.values()),
                "sent": self.sent - sent,
                "buffer_high_water": self.high_water,
                "reconnects": self.reconnects - reconnects,
            }
            # Only losses (and the reconnects around them) make a report worth an event:
            # a healthy emitter adds nothing to the streams it feeds.
            if not (delta or fields["reconnects"]):
                return None
            now = time.monotonic()
            fields["interval_s"] = round(now - self._reported_at, 3)
            self._reported = (dict(self.dropped), self.sent, self.reconnects)
            self._reported_at = now
            self.high_water = 0  # the mark is per report interval
            return fields


def _describe(error: BaseException) -> str:
    """The error's message (its type first unless it is a contract rule); never raises."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - an exception raised by the caller's own object
        text = ""
    return text if text.startswith("Expected") else f"{type(error).__name__}: {text}"
