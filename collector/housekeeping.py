"""The group's upkeep between batches: heartbeat hash, lag against MAXLEN, trimming, idle consumers.

The loop calls these on its timers (and the keepalive thread beats while a
sink holds the loop); none of them reads or acks entries.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import redis
import structlog

from collector.config import CollectorConfig
from collector.loss import LossBook
from collector.pacing import Counters, text
from collector.records import StreamKind
from collector.trimming import ACKED_TRIM_RATIO, StreamTrimmer
from emitters.streams import StreamNames

if TYPE_CHECKING:
    from collector.alerts.stage import AlertStage

__all__ = ["Housekeeping"]

log = structlog.get_logger("collector.daemon")

# Deletes a consumer only if it has nothing pending, atomically: between a
# check and a separate XGROUP DELCONSUMER the consumer could read entries,
# and deleting it then would silently drop them from the group.
_DELETE_IF_IDLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then
  return -1
end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


class Housekeeping:
    """Chores for one consumer of ``group``; ``describe`` gives the heartbeat its status fields."""

    def __init__(
        self,
        client: redis.Redis,
        names: StreamNames,
        streams: tuple[tuple[StreamKind, str], ...],
        *,
        stream_prefix: str,
        group: str,
        consumer: str,
        settings: CollectorConfig,
        counters: Counters,
        losses: LossBook,
        alert_engine: Optional["AlertStage"],
        describe: Callable[[], dict[str, Any]],
    ) -> None:
        self._redis = client
        self.names = names
        self.streams = streams
        self.group = group
        self.consumer = consumer
        self.settings = settings
        self.counters = counters
        self.losses = losses
        retention: dict[StreamKind, float] = {"events": settings.events_retention, "errors": settings.errors_retention}
        self.trimmer = StreamTrimmer(
            client, stream_prefix, streams, retention=retention, cap=self.cap,
            connection_epoch=lambda: counters.reconnects,  # a reconnect may meet another server: probe again
        )  # fmt: skip
        self.alert_engine = alert_engine
        self._describe = describe
        self.lag: dict[StreamKind, Optional[int]] = {"errors": None, "events": None}
        self.trim_soon = False  # a stream nears its cap: trim acked entries at the next chance
        self._maxlen: dict[StreamKind, int] = {"events": settings.events_maxlen, "errors": settings.errors_maxlen}
        self._started_at = time.time()
        self._at_risk: set[StreamKind] = set()
        self._lag_unsupported = False
        self._delete_if_idle = client.register_script(_DELETE_IF_IDLE)

    def cap(self, kind: StreamKind) -> int:
        """The MAXLEN the emitters trim ``kind`` to (as they reported it, else as configured)."""
        return self.losses.caps.get(kind) or self._maxlen[kind]

    def heartbeat(self) -> None:
        self.losses.poll()
        self._check_lag()
        key = self.names.heartbeat(self.consumer)
        fields: dict[str, Any] = {
            "consumer": self.consumer,
            "group": self.group,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": round(self._started_at, 3),
            "last_seen": round(time.time(), 3),
            **self._describe(),
            "trim_strategy": self.trimmer.strategy_name,
            **self.counters.as_dict(),
        }
        for kind, lost in self.losses.totals.items():
            fields[f"lost_{kind}_total"] = lost  # durable, the whole group's
        for kind, lag in self.lag.items():
            fields[f"lag_{kind}"] = -1 if lag is None else lag
        ttl = max(int(self.settings.heartbeat_interval * 3 + 0.999), 2)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, ttl)
        pipe.execute()

    def remove_heartbeat(self) -> None:
        self._redis.delete(self.names.heartbeat(self.consumer))

    def _check_lag(self) -> None:
        """Entries not yet acked (undelivered + pending) against the MAXLEN emitters trim to."""
        pipe = self._redis.pipeline(transaction=False)
        for _, key in self.streams:
            pipe.xinfo_groups(key)
            pipe.xlen(key)
        results = pipe.execute(raise_on_error=False)
        for index, (kind, key) in enumerate(self.streams):
            groups, length = results[2 * index], results[2 * index + 1]
            if isinstance(groups, Exception) or isinstance(length, Exception):
                continue  # the stream is gone; the next read recreates it
            mine = next((g for g in groups if text(g.get("name")) == self.group), None)
            if mine is None:
                continue
            cap = self.cap(kind)
            if cap and length > cap * ACKED_TRIM_RATIO:
                self.trim_soon = True  # acked entries go before the emitters' guard nears them
            if "lag" not in mine:
                # Redis 6.2 does not track lag. The stream length bounds it from above, and a
                # close one: acked entries are trimmed whenever the stream passes half the cap.
                if not self._lag_unsupported:
                    self._lag_unsupported = True
                    log.info("lag_estimated", note="Redis 6.2 reports no group lag: the stream length bounds it")
                unacked = int(length)
            else:
                self.losses.gap_checks = True  # Redis 7+: the counters a gap is counted by exist
                lag = mine["lag"]
                # Redis cannot count the lag once entries past the group's position were deleted
                # (trimmed before delivery): then the whole stream may be unread.
                unacked = int(mine.get("pending") or 0) + (int(lag) if lag is not None else int(length))
            self.lag[kind] = unacked
            self._judge_lag(kind, key, unacked)

    def _judge_lag(self, kind: StreamKind, key: str, unacked: int) -> None:
        maxlen = self.cap(kind)
        if self.alert_engine is not None:
            self.alert_engine.observe_lag(kind, unacked, maxlen)
        if not maxlen:
            return
        at_risk = unacked >= self.settings.lag_warn_ratio * maxlen
        if at_risk and kind not in self._at_risk:
            log.warning(
                "unacked_data_at_risk",
                stream=key,
                unacked=unacked,
                maxlen=maxlen,
                action="the emitters' MAXLEN trimming will delete entries not yet delivered: "
                "add collectors, fix slow sinks or raise the MAXLEN",
            )
        elif not at_risk and kind in self._at_risk:
            log.info("unacked_data_safe_again", stream=key, unacked=unacked, maxlen=maxlen)
        (self._at_risk.add if at_risk else self._at_risk.discard)(kind)

    def trim(self) -> None:
        self.trim_soon = False
        self.trimmer.trim()  # collector/trimming.py: by age, and every acked entry once crowded

    def remove_idle_consumers(self) -> None:
        idle_ms = int(self.settings.consumer_idle_timeout * 1000)
        if idle_ms <= 0:
            return
        for _, key in self.streams:
            for consumer in self._redis.xinfo_consumers(key, self.group):
                name = text(consumer["name"])
                if name == self.consumer or consumer["pending"] or consumer["idle"] < idle_ms:
                    continue
                if self._delete_if_idle(keys=[key], args=[self.group, name]) >= 0:
                    log.info("idle_consumer_removed", stream=key, consumer=name, idle_s=consumer["idle"] // 1000)
