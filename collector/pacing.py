"""The daemon's shared bookkeeping: retry pacing and what it did since it started."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

__all__ = ["Backoff", "Counters", "text"]


class Backoff:
    """Capped exponential backoff with full jitter; :meth:`reset` after a success."""

    def __init__(self, initial: float, cap: float) -> None:
        if initial <= 0 or cap < initial:
            raise ValueError(f"backoff: need 0 < initial <= cap, got {initial}, {cap}")
        self.initial = initial
        self.cap = cap
        self.attempts = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


@dataclass
class Counters:
    """What the daemon did since it started; logged and put in the heartbeat."""

    read: int = 0
    written: int = 0
    acked: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    lost: int = 0  # trimmed from the stream while pending: gone before we could read them
    reconnects: int = 0
    client_dropped: int = 0  # drops engines reported in client.report events (collector.clientreports)
    refusals: int = 0  # writes Redis refused (OOM, READONLY, ...), each retried later
    sink_failures: int = 0  # writes a sink refused for now (unavailable or credentials); retried

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def text(value: bytes | str | None) -> Optional[str]:
    """A name from a Redis reply, bytes or str depending on the connection's decoding."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
