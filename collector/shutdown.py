"""Warm and cold stops on SIGTERM/SIGINT, shared by ``run`` and ``demo``.

The first signal asks for a warm stop (finish and ack the batches in flight,
flush, exit within the deadline); a second one, or the hard deadline passing,
exits at once with the unacked entries left pending in Redis (rq's warm and
cold shutdown, plus a deadline).
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Callable, Optional

__all__ = ["StopSignals"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Installs the handlers for the life of a ``with`` block, or from :meth:`install` to :meth:`restore`.

    ``warm`` runs on the first signal and must only set flags (it runs inside
    the signal handler); ``deadline`` seconds later the process exits with
    status 1 unless it has ended. ``before_exit`` runs right before a cold
    exit (e.g. to terminate a child redis-server). ``name`` prefixes the one
    line written to stderr.
    """

    def __init__(
        self,
        warm: Callable[[], None],
        *,
        name: str,
        deadline: Optional[float] = None,
        before_exit: Optional[Callable[[], None]] = None,
    ) -> None:
        self._warm = warm
        self._name = name.encode()
        self._deadline = deadline
        self._before_exit = before_exit
        self._previous: dict[int, Any] = {}
        self.requested = threading.Event()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may own signals; Ctrl-C then stays Python's
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "StopSignals":
        self.install()
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.restore()

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested.is_set():
            self._cold_exit(128 + signum, b"second signal")
        self.requested.set()
        self._warm()
        if self._deadline is not None:
            timer = threading.Timer(self._deadline, self._cold_exit, args=(1, b"shutdown deadline passed"))
            timer.daemon = True
            timer.start()

    def _cold_exit(self, code: int, why: bytes) -> None:
        # os.write, not the logger: a signal may land while the main thread holds its lock.
        os.write(2, self._name + b": " + why + b"; exiting now, unacked entries stay pending\n")
        if self._before_exit is not None:
            self._before_exit()
        os._exit(code)
