"""``telemetry-collector tail``: follow both streams (and the live token channel) as events arrive.

Plain ``XREAD`` from the streams' last ids at start: no consumer group, so a
tail never takes entries from the collectors nor shows up in their pending
counts. It survives a Redis restart: it reconnects with capped, jittered
backoff and resumes from the last ids it printed.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import click
import redis

from collector.durations import Duration, DurationParam
from collector.records import parse_id
from collector.redisconn import redact_url
from collector.tools.command import ToolCommand
from collector.tools.filters import EventFilter
from collector.tools.formatting import event_json, event_line
from collector.tools.options import Target, filter_options, redis_options
from collector.tools.output import echo, echo_json, warn
from collector.tools.reading import StoredEvent, decode_entry
from emitters.events import DecodeError
from emitters.streams import StreamNames, decode_live

__all__ = ["tail", "Follower"]

# XREAD blocks this long at most; with --live the pub/sub channel is drained in between.
BLOCK_MS = 1000
LIVE_BLOCK_MS = 100
READ_COUNT = 500
MAX_BACKOFF_S = 5.0
# The socket timeout outlasts the longest XREAD block.
CLIENT_TIMEOUT_S = BLOCK_MS / 1000 + 10


class Follower:
    """The Redis side of a tail: start ids, reads, the pub/sub subscription, reconnects."""

    def __init__(self, target: Target, live: bool) -> None:
        self.target = target
        self.names: StreamNames = target.names
        self.live = live
        self.client = target.connect("tail", timeout=CLIENT_TIMEOUT_S)
        self.pubsub: Optional[redis.client.PubSub] = None
        # Errors first: XREAD returns streams in the order asked.
        self.last_ids: dict[str, str] = {
            key: self._last_id(key) for key in (self.names.errors, self.names.events)
        }
        self.kinds = {self.names.errors: "errors", self.names.events: "events"}
        if live:
            self._subscribe()

    def _last_id(self, key: str) -> str:
        newest = self.client.xrevrange(key, count=1)
        return newest[0][0].decode() if newest else "0-0"

    def _subscribe(self) -> None:
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(self.names.live)

    def read(self, block_ms: int, undecodable: list[str]) -> list[StoredEvent]:
        rows: list[StoredEvent] = []
        reply = self.client.xread(self.last_ids, count=READ_COUNT, block=block_ms) or []
        for key, entries in reply:
            key = key.decode()
            for entry_id, fields in entries:
                entry = entry_id.decode()
                self.last_ids[key] = entry
                event = decode_entry(fields)
                if event is None:
                    undecodable.append(f"{key} {entry}")
                else:
                    rows.append(StoredEvent(self.kinds[key], entry, event))
        if self.pubsub is not None:
            # Drained after the XREAD: a token published before a stream entry
            # is already buffered by then, and sorting on ts puts it first.
            rows.extend(self._drain_live(undecodable))
        rows.sort(key=lambda row: (row.event.ts, parse_id(row.stream_id or "0-0")))
        return rows

    def _drain_live(self, undecodable: list[str]) -> list[StoredEvent]:
        assert self.pubsub is not None
        rows: list[StoredEvent] = []
        while (message := self.pubsub.get_message(timeout=0)) is not None:
            try:
                rows.extend(StoredEvent("live", None, event) for event in decode_live(message["data"]))
            except DecodeError:
                undecodable.append(self.names.live)
        return rows

    def reconnect(self) -> None:
        self.close()
        self.client = self.target.connect("tail", timeout=CLIENT_TIMEOUT_S)
        self.client.ping()
        if self.live:
            self._subscribe()

    def close(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None
        self.client.close()


@contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM (``docker stop``, ``kill``), so the tail ends cleanly with status 0.

    Signal handlers can only be installed from the main thread; elsewhere
    (an embedding program) the event is simply never set.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command(cls=ToolCommand)
@click.option("--live", is_flag=True, help="Also follow the live channel (token.generated events, not kept in streams).")
@click.option("--count", type=click.IntRange(min=1), help="Exit after printing this many events.")
@click.option("--timeout", type=DurationParam(), help="Exit after this long (e.g. 30s).")
@filter_options
@redis_options
def tail(target: Target, event_filter: EventFilter, live: bool, count: Optional[int], timeout: Optional[Duration]) -> None:
    """Follow new events on both streams as they arrive, one line each (Ctrl-C to stop).

    Reads with plain XREAD, never a consumer group, so it takes nothing away
    from the collectors. --json prints one JSON object per line.

    \b
      telemetry-collector tail --severity error
      telemetry-collector tail --live --request req-8f2c --json | jq .
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    follower = Follower(target, live)
    with _stop_on_sigterm() as stop:
        try:
            _follow(follower, target, event_filter, count=count, deadline=deadline, stop=stop)
        except KeyboardInterrupt:
            pass
        finally:
            follower.close()


def _follow(
    follower: Follower,
    target: Target,
    event_filter: EventFilter,
    *,
    count: Optional[int],
    deadline: Optional[float],
    stop: threading.Event,
) -> None:
    """Print matching events until ``count`` were shown, ``deadline`` passed or ``stop`` was set."""
    backoff = 0.0
    shown = 0
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        block = LIVE_BLOCK_MS if follower.live else BLOCK_MS
        if deadline is not None:
            block = max(1, min(block, int((deadline - time.monotonic()) * 1000)))
        undecodable: list[str] = []
        try:
            if backoff:
                follower.reconnect()
                warn("Redis is back; following again")
                backoff = 0.0
            rows = follower.read(block, undecodable)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not backoff:
                warn(f"lost Redis at {redact_url(target.redis_url)} ({exc}); reconnecting")
            backoff = min(MAX_BACKOFF_S, max(0.1, backoff * 2))
            stop.wait(random.uniform(backoff / 2, backoff))
            continue
        for where in undecodable:
            warn(f"an entry that does not decode: {where}")
        for row in rows:
            if not event_filter.matches(row.event):
                continue
            if target.as_json:
                echo_json(event_json(row))
            else:
                echo(event_line(row))
            shown += 1
            if count is not None and shown >= count:
                return
