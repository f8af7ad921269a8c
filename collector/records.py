"""What the daemon hands to sinks and alert rules: one decoded stream entry."""

from __future__ import annotations

from typing import Literal

import msgspec

from emitters.events import Event

StreamKind = Literal["events", "errors"]


class Record(msgspec.Struct, frozen=True):
    """A validated event plus where it came from in Redis.

    ``stream`` is the logical stream (``events`` or ``errors``), ``stream_id``
    the Redis entry id (``1700000000000-0``), ``raw`` the original msgpack
    payload (kept for dead-lettering without re-encoding).
    """

    stream: StreamKind
    stream_id: str
    event: Event
    raw: bytes
