"""Heartbeats while the daemon's one thread is stuck in a slow sink call.

A sink write can take as long as its timeout (an OTLP export to a hanging
backend); meanwhile the loop cannot beat, and ``health`` would report a dead
collector when it is really waiting on a backend. :class:`KeepAlive` watches
from a helper thread: once a call has been blocked for one interval it
reports the stall (the daemon turns it into ``backpressure``) and beats every
interval until the call returns. Beats are serialized with the loop's own by
:attr:`KeepAlive.lock`.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

__all__ = ["KeepAlive"]


class KeepAlive:
    def __init__(self, interval: float, beat: Callable[[], None], stalled: Callable[[str], None]) -> None:
        self.interval = interval
        self.lock = threading.Lock()  # held around every heartbeat, the loop's and ours
        self._beat = beat
        self._stalled = stalled
        self._blocked: Optional[tuple[str, float]] = None  # (what, since) while the loop is in a call
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @contextmanager
    def blocked(self, what: str) -> Iterator[None]:
        """The loop is about to call something that may hang: beat for it meanwhile."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="collector-keepalive", daemon=True)
            self._thread.start()
        self._blocked = (what, time.monotonic())
        try:
            yield
        finally:
            self._blocked = None

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        reported: Optional[float] = None
        while not self._closed.wait(self.interval / 2):
            blocked = self._blocked
            if blocked is None or time.monotonic() - blocked[1] < self.interval:
                continue
            if reported != blocked[1]:
                reported = blocked[1]
                self._stalled(blocked[0])
            with self.lock:
                if self._blocked is blocked:  # still in the same call: the loop is not beating
                    self._beat()
