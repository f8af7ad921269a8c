"""Following the streams without a consumer group: the dashboard's live tail and ``ui``'s metrics feed.

Both read with ``XREAD`` from the newest entry on (the ``tail`` tool's
follower), so they take nothing from the collectors.
"""

from __future__ import annotations

import threading
from typing import Iterator, Optional

import redis
import structlog

from collector.http.engines import LocalBoard, newest_reports
from collector.http.metrics import EventMetrics
from collector.tools.filters import EventFilter
from collector.tools.options import Target
from collector.tools.reading import StoredEvent
from collector.tools.tail import Follower

__all__ = ["follow", "matching", "StreamFeed", "BLOCK_MS", "LIVE_BLOCK_MS"]

log = structlog.get_logger("collector.http")

BLOCK_MS = 1000
# With live tokens the pub/sub channel is drained between reads: read more often.
LIVE_BLOCK_MS = 100
RETRY_S = 2.0


def follow(target: Target, live: bool, stop: threading.Event) -> Iterator[list[StoredEvent]]:
    """Batches of new events (and, with ``live``, token events from pub/sub) until ``stop``.

    An empty batch now and then lets the caller notice a gone client. Raises
    redis.ConnectionError/TimeoutError when Redis goes away.
    """
    follower = Follower(target, live)
    try:
        block = LIVE_BLOCK_MS if live else BLOCK_MS
        while not stop.is_set():
            yield follower.read(block, [])
    finally:
        follower.close()


def matching(rows: list[StoredEvent], event_filter: EventFilter) -> list[StoredEvent]:
    return [row for row in rows if event_filter.matches(row.event)]


class StreamFeed:
    """``ui``'s source of metrics: every new event, observed once; reconnects on its own."""

    def __init__(self, target: Target, metrics: EventMetrics, engines: LocalBoard, stop: threading.Event) -> None:
        self.target = target
        self.metrics = metrics
        self.engines = engines
        self.stop = stop
        self.following = threading.Event()
        self.thread = threading.Thread(target=self._run, name="telemetry-ui-feed", daemon=True)

    def start(self, timeout: float = 5.0) -> "StreamFeed":
        """Start following; returns once the newest entry is known (or Redis failed to say in time)."""
        self.thread.start()
        self.following.wait(timeout)
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                follower = Follower(self.target, False)
                self.following.set()
                try:
                    while not self.stop.is_set():
                        events = [row.event for row in follower.read(BLOCK_MS, [])]
                        self.metrics.observe(events)
                        self.engines.publish(newest_reports(events))
                finally:
                    follower.close()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # Entries added while Redis was away from us are not observed: metrics
                # restart from the newest entry, as after a restart of `ui`.
                log.warning("ui_feed_redis_unavailable", error=str(exc), retry_in_s=RETRY_S)
                self.stop.wait(RETRY_S)

    def join(self, timeout: Optional[float] = None) -> None:
        self.thread.join(timeout)

