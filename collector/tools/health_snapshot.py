"""The pipeline's state as Redis shows it: streams, consumer groups, collector heartbeats, losses.

A handful of commands with short timeouts, no scans of stream contents except
to count a group's lag when Redis cannot tell it (after deletions). The
``health`` command and the HTTP server's figures both read it.
"""

from __future__ import annotations

from typing import Any, Optional

import msgspec
import redis

from collector.clientreports import ClientDrops, read_client_drops
from collector.records import parse_id
from collector.redisconn import redact_url
from collector.tools.options import Target
from collector.tools.reading import paged_entries
from emitters.streams import StreamNames

__all__ = [
    "ConsumerInfo",
    "GroupInfo",
    "StreamInfo",
    "Heartbeat",
    "Snapshot",
    "parse_heartbeat",
    "take_snapshot",
]

STREAM_KINDS = ("events", "errors", "dead", "alerts")


class ConsumerInfo(msgspec.Struct, kw_only=True):
    name: str
    pending: int
    idle_s: float


class GroupInfo(msgspec.Struct, kw_only=True):
    name: str
    consumers: list[ConsumerInfo]
    pending: int
    lag: int  # entries not yet delivered to the group (counted when Redis could not say)
    last_delivered_id: str
    oldest_pending_idle_s: Optional[float]  # since the oldest pending entry was last delivered


class StreamInfo(msgspec.Struct, kw_only=True):
    kind: str
    key: str
    length: int
    memory_bytes: Optional[int]
    maxlen: Optional[int]
    first_age_s: Optional[float]
    last_age_s: Optional[float]
    groups: list[GroupInfo]

    @property
    def headroom(self) -> Optional[int]:
        return None if self.maxlen is None else self.maxlen - self.length


class Heartbeat(msgspec.Struct, kw_only=True):
    """A collector's heartbeat hash (``{prefix}:collector:{consumer}``)."""

    consumer: str
    group: str = ""
    host: str = ""
    pid: int = 0
    status: str = "unknown"
    refusal: str = ""  # OOM, READONLY, ... while Redis refuses the collector's writes
    trim_strategy: str = ""  # acked / ack-floor: how its routine trim spares unacked entries (collector.trimming)
    started_at: float = 0.0
    last_seen: float = 0.0
    read: int = 0
    written: int = 0
    acked: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    age_s: float = 0.0


class Snapshot(msgspec.Struct, kw_only=True):
    redis_url: str
    redis_version: str
    used_memory: Optional[int]
    # Why Redis refuses writes (maxmemory reached under noeviction), when it does: a collector
    # cannot even write its heartbeat then.
    refusing_writes: Optional[str] = None
    streams: list[StreamInfo]
    collectors: list[Heartbeat]
    dead_letters: int
    client_drops: list[ClientDrops] = []  # what engines reported losing (collector.clientreports)
    # Entries trimmed before a group acked them, durable (`{prefix}:accounting`): "{kind}:{group}" -> count.
    lost: dict[str, int] = {}
    last_loss_age_s: Optional[float] = None


_HEARTBEAT_INTS = ("pid", "read", "written", "acked", "dead_lettered", "claimed")
_HEARTBEAT_FLOATS = ("started_at", "last_seen")


def parse_heartbeat(key_suffix: str, fields: dict[bytes, bytes], now_s: float) -> Heartbeat:
    """A heartbeat from its hash; missing or garbled numbers read as 0 rather than failing the probe."""
    text = {name.decode(errors="replace"): value.decode(errors="replace") for name, value in fields.items()}
    values: dict[str, Any] = {"consumer": text.get("consumer") or key_suffix}
    for name in ("group", "host", "status", "refusal", "trim_strategy"):
        if name in text:
            values[name] = text[name]
    for name in _HEARTBEAT_INTS + _HEARTBEAT_FLOATS:
        try:
            number = float(text[name])
        except (KeyError, ValueError):
            continue
        values[name] = int(number) if name in _HEARTBEAT_INTS else number
    beat = Heartbeat(**values)
    beat.age_s = round(max(0.0, now_s - beat.last_seen), 3)
    return beat


def _id_age_s(stream_id: Optional[bytes], now_ms: int) -> Optional[float]:
    if not stream_id:
        return None
    return max(0, now_ms - parse_id(stream_id)[0]) / 1000


def _count_after(client: redis.Redis, key: str, last_id: str) -> int:
    """Entries after ``last_id``: a group's lag when Redis reports none (after XDEL)."""
    return sum(1 for _ in paged_entries(client, key, start="(" + last_id))


def _group_info(client: redis.Redis, key: str, raw: dict[str, Any]) -> GroupInfo:
    name = raw["name"].decode()
    last_delivered = raw["last-delivered-id"].decode()
    lag = raw.get("lag")
    if lag is None:
        lag = _count_after(client, key, last_delivered)
    oldest = client.xpending_range(key, name, min="-", max="+", count=1) if raw["pending"] else []
    consumers = [
        ConsumerInfo(name=c["name"].decode(), pending=c["pending"], idle_s=c["idle"] / 1000)
        for c in client.xinfo_consumers(key, name)
    ]
    return GroupInfo(
        name=name,
        consumers=consumers,
        pending=raw["pending"],
        lag=lag,
        last_delivered_id=last_delivered,
        oldest_pending_idle_s=oldest[0]["time_since_delivered"] / 1000 if oldest else None,
    )


def _stream_info(client: redis.Redis, kind: str, key: str, maxlen: Optional[int], now_ms: int) -> StreamInfo:
    try:
        info = client.xinfo_stream(key)
    except redis.ResponseError as exc:
        if "no such key" not in str(exc):
            raise
        return StreamInfo(kind=kind, key=key, length=0, memory_bytes=None, maxlen=maxlen,
                          first_age_s=None, last_age_s=None, groups=[])  # fmt: skip
    first, last = info.get("first-entry"), info.get("last-entry")
    return StreamInfo(
        kind=kind,
        key=key,
        length=info["length"],
        memory_bytes=client.memory_usage(key),
        maxlen=maxlen,
        first_age_s=_id_age_s(first[0] if first else None, now_ms),
        last_age_s=_id_age_s(last[0] if last else None, now_ms),
        groups=[_group_info(client, key, group) for group in client.xinfo_groups(key)] if info["groups"] else [],
    )


def _heartbeats(client: redis.Redis, names: StreamNames, now_s: float) -> list[Heartbeat]:
    prefix = names.heartbeat_prefix
    pattern = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in prefix) + "*"
    keys = sorted(client.scan_iter(match=pattern, count=200, _type="hash"))
    if not keys:
        return []
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    beats = [
        parse_heartbeat(key.decode()[len(prefix):], fields, now_s)
        for key, fields in zip(keys, pipe.execute())
        if fields  # expired between SCAN and HGETALL
    ]
    return sorted(beats, key=lambda beat: beat.age_s)


def _refusing_writes(memory: dict[str, Any], replication: dict[str, Any]) -> Optional[str]:
    if replication.get("role") == "slave":
        return "Redis refuses writes (READONLY): this URL is a replica; point collectors and emitters at the primary"
    used, limit = int(memory.get("used_memory") or 0), int(memory.get("maxmemory") or 0)
    if limit and used >= limit and str(memory.get("maxmemory_policy")) == "noeviction":
        return (
            f"Redis refuses writes (OOM): used_memory {used} >= maxmemory {limit} with noeviction; "
            "free memory or raise maxmemory"
        )
    return None


def _accounting(client: redis.Redis, names: StreamNames, now_ms: int) -> tuple[dict[str, int], dict[str, int], Optional[float]]:
    """The emitters' recorded caps, the lost counters and the age of the newest loss."""
    caps: dict[str, int] = {}
    lost: dict[str, int] = {}
    for name, value in client.hgetall(names.accounting).items():
        what, _, rest = name.decode(errors="replace").partition(":")
        if what == "maxlen":
            caps[rest] = int(value)
        elif what == "lost" and int(value):
            lost[rest] = int(value)
    newest = client.xrevrange(names.losses, count=1)
    return caps, lost, _id_age_s(newest[0][0], now_ms) if newest else None


def take_snapshot(
    client: redis.Redis, target: Target, maxlens: dict[str, int], defaults: Optional[dict[str, int]] = None
) -> Snapshot:
    """Backlogs are judged by ``maxlens``, else the caps the emitters recorded, else ``defaults``."""
    names = target.names
    server = client.info("server")
    memory = client.info("memory")
    # Redis's clock, not ours: stream ids and idle times are in its time.
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    caps, lost, last_loss_age_s = _accounting(client, names, now_ms)
    maxlens = {**(defaults or {}), **caps, **maxlens}
    streams = [
        _stream_info(client, kind, getattr(names, kind), maxlens.get(kind), now_ms) for kind in STREAM_KINDS
    ]
    return Snapshot(
        redis_url=redact_url(target.redis_url),
        redis_version=str(server.get("redis_version", "?")),
        used_memory=memory.get("used_memory"),
        refusing_writes=_refusing_writes(memory, client.info("replication")),
        streams=streams,
        collectors=_heartbeats(client, names, now_ms / 1000),
        dead_letters=next(s.length for s in streams if s.kind == "dead"),
        client_drops=read_client_drops(client, names, now_ms / 1000),
        lost=lost,
        last_loss_age_s=last_loss_age_s,
    )
