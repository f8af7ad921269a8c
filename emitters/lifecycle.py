"""An emitter's process hooks: fork, interpreter exit, and multiprocessing's exit.

After a fork the child must never touch what the parent's threads may have
held at that moment (the Redis client, whose ``__del__`` takes the pool's
lock; our locks; the buffer): the emitter starts over in the child. A child
flushes when it ends: at interpreter exit through ``atexit``, or, for
``multiprocessing`` children, which end with ``os._exit`` and clear the
finalizers they inherit, through a finalizer registered by multiprocessing's
own after-fork hook. What a child still holds when it ends is counted as
``fork_exit``.
"""

from __future__ import annotations

import atexit
import os
import sys
import weakref
from typing import Any, Protocol

from emitters.diagnostics import warn_once

__all__ = ["ProcessHooks"]


class _Restartable(Protocol):
    exit_timeout: float

    def _close(self, timeout: float, unsent_reason: str) -> None: ...

    def _restart_in_child(self) -> None: ...


class ProcessHooks:
    def __init__(self, emitter: _Restartable) -> None:
        # Bound to a weakref so no hook keeps a dropped Emitter alive.
        self._ref = weakref.ref(emitter)
        self._first_pid = os.getpid()
        self._multiprocessing_hooked = False
        os.register_at_fork(before=self._before_fork, after_in_child=self._after_fork_in_child)
        atexit.register(self.close_at_exit)

    def unregister(self) -> None:
        atexit.unregister(self.close_at_exit)

    def close_at_exit(self) -> None:
        emitter = self._ref()
        if emitter is None:
            return
        reason = "fork_exit" if os.getpid() != self._first_pid else "redis_unavailable"
        try:
            emitter._close(emitter.exit_timeout, reason)
        except Exception as exc:  # noqa: BLE001 - never raise out of interpreter exit
            warn_once("exit", "telemetry emitter could not close at exit: %s", exc)

    def _before_fork(self) -> None:
        if not self._multiprocessing_hooked and "multiprocessing" in sys.modules and self._ref() is not None:
            import multiprocessing.util

            multiprocessing.util.register_after_fork(self, _finalize_in_multiprocessing_child)
            self._multiprocessing_hooked = True

    def _after_fork_in_child(self) -> None:
        emitter = self._ref()
        if emitter is not None:
            emitter._restart_in_child()


def _finalize_in_multiprocessing_child(hooks: ProcessHooks) -> None:
    import multiprocessing.util

    multiprocessing.util.Finalize(hooks, _close_at_exit, args=(weakref.ref(hooks),), exitpriority=10)


def _close_at_exit(ref: "weakref.ReferenceType[Any]") -> None:
    hooks = ref()
    if hooks is not None:
        hooks.close_at_exit()
