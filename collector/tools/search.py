"""``telemetry-collector search``: events in a time range, from the streams and the archive."""

from __future__ import annotations

import heapq
from itertools import chain
from typing import Iterable, Optional

import click

from collector.tools.command import ToolCommand
from collector.tools.filters import EventFilter
from collector.tools.formatting import event_json, event_line
from collector.tools.options import Target, archive_option, filter_options, redis_options
from collector.tools.output import echo, echo_json, warn
from collector.tools.reading import ReadStats, StoredEvent, archive_events, stream_events
from collector.tools.times import TimeParam, check_window

__all__ = ["search", "select_rows"]

OrderKey = tuple[int, str]


def _order_key(row: StoredEvent) -> OrderKey:
    return (row.event.ts, row.event.id)


class _Kept:
    """A row in the bounded selection heap; the heap's root is the row to drop first."""

    __slots__ = ("key", "row", "newest_first")

    def __init__(self, row: StoredEvent, newest_first: bool) -> None:
        self.key = _order_key(row)
        self.row = row
        self.newest_first = newest_first

    def __lt__(self, other: "_Kept") -> bool:
        return self.key < other.key if self.newest_first else self.key > other.key


def select_rows(rows: Iterable[StoredEvent], *, limit: int, newest_first: bool) -> tuple[list[StoredEvent], bool]:
    """The first ``limit`` distinct events (by event id) in the wanted order, and whether more matched.

    Memory stays O(limit) however many rows stream past. A duplicate (the
    same event in a stream and in the archive, or written twice by an
    at-least-once redelivery) has the same (ts, id) key as its twin, so it is
    either still in the heap (skipped by id) or was already ranked out.
    ``limit=0`` keeps everything.
    """
    if limit == 0:
        unique: dict[str, StoredEvent] = {}
        for row in rows:
            unique.setdefault(row.event.id, row)
        return sorted(unique.values(), key=_order_key, reverse=newest_first), False
    heap: list[_Kept] = []
    kept_ids: set[str] = set()
    truncated = False
    for row in rows:
        if row.event.id in kept_ids:
            continue
        item = _Kept(row, newest_first)
        if len(heap) < limit:
            heapq.heappush(heap, item)
            kept_ids.add(row.event.id)
            continue
        truncated = True
        if heap[0] < item:
            dropped = heapq.heapreplace(heap, item)
            kept_ids.discard(dropped.row.event.id)
            kept_ids.add(row.event.id)
    return sorted((kept.row for kept in heap), key=_order_key, reverse=newest_first), truncated


@click.command(cls=ToolCommand)
@click.option("--since", type=TimeParam(), metavar="TIME", help="Start: a duration ago (1h, 30m, 7d) or an ISO-8601 time.")
@click.option("--until", type=TimeParam(), metavar="TIME", help="End (default now): a duration ago or an ISO-8601 time.")
@archive_option
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Show at most this many events (0: all).",
)
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@filter_options
@redis_options
def search(
    target: Target,
    event_filter: EventFilter,
    since: Optional[int],
    until: Optional[int],
    archive: Optional[str],
    limit: int,
    oldest_first: bool,
) -> None:
    """Events in a time range, newest first, from the streams and (with --archive) the JSONL files.

    Times are the events' own timestamps; ISO times without a zone are UTC.

    \b
      telemetry-collector search --since 1h --service api --severity warn
      telemetry-collector search --since 2024-05-01T10:00Z --until 2024-05-01T11:00Z --archive logs/
    """
    check_window(since, until)
    stats = ReadStats()
    client = target.connect("search")
    try:
        rows = chain(
            stream_events(client, target.names, since_ns=since, until_ns=until, stats=stats),
            archive_events(archive, since_ns=since, until_ns=until, stats=stats),
        )
        selected, truncated = select_rows(
            (row for row in rows if event_filter.matches(row.event)),
            limit=limit,
            newest_first=not oldest_first,
        )
    finally:
        client.close()
    for row in selected:
        if target.as_json:
            echo_json(event_json(row))
        else:
            echo(event_line(row))
    stats.report()
    if truncated:
        warn(f"showing {len(selected)} event(s); more match (raise --limit, or --limit 0 for all)")
