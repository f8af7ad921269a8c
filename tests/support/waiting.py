"""Waiting for something a real process or thread does, without sleeping blind."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; generous, since the test machine is shared."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.02)
