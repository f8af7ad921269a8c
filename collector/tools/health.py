"""``telemetry-collector health``: is the pipeline keeping up? Exit 0 healthy, 1 degraded, 2 unreachable.

Fast enough for a docker-compose healthcheck: a handful of commands with short
timeouts, no scans of stream contents except to count a group's lag when
Redis cannot tell it (after deletions).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import click
import msgspec
import redis

from collector.clientreports import ClientDrops, read_client_drops, recent_drop_reasons
from collector.durations import Duration, DurationParam, format_duration
from collector.redisconn import redact_url
from collector.redisproblems import RedisProblem, explain
from collector.tools.common import (
    PAGE_SIZE,
    Target,
    ToolCommand,
    echo,
    echo_json,
    format_age,
    format_bytes,
    maxlen_options,
    redis_options,
)
from emitters.streams import StreamNames

__all__ = [
    "health",
    "EXIT_HEALTHY",
    "EXIT_DEGRADED",
    "EXIT_UNREACHABLE",
    "Thresholds",
    "ConsumerInfo",
    "GroupInfo",
    "StreamInfo",
    "Heartbeat",
    "Snapshot",
    "parse_heartbeat",
    "assess",
    "take_snapshot",
]

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_UNREACHABLE = 0, 1, 2
STREAM_KINDS = ("events", "errors", "dead", "alerts")
# Streams collectors consume; their backlog is what MAXLEN trimming can destroy.
CONSUMED_KINDS = ("events", "errors")


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    heartbeat_max_age: float = 30.0  # seconds
    backlog_ratio: float = 0.8  # of MAXLEN, as the daemon's lag_warn_ratio
    pending_max_idle: float = 300.0  # seconds
    max_dead: int = 0
    client_drops_within: float = 300.0  # seconds: engines' reported drops this recent degrade health


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


# A loss keeps the pipeline degraded this long after it happened (the counts stay forever).
RECENT_LOSS_S = 3600.0


# -- pure ----------------------------------------------------------------------

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


def assess(snapshot: Snapshot, limits: Thresholds) -> list[str]:
    """Why the pipeline is degraded; an empty list means healthy."""
    reasons: list[str] = []
    fresh = [beat for beat in snapshot.collectors if beat.age_s <= limits.heartbeat_max_age]
    if not snapshot.collectors:
        reasons.append("no collector heartbeat: is a collector running?")
    elif not fresh:
        newest = min(beat.age_s for beat in snapshot.collectors)
        reasons.append(
            f"no fresh collector heartbeat: newest is {format_age(newest)} old "
            f"(limit {format_duration(limits.heartbeat_max_age)})"
        )
    for beat in fresh:
        if beat.status == "paused_auth":
            reasons.append(f"collector {beat.consumer} is paused: a sink refused its credentials")
        elif beat.status == "backpressure":
            reasons.append(f"collector {beat.consumer} is in backpressure: a sink is unavailable, entries wait in Redis")
        elif beat.status == "refused":
            reasons.append(
                f"collector {beat.consumer} is blocked: Redis refuses its writes ({beat.refusal or 'refused'}); "
                "entries wait in Redis"
            )
    if snapshot.refusing_writes:
        reasons.append(snapshot.refusing_writes)
    for stream in snapshot.streams:
        if stream.kind not in CONSUMED_KINDS:
            continue
        if stream.length and not stream.groups:
            reasons.append(f"{stream.key} has {stream.length} entries and no consumer group: nothing collects it")
        for group in stream.groups:
            reasons.extend(_group_reasons(stream, group, limits))
    if snapshot.lost and snapshot.last_loss_age_s is not None and snapshot.last_loss_age_s <= RECENT_LOSS_S:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(snapshot.lost.items()))
        reasons.append(
            f"entries were trimmed before they were acked, {format_age(snapshot.last_loss_age_s)} ago "
            f"(lost so far: {counts}); see the collector log (entries_lost) for the id ranges"
        )
    if snapshot.dead_letters > limits.max_dead:
        reasons.append(
            f"{snapshot.dead_letters} dead letters (limit {limits.max_dead}): see 'telemetry-collector dlq list'"
        )
    reasons.extend(recent_drop_reasons(snapshot.client_drops, limits.client_drops_within))
    return reasons


def _group_reasons(stream: StreamInfo, group: GroupInfo, limits: Thresholds) -> list[str]:
    reasons: list[str] = []
    backlog = group.lag + group.pending
    if stream.maxlen is not None and backlog >= limits.backlog_ratio * stream.maxlen:
        reasons.append(
            f"{stream.key} group {group.name}: backlog {backlog} (lag {group.lag}, pending {group.pending}) is "
            f"{backlog / stream.maxlen:.0%} of MAXLEN {stream.maxlen}; undelivered entries will be trimmed"
        )
    if group.lag > stream.length:
        reasons.append(
            f"{stream.key} group {group.name}: {group.lag - stream.length} entries were trimmed before delivery"
        )
    if group.oldest_pending_idle_s is not None and group.oldest_pending_idle_s > limits.pending_max_idle:
        reasons.append(
            f"{stream.key} group {group.name}: a pending entry has waited {format_age(group.oldest_pending_idle_s)} "
            f"for an ack (limit {format_duration(limits.pending_max_idle)}); is a consumer stuck?"
        )
    return reasons


def _id_age_s(stream_id: Optional[bytes], now_ms: int) -> Optional[float]:
    if not stream_id:
        return None
    return max(0, now_ms - int(stream_id.split(b"-")[0])) / 1000


# -- reading -------------------------------------------------------------------


def _count_after(client: redis.Redis, key: str, last_id: str) -> int:
    """Entries after ``last_id``: a group's lag when Redis reports none (after XDEL)."""
    count, start = 0, "(" + last_id
    while True:
        entries = client.xrange(key, min=start, count=PAGE_SIZE)
        count += len(entries)
        if len(entries) < PAGE_SIZE:
            return count
        start = "(" + entries[-1][0].decode()


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


def _split_maxlens(events_maxlen: int, errors_maxlen: int) -> tuple[dict[str, int], dict[str, int]]:
    """(given on the command line or env, defaults): what the emitters recorded beats only the defaults."""
    context = click.get_current_context()
    given: dict[str, int] = {}
    defaults: dict[str, int] = {}
    for kind, value in (("events", events_maxlen), ("errors", errors_maxlen)):
        source = context.get_parameter_source(f"{kind}_maxlen")
        (defaults if source in (None, click.core.ParameterSource.DEFAULT) else given)[kind] = value
    return given, defaults


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


# -- output --------------------------------------------------------------------


def _snapshot_json(snapshot: Snapshot, status: str, code: int, reasons: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {"status": status, "exit_code": code, "reasons": reasons}
    data.update(msgspec.to_builtins(snapshot))
    for stream, raw in zip(snapshot.streams, data["streams"]):
        raw["headroom"] = stream.headroom
    return data


def _age(value: Optional[float]) -> str:
    return "-" if value is None else format_age(value)


def _ago(value: Optional[float]) -> str:
    return "-" if value is None else format_age(value) + " ago"


def _print_snapshot(snapshot: Snapshot, status: str, reasons: list[str]) -> None:
    echo(
        f"redis {snapshot.redis_url}  version {snapshot.redis_version}  "
        f"used memory {format_bytes(snapshot.used_memory)}"
    )
    key_width = max(len(stream.key) for stream in snapshot.streams)
    echo(click.style(f"{'STREAM':<{key_width}} {'LENGTH':>8} {'MAXLEN':>8} {'HEADROOM':>9} {'MEMORY':>10} {'OLDEST':>13} {'NEWEST':>13}", dim=True))
    for stream in snapshot.streams:
        headroom = "-" if stream.headroom is None else f"{stream.headroom / stream.maxlen:.0%}"  # type: ignore[operator]
        echo(
            f"{stream.key:<{key_width}} {stream.length:>8} {stream.maxlen or '-':>8} {headroom:>9} "
            f"{format_bytes(stream.memory_bytes):>10} {_ago(stream.first_age_s):>13} {_ago(stream.last_age_s):>13}"
        )
    groups = [(stream, group) for stream in snapshot.streams for group in stream.groups]
    if groups:
        name_width = max(len("GROUP"), *(len(group.name) for _, group in groups))
        echo(click.style(f"{'GROUP':<{name_width}} {'STREAM':<{key_width}} {'CONSUMERS':>9} {'PENDING':>8} {'LAG':>8} {'OLDEST PENDING':>15}", dim=True))
    for stream, group in groups:
        echo(
            f"{group.name:<{name_width}} {stream.key:<{key_width}} {len(group.consumers):>9} {group.pending:>8} "
            f"{group.lag:>8} {_age(group.oldest_pending_idle_s):>15}"
        )
        for consumer in group.consumers:
            echo(f"  consumer {consumer.name}: pending {consumer.pending}, idle {format_age(consumer.idle_s)}")
    if snapshot.collectors:
        name_width = max(len("COLLECTOR"), *(len(beat.consumer) for beat in snapshot.collectors))
        echo(click.style(f"{'COLLECTOR':<{name_width}} {'STATUS':<12} {'LAST SEEN':>13} {'READ':>9} {'WRITTEN':>9} {'ACKED':>9} {'DEAD':>6} {'CLAIMED':>8}", dim=True))
    for beat in snapshot.collectors:
        echo(
            f"{beat.consumer:<{name_width}} {beat.status:<12} {_ago(beat.age_s):>13} {beat.read:>9} "
            f"{beat.written:>9} {beat.acked:>9} {beat.dead_lettered:>6} {beat.claimed:>8}"
        )
    echo(f"dead letters: {snapshot.dead_letters}")
    for drops in snapshot.client_drops:
        detail = ", ".join(f"{reason} {count}" for reason, count in drops.dropped.items()) or "-"
        echo(f"engine {drops.service}: dropped {drops.dropped_total} ({detail}), last drop {_ago(drops.last_drop_age_s)}")
    if snapshot.lost:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(snapshot.lost.items()))
        echo(f"lost (trimmed before acked): {counts}; newest {_ago(snapshot.last_loss_age_s)}")
    colour = "green" if status == "healthy" else "yellow"
    echo(click.style(f"status: {status}", fg=colour, bold=True))
    for reason in reasons:
        echo(click.style(f"  - {reason}", fg=colour))


@click.command(cls=ToolCommand)
@click.option("--timeout", type=DurationParam(), default="2s", show_default=True, help="Connect and read timeout.")
@click.option(
    "--heartbeat-max-age",
    type=DurationParam(),
    default="30s",
    show_default=True,
    help="A collector heartbeat older than this is stale.",
)
@click.option(
    "--backlog-ratio",
    type=click.FloatRange(min=0, max=1, min_open=True),
    default=0.8,
    show_default=True,
    help="Degraded when a group's lag + pending reaches this fraction of the stream's MAXLEN.",
)
@click.option(
    "--pending-max-idle",
    type=DurationParam(),
    default="5m",
    show_default=True,
    help="Degraded when a pending entry waits longer than this for its ack.",
)
@click.option(
    "--max-dead",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Degraded when the dead-letter stream holds more entries than this.",
)
@maxlen_options
@redis_options
def health(
    target: Target,
    timeout: Duration,
    heartbeat_max_age: Duration,
    backlog_ratio: float,
    pending_max_idle: Duration,
    max_dead: int,
    events_maxlen: int,
    errors_maxlen: int,
) -> None:
    """Stream sizes, consumer groups, collector heartbeats and dead letters.

    Exit status: 0 healthy, 1 degraded (no fresh collector heartbeat, a
    collector paused on credentials or in backpressure, a backlog near
    MAXLEN, a pending entry aging, dead letters over --max-dead), 2 Redis
    unreachable.

    \b
      healthcheck: ["CMD", "telemetry-collector", "health", "--max-dead", "1000"]
    """
    if timeout <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--timeout'")
    limits = Thresholds(
        heartbeat_max_age=heartbeat_max_age,
        backlog_ratio=backlog_ratio,
        pending_max_idle=pending_max_idle,
        max_dead=max_dead,
    )
    started = time.monotonic()
    try:
        client = target.connect("health", timeout=timeout)
        try:
            snapshot = take_snapshot(client, target, *_split_maxlens(events_maxlen, errors_maxlen))
        finally:
            client.close()
    except (redis.RedisError, RedisProblem) as exc:  # exit 2 (unreachable), never 1 (degraded)
        message = str(exc) if isinstance(exc, RedisProblem) else explain(exc, target.setting)
        if target.as_json:
            echo_json({"status": "unreachable", "exit_code": EXIT_UNREACHABLE, "reasons": [message]})
        else:
            click.echo(click.style(f"status: unreachable: {message}", fg="red", bold=True), err=True)
        click.get_current_context().exit(EXIT_UNREACHABLE)
    reasons = assess(snapshot, limits)
    status, code = ("degraded", EXIT_DEGRADED) if reasons else ("healthy", EXIT_HEALTHY)
    if target.as_json:
        report = _snapshot_json(snapshot, status, code, reasons)
        report["took_ms"] = round((time.monotonic() - started) * 1000, 1)
        echo_json(report)
    else:
        _print_snapshot(snapshot, status, reasons)
    click.get_current_context().exit(code)
