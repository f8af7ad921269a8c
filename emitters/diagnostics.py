"""Warnings about the caller's input, logged once per kind so a hot loop cannot flood the log."""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["log", "warn_once"]

log = logging.getLogger("mlx_telemetry.emitter")

# Kinds are field paths and rules, a small set in practice; the cap bounds a caller
# whose messages embed ever-new values.
_MAX_KINDS = 256
_seen: set[str] = set()
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A parent thread may have held the lock at fork time; the child's copy would stay locked.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def warn_once(kind: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING the first time ``kind`` is seen in this process."""
    with _lock:
        if kind in _seen or len(_seen) >= _MAX_KINDS:
            return
        _seen.add(kind)
    log.warning(message, *args)
