"""Reading events for the tools: the streams (paged ``XRANGE``) and the collector's JSONL archive.

Times are the event's own ``ts``. Streams are read from a millisecond id a
little before ``--since`` (emitter clocks may run ahead of Redis) to the end
(an event can reach Redis long after it happened, e.g. from an emitter's
spool), then filtered on ``ts``.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple, Optional

import redis

from collector.archive import ArchiveStats, ArchiveStem, read_archive
from collector.tools.output import warn
from collector.tools.times import NS_PER_MS, NS_PER_S
from emitters.events import DecodeError, Event, decode
from emitters.streams import PAYLOAD_FIELD, StreamNames

__all__ = [
    "StoredEvent",
    "ReadStats",
    "paged_entries",
    "decode_entry",
    "read_stream",
    "stream_events",
    "archive_events",
]

# How far before --since the stream scan starts: emitter clocks can run ahead of Redis's.
CLOCK_SKEW_NS = 5 * 60 * NS_PER_S
PAGE_SIZE = 1000
_PAYLOAD_KEY = PAYLOAD_FIELD.encode()

Entry = tuple[bytes, dict[bytes, bytes]]


class StoredEvent(NamedTuple):
    """An event and where it was found: ``events``/``errors`` (or ``live``) and its stream id."""

    stream: str
    stream_id: Optional[str]
    event: Event


class ReadStats:
    """Entries a read skipped because they do not decode (the collector dead-letters those)."""

    def __init__(self) -> None:
        self.undecodable = 0
        self.archive = ArchiveStats()

    def report(self) -> None:
        if self.undecodable:
            warn(f"skipped {self.undecodable} stream entries that do not decode (see 'dlq list')")
        if self.archive.bad_lines:
            warn(f"skipped {self.archive.bad_lines} archive lines that do not parse")


def paged_entries(
    client: redis.Redis, key: str, *, start: str = "-", end: str = "+", reverse: bool = False
) -> Iterator[Entry]:
    """Raw entries of one stream between two ids (``(`` excludes one), ``PAGE_SIZE`` a command."""
    while True:
        if reverse:
            page = client.xrevrange(key, max=end, min=start, count=PAGE_SIZE)
        else:
            page = client.xrange(key, min=start, max=end, count=PAGE_SIZE)
        yield from page
        if len(page) < PAGE_SIZE:
            return
        last = "(" + page[-1][0].decode()
        if reverse:
            end = last
        else:
            start = last


def decode_entry(fields: dict[bytes, bytes]) -> Optional[Event]:
    payload = fields.get(_PAYLOAD_KEY)
    if payload is None:
        return None
    try:
        return decode(payload)
    except DecodeError:
        return None


def read_stream(
    client: redis.Redis,
    key: str,
    stream: str,
    *,
    start: str = "-",
    end: str = "+",
    reverse: bool = False,
    stats: Optional[ReadStats] = None,
) -> Iterator[StoredEvent]:
    """Decoded entries of one stream between two ids, paged, optionally newest first."""
    for entry_id, fields in paged_entries(client, key, start=start, end=end, reverse=reverse):
        event = decode_entry(fields)
        if event is None:
            if stats is not None:
                stats.undecodable += 1
            continue
        yield StoredEvent(stream, entry_id.decode(), event)


def _in_window(ts: int, since_ns: Optional[int], until_ns: Optional[int]) -> bool:
    return (since_ns is None or ts >= since_ns) and (until_ns is None or ts <= until_ns)


def stream_events(
    client: redis.Redis,
    names: StreamNames,
    *,
    since_ns: Optional[int] = None,
    until_ns: Optional[int] = None,
    streams: Iterable[ArchiveStem] = ("events", "errors"),
    stats: Optional[ReadStats] = None,
) -> Iterator[StoredEvent]:
    """Events of the streams whose own ``ts`` is within the window."""
    start = "-" if since_ns is None else str(max(0, since_ns - CLOCK_SKEW_NS) // NS_PER_MS)
    for stream in streams:
        for row in read_stream(client, getattr(names, stream), stream, start=start, stats=stats):
            if _in_window(row.event.ts, since_ns, until_ns):
                yield row


def archive_events(
    directory: Optional[str],
    *,
    since_ns: Optional[int] = None,
    until_ns: Optional[int] = None,
    streams: Iterable[ArchiveStem] = ("events", "errors"),
    contains: Optional[str] = None,
    stats: Optional[ReadStats] = None,
) -> Iterator[StoredEvent]:
    """Events of the JSONL archive in the window; nothing when no directory is given."""
    if directory is None:
        return
    for line in read_archive(
        directory,
        since_ns=since_ns,
        until_ns=until_ns,
        streams=streams,
        contains=contains.encode() if contains else None,
        stats=stats.archive if stats is not None else None,
    ):
        yield StoredEvent(line.stream, line.stream_id, line.event)
