"""The collector's routine trimming of its streams: never what some consumer group has not acked.

Two trims, the same policy: by age (``XTRIM MINID``, the retention of each
stream), and, once a stream passes half the emitters' cap, every entry all
groups have acked, whatever its age, so that the emitters' guard (which
trims acked or not) only ever meets entries nobody could deliver yet.

One strategy per server generation, chosen per connection by :func:`probe`:

- :class:`AckFloorTrim` (Redis 6.2, 7.x, 8.0): ``XTRIM MINID ~`` below every
  group's oldest unacked entry (the oldest pending one, or the first one it
  has not read). An acked entry behind an entry still pending stays until
  that one is acked.
- :class:`AckedTrim` (Redis 8.2.1 and later): ``XTRIM MINID = ... ACKED``,
  where Redis itself skips every entry some group has not read or acked,
  so acked entries behind a pending one go too. The threshold still stops
  at the groups' read position, which keeps the server from walking the
  unread tail, where ACKED could delete nothing anyway. Exact (``=``), not
  ``~``: with ``~`` Redis 8.2.0 to 8.4.0 delete nothing under ACKED
  (redis/redis#14656, fixed by #14623). Redis accepts LIMIT only with ``~``,
  so one exact pass removes all it may; passes come every ``trim_interval``.

Neither ever uses DELREF: an entry trimmed while pending must stay in its
group's pending list, where whoever claims it finds it without data and
counts it lost (see :mod:`collector.loss`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import redis
import structlog

from collector.records import StreamKind, parse_id
from collector.refusals import refusal

__all__ = ["ACKED_TRIM_RATIO", "AckFloorTrim", "AckedTrim", "StreamTrimmer", "acked_trim_safe", "probe"]

log = structlog.get_logger("collector.trimming")

# Past this share of the emitters' cap the collector trims every acked entry, whatever its age.
ACKED_TRIM_RATIO = 0.5
# Redis 8.2.0 accepts ACKED but crashes on it once a stream was loaded from disk without
# group references (redis/redis#14276, fixed in 8.2.1).
ACKED_SINCE = (8, 2, 1)
_PROBE_SUFFIX = ":trim-probe"  # a key nobody writes: XTRIM on a missing key answers 0, deleting nothing
_NONE_UNREAD = (2**63, 0)  # above every entry: the floor of a stream no group holds back

_MAX_SEQ = 2**64 - 1

StreamId = tuple[int, int]


class TrimStrategy(ABC):
    """One way to trim a stream below a threshold without touching what a group has not acked."""

    name: ClassVar[str]

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    @abstractmethod
    def trim(self, key: str, cutoff: StreamId, *, crowded: bool) -> tuple[int, str, bool]:
        """Trim ``key`` below ``cutoff`` (every acked entry when ``crowded``).

        Returns the entries removed, the MINID sent, and whether unacked entries held the trim back.
        """


class AckFloorTrim(TrimStrategy):
    """``XTRIM MINID ~`` below every group's oldest unprocessed entry: any Redis since 6.2."""

    name = "ack-floor"

    def trim(self, key: str, cutoff: StreamId, *, crowded: bool) -> tuple[int, str, bool]:
        floor = self._oldest_unprocessed(key)
        minid = floor if crowded else min(cutoff, floor)
        text = _id_text(minid)
        return self._redis.xtrim(key, minid=text, approximate=True), text, minid < cutoff

    def _oldest_unprocessed(self, key: str) -> StreamId:
        floor = _NONE_UNREAD
        for group in self._redis.xinfo_groups(key):
            floor = min(floor, _after(group["last-delivered-id"]))
            if group.get("pending"):
                summary = self._redis.xpending(key, group["name"])
                if summary.get("min"):
                    floor = min(floor, parse_id(summary["min"]))
        return floor


class AckedTrim(TrimStrategy):
    """``XTRIM MINID = ... ACKED``: Redis keeps whatever some group has not read or acked (8.2.1+)."""

    name = "acked"

    def trim(self, key: str, cutoff: StreamId, *, crowded: bool) -> tuple[int, str, bool]:
        groups = self._redis.xinfo_groups(key)
        read = min((_after(group["last-delivered-id"]) for group in groups), default=_NONE_UNREAD)
        minid = read if crowded else min(cutoff, read)
        text = _id_text(minid)
        removed = self._redis.execute_command("XTRIM", key, "MINID", "=", text, "ACKED")
        return int(removed), text, minid < cutoff


def acked_trim_safe(version: str) -> bool:
    """Whether a server that accepts ACKED (see :func:`probe`) may be given it: 8.2.1 and later."""
    parts: list[int] = []
    for part in version.split(".")[:3]:
        if not part.isdigit():
            break
        parts.append(int(part))
    # A version that does not read as numbers is no 8.2.0 (a fork or a development build).
    return len(parts) < 3 or tuple(parts) >= ACKED_SINCE


def probe(client: redis.Redis, prefix: str) -> tuple[type[TrimStrategy], str]:
    """The strategy this server supports, and why; nothing is written or deleted.

    ``XTRIM <missing key> MINID 0 ACKED``: Redis 8.2+ parses the option and answers 0
    (a missing key, and no id is below 0-0 anyway); older servers answer a syntax
    error. Then the version (HELLO, which any ACL user may send) rules out 8.2.0.
    A refusal (READONLY, OOM, ...) propagates: the trim pass would meet it too.
    """
    try:
        client.execute_command("XTRIM", prefix + _PROBE_SUFFIX, "MINID", "0", "ACKED")
    except redis.ResponseError as exc:
        if refusal(exc) is not None:
            raise
        return AckFloorTrim, f"XTRIM ... ACKED refused ({exc}): Redis before 8.2"
    version = _server_version(client)
    if not acked_trim_safe(version):
        return AckFloorTrim, f"Redis {version} has ACKED but crashes on it after a reload (fixed in 8.2.1)"
    return AckedTrim, f"Redis {version} trims acked entries only (XTRIM ... ACKED)"


class StreamTrimmer:
    """Trims the collector's streams by age and, once crowded, of every acked entry.

    ``cap(kind)`` is the emitters' cap of a stream (0: none); ``connection_epoch()``
    changes whenever the client reconnected (the daemon's reconnect count): the
    server may be another one then, so the next pass probes again.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        streams: Sequence[tuple[StreamKind, str]],
        *,
        retention: Mapping[StreamKind, float],
        cap: Callable[[StreamKind], int],
        connection_epoch: Callable[[], int],
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._streams = streams
        self._retention = retention
        self._cap = cap
        self._epoch = connection_epoch
        self._probed_at: Optional[int] = None
        self._strategy: Optional[TrimStrategy] = None

    @property
    def strategy_name(self) -> str:
        """The strategy in use; empty until the first pass has probed the server."""
        return self._strategy.name if self._strategy is not None else ""

    def trim(self) -> None:
        """One pass over every stream."""
        strategy = self._current()
        now_ms = int(time.time() * 1000)
        for kind, key in self._streams:
            retention = self._retention[kind]
            cap = self._cap(kind)
            length = self._redis.xlen(key)
            crowded = bool(cap) and length > cap * ACKED_TRIM_RATIO
            if not length or (retention <= 0 and not crowded):
                continue  # an empty stream may not even exist (a Redis restart): the next read recreates it
            cutoff = (now_ms - int(retention * 1000), 0) if retention > 0 else (0, 0)
            removed, minid, held_back = strategy.trim(key, cutoff, crowded=crowded)
            (log.info if removed else log.debug)(
                "stream_trimmed", stream=key, removed=removed, minid=minid, held_back=held_back, strategy=strategy.name
            )

    def _current(self) -> TrimStrategy:
        epoch = self._epoch()
        if self._strategy is None or self._probed_at != epoch:
            chosen, reason = probe(self._redis, self._prefix)
            self._probed_at = epoch
            if self._strategy is None or type(self._strategy) is not chosen:
                self._strategy = chosen(self._redis)
                log.info("trim_strategy", strategy=chosen.name, reason=reason)
        return self._strategy


def _server_version(client: redis.Redis) -> str:
    reply: Any = client.execute_command("HELLO")
    # RESP3 answers a map, RESP2 a flat list of names and values.
    fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
    version = fields.get(b"version", fields.get("version", ""))
    return version.decode(errors="replace") if isinstance(version, bytes) else str(version)


def _after(entry_id: bytes | str) -> StreamId:
    """The id just past ``entry_id``: a group's first unread entry is at or above it."""
    ms, seq = parse_id(entry_id)
    # A group stepped over a gap sits at ``<ms>-<2**64-1>`` (collector.loss); past it is ``<ms+1>-0``.
    return (ms + 1, 0) if seq >= _MAX_SEQ else (ms, seq + 1)


def _id_text(entry_id: StreamId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"
