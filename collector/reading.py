"""Reading for one consumer of the group: XREADGROUP and XAUTOCLAIM replies become batches.

A :class:`Batch` holds what one read brought: the decoded records, the dead
letters (undecodable, invalid, oversized and over-delivered entries) and every
id to ack once the batch is delivered. :class:`Reader` keeps the cursors: on
start and after every reconnect the consumer's own pending entries (ID ``0``)
are read before new ones (``>``); claiming walks the other consumers' idle
entries with its own cursor per stream.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Protocol, Sequence

import redis
import structlog

from collector.config import CollectorConfig
from collector.consumer import RawEntry, decode_entries
from collector.deadletter import DeadLetter
from collector.loss import LossBook
from collector.pacing import Counters, text
from collector.records import Record, StreamKind

__all__ = ["Batch", "Prelude", "Reader"]

log = structlog.get_logger("collector.daemon")


@dataclass
class Batch:
    """Entries in hand: kept across sink retries and Redis reconnects until acked."""

    records: list[Record] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    ack: dict[str, list[bytes]] = field(default_factory=dict)
    accepted: set[int] = field(default_factory=set)  # indexes of sinks that took the records
    writes: dict[int, Future[None]] = field(default_factory=dict)  # sink index -> its write in progress
    # (stream, id) -> (record, "sink: reason" of each sink that rejected it); dead letters once all sinks
    # are done. Keyed by both: the events and errors streams hand out the same ids in the same millisecond.
    rejections: dict[tuple[str, str], tuple[Record, list[str]]] = field(default_factory=dict)
    rejected: int = 0
    delivered: bool = False  # sinks done and alerts observed
    full: bool = False  # a read of new entries that got all it asked for: more are waiting

    def size(self) -> int:
        return sum(map(len, self.ack.values()))


class Prelude(Protocol):
    """Commands that ride in front of a read."""

    def queue(self, pipe: Any) -> int:
        """Add them to ``pipe``; how many were added."""

    def sent(self, replies: Sequence[Any]) -> None:
        """Their replies, once the round trip is back."""


def _raw(response: Any, **options: Any) -> Any:
    return response


class Reader:
    """Cursors and reads of ``streams`` (errors first: a batch is handled in this order)."""

    def __init__(
        self,
        client: redis.Redis,
        streams: tuple[tuple[StreamKind, str], ...],
        *,
        group: str,
        consumer: str,
        settings: CollectorConfig,
        counters: Counters,
        losses: LossBook,
    ) -> None:
        self._redis = client
        # Stream replies stay as Redis sent them: entries as flat field lists, no dicts per entry.
        client.set_response_callback("XREADGROUP", _raw)
        client.set_response_callback("XAUTOCLAIM", _raw)
        self.streams = streams
        self.group = group
        self.consumer = consumer
        self.settings = settings
        self.counters = counters
        self.losses = losses
        self._cursor: dict[str, bytes | str] = {}
        self._claim_cursor: dict[str, bytes | str] = {key: "0-0" for _, key in streams}

    def attach(self) -> list[StreamKind]:
        """Create the group on both streams (and the streams) unless it exists; the kinds created.

        A new group starts at ``0``: events emitted before the first collector
        ever ran are delivered too. Reading restarts at our own pending list.
        """
        created: list[StreamKind] = []
        for kind, key in self.streams:
            if self._has_group(key):
                continue  # no write needed: a Redis refusing writes (OOM, READONLY) can still serve us
            try:
                self._redis.xgroup_create(key, self.group, id="0", mkstream=True)
                created.append(kind)
            except redis.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
        self._cursor = {key: "0" for _, key in self.streams}
        return created

    def _has_group(self, key: str) -> bool:
        try:
            groups = self._redis.xinfo_groups(key)
        except redis.ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            return False
        return any(text(group["name"]) == self.group for group in groups)

    @property
    def in_history(self) -> bool:
        """Still reading our own pending list (after a start or a reconnect)."""
        return any(cursor != ">" for cursor in self._cursor.values())

    def read(self, block: Optional[int], before: Optional[Prelude] = None) -> Optional[Batch]:
        """One XREADGROUP round trip; ``block`` ms waiting for new entries, None for no wait.

        ``before`` puts its commands (the owed acks) in front of the read, in the same round trip.
        """
        pipe = self._redis.pipeline(transaction=False)
        queued = before.queue(pipe) if before is not None else 0
        if self.losses.gap_checks and not self.in_history:
            # Same round trip: count what someone trimmed unread before this read steps past it.
            for _, key in self.streams:
                self.losses.close_gap(key, pipe)
        pipe.xreadgroup(self.group, self.consumer, self._cursor, count=self.settings.batch_size, block=block)
        replies = pipe.execute()
        if before is not None:
            before.sent(replies[:queued])
        return self._parse(replies[-1])

    def _parse(self, reply: Any) -> Optional[Batch]:
        # RESP3 (redis-py's default) answers with a map, RESP2 with a list of pairs.
        pairs = reply.items() if isinstance(reply, dict) else reply or ()
        replied = {text(key): entries for key, entries in pairs}
        batch = Batch()
        for kind, key in self.streams:
            entries = replied.get(key)
            if self._cursor[key] != ">":
                if not entries:  # our pending list is done: on to new entries
                    self._cursor[key] = ">"
                    continue
                self._cursor[key] = entries[-1][0]
                self.counters.read += len(entries)
                entries = self._drop_over_delivered(batch, key, entries)
            elif entries:
                self.counters.read += len(entries)
                batch.full = batch.full or len(entries) >= self.settings.batch_size
            if entries:
                self._add(batch, kind, key, entries)
        return batch if batch.ack else None

    def claim(self) -> tuple[Optional[Batch], bool]:
        """XAUTOCLAIM idle entries of dead consumers; True when there is more to scan."""
        batch: Optional[Batch] = None
        more = False
        min_idle = int(self.settings.claim_idle * 1000)
        for kind, key in self.streams:
            reply = self._redis.xautoclaim(
                key, self.group, self.consumer, min_idle, self._claim_cursor[key], count=self.settings.batch_size
            )
            next_id, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            self._claim_cursor[key] = next_id
            more = more or next_id not in (b"0-0", "0-0")
            if deleted:  # Redis 7 already dropped these from the pending list
                self.losses.record(key, deleted, "deleted-while-pending")
                self.counters.lost += len(deleted)
            if any(entry is None for entry in entries):
                # Redis 6.2 hands deleted entries over as nil, without their ids: they are in our
                # pending list now, and reading it again brings their ids, without fields (lost).
                self._cursor[key] = "0"
            entries = [entry for entry in entries if entry is not None]
            if not entries:
                continue
            batch = batch or Batch()
            self.counters.claimed += len(entries)
            log.info("entries_claimed", stream=key, count=len(entries), min_idle_s=self.settings.claim_idle)
            entries = self._drop_over_delivered(batch, key, entries)
            self._add(batch, kind, key, entries)
        return batch, more

    def _drop_over_delivered(self, batch: Batch, key: str, entries: Sequence[Any]) -> list[Any]:
        """Move entries delivered more than ``max_deliveries`` times into ``batch.dead``.

        Only entries read again (own pending list, claims) can be over-delivered,
        so the per-entry XPENDING round trip stays off the hot path.
        """
        pipe = self._redis.pipeline(transaction=False)
        for entry_id, _ in entries:
            pipe.xpending_range(key, self.group, min=entry_id, max=entry_id, count=1)
        limit = self.settings.max_deliveries
        keep = []
        for (entry_id, fields), pending in zip(entries, pipe.execute()):
            times = pending[0]["times_delivered"] if pending else 0
            if times > limit and fields:
                detail = f"delivered {times} times, the limit is {limit}"
                batch.dead.append(DeadLetter(key, entry_id, "max_deliveries", detail, fields))
                batch.ack.setdefault(key, []).append(entry_id)
            else:
                keep.append((entry_id, fields))
        return keep

    def _add(self, batch: Batch, kind: StreamKind, key: str, entries: Iterable[RawEntry]) -> None:
        decoded = decode_entries(kind, key, entries, max_size=self.settings.max_event_size)
        batch.records.extend(decoded.records)
        batch.dead.extend(decoded.dead)
        batch.ack.setdefault(key, []).extend(decoded.ids)
        if decoded.lost:
            self.losses.record(key, decoded.lost, "deleted-while-pending")
            self.counters.lost += len(decoded.lost)
