"""``telemetry-collector health``: is the pipeline keeping up? Exit 0 healthy, 1 degraded, 2 unreachable.

Fast enough for a docker-compose healthcheck: one snapshot
(:mod:`collector.tools.health_snapshot`), judged by
:mod:`collector.tools.health_checks`, printed as a table or JSON.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import click
import msgspec
import redis

from collector.durations import Duration, DurationParam
from collector.exitcodes import EXIT_NOTHING, EXIT_OK, EXIT_USAGE
from collector.redisproblems import RedisProblem, explain
from collector.tools.command import ToolCommand
from collector.tools.formatting import format_age, format_bytes, format_counts
from collector.tools.health_checks import Thresholds, assess
from collector.tools.health_snapshot import Snapshot, take_snapshot
from collector.tools.options import Target, maxlen_options, redis_options
from collector.tools.output import echo, echo_json

__all__ = ["health"]

def _split_maxlens(events_maxlen: int, errors_maxlen: int) -> tuple[dict[str, int], dict[str, int]]:
    """(given on the command line or env, defaults): what the emitters recorded beats only the defaults."""
    context = click.get_current_context()
    given: dict[str, int] = {}
    defaults: dict[str, int] = {}
    for kind, value in (("events", events_maxlen), ("errors", errors_maxlen)):
        source = context.get_parameter_source(f"{kind}_maxlen")
        (defaults if source in (None, click.core.ParameterSource.DEFAULT) else given)[kind] = value
    return given, defaults


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
        counts = format_counts(snapshot.lost)
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
            echo_json({"status": "unreachable", "exit_code": EXIT_USAGE, "reasons": [message]})
        else:
            click.echo(click.style(f"status: unreachable: {message}", fg="red", bold=True), err=True)
        click.get_current_context().exit(EXIT_USAGE)
    reasons = assess(snapshot, limits)
    status, code = ("degraded", EXIT_NOTHING) if reasons else ("healthy", EXIT_OK)
    if target.as_json:
        report = _snapshot_json(snapshot, status, code, reasons)
        report["took_ms"] = round((time.monotonic() - started) * 1000, 1)
        echo_json(report)
    else:
        _print_snapshot(snapshot, status, reasons)
    click.get_current_context().exit(code)
