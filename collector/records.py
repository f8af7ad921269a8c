"""What the daemon hands to sinks and alert rules: one decoded stream entry."""

from __future__ import annotations

from typing import Literal

import msgspec

from emitters.events import Event

StreamKind = Literal["events", "errors"]


class Record(msgspec.Struct, frozen=True, gc=False):
    """A validated event plus where it came from in Redis.

    Untracked by the cycle collector (``gc=False``): one is made per event, and
    nothing it holds can lead back to it.

    ``stream`` is the logical stream (``events`` or ``errors``), ``stream_id``
    the Redis entry id (``1700000000000-0``), ``raw`` the original msgpack
    payload (kept for dead-lettering without re-encoding).
    """

    stream: StreamKind
    stream_id: str
    event: Event
    raw: bytes
    skip: tuple[str, ...] = ()  # sinks that already accepted it (a dead letter replayed to the others)


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``1700000000000-3``) as a comparable (ms, seq) pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
