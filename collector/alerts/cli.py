"""``telemetry-collector alerts``: what is firing now, the latest notifications, and silences.

``alerts`` reads one consumer group's alert state (``{prefix}:alerts:{group}:state``),
the silences and the alerts stream (``{prefix}:alerts``) and changes nothing;
``alerts silence``, ``alerts silences`` and ``alerts expire ID`` manage the
silences every collector obeys.
"""

from __future__ import annotations

import datetime as dt
import getpass
import time
from typing import Any, Optional

import click
import msgspec

from collector.alerts.records import AlertRecord, StoredAlert
from collector.alerts.silences import LabelMatcher, Silence, SilenceStore, parse_matcher, silenced_by
from collector.alerts.state import AlertState
from collector.config import CollectorConfig
from collector.durations import DurationParam
from collector.tools.command import ToolGroup
from collector.tools.formatting import format_age
from collector.tools.options import Target, redis_options
from collector.tools.output import echo, echo_json

__all__ = ["alerts"]

DEFAULT_GROUP = CollectorConfig().group

_STATUS_STYLE: dict[str, dict[str, Any]] = {
    "firing": {"fg": "red", "bold": True},
    "resolved": {"fg": "green"},
}


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _labels(record: AlertRecord) -> str:
    return ",".join(f"{name}={value}" for name, value in record.labels.items() if name != "severity") or "-"


def _value(record: AlertRecord) -> str:
    return "-" if record.value is None else f"{record.value:g}"


def active_row(stored: StoredAlert, now: float, silence: Optional[str]) -> str:
    record = stored.record
    clearing = f" (clear for {format_age(now - stored.clear_since)})" if stored.clear_since is not None else ""
    clearing += f" [silenced by {silence}]" if silence else ""
    return "  ".join(
        (
            click.style(f"{format_age(now - _seconds(record.starts_at)):>8}", dim=True),
            click.style(f"{record.labels.get('severity', '-'):<8}", **_STATUS_STYLE["firing"]),
            click.style(f"{record.rule:<18}", bold=True),
            f"{_labels(record):<28}",
            f"{_value(record):>8}",
            record.summary + clearing,
        )
    )


def recent_row(record: AlertRecord) -> str:
    when = record.ends_at if record.status == "resolved" and record.ends_at else record.starts_at
    return "  ".join(
        (
            click.style(when, dim=True),
            click.style(f"{record.status:<8}", **_STATUS_STYLE[record.status]),
            click.style(f"{record.rule:<18}", bold=True),
            f"{_labels(record):<28}",
            record.summary,
        )
    )


def silence_row(silence: Silence, now: float) -> str:
    state = "active" if silence.active(now) else "ended"
    left = f"ends in {format_age(silence.ends_at - now)}" if silence.active(now) else f"ended {format_age(now - silence.ends_at)} ago"
    return "  ".join(
        (
            click.style(silence.id, bold=True),
            click.style(f"{state:<6}", fg="yellow" if state == "active" else None, dim=state != "active"),
            f"{' '.join(map(str, silence.matchers)):<32}",
            f"{left:<20}",
            f"{silence.created_by}: {silence.comment}",
        )
    )


def _silence_json(silence: Silence, now: float) -> dict[str, Any]:
    return {**msgspec.to_builtins(silence), "matchers": [str(m) for m in silence.matchers], "active": silence.active(now)}


group_option = click.option(
    "--group",
    envvar="TELEMETRY_GROUP",
    show_envvar=True,
    default=DEFAULT_GROUP,
    show_default=True,
    help="Consumer group whose alerts to show (each group keeps its own alert state).",
)


@click.group("alerts", cls=ToolGroup, invoke_without_command=True)
@redis_options
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the latest notifications to list (0: none).",
)
@click.option("--active", "active_only", is_flag=True, help="Only the alerts firing now.")
@group_option
@click.pass_context
def alerts(ctx: click.Context, target: Target, limit: int, active_only: bool, group: str) -> None:
    """Alerts firing now (and what silences them), then the latest notifications."""
    if ctx.invoked_subcommand is not None:
        return
    client = target.connect("alerts")
    try:
        state = AlertState(client, target.names, group)
        firing = sorted(
            (stored for stored in state.alerts().values() if stored.status == "firing"),
            key=lambda stored: stored.record.starts_at,
        )
        silences = SilenceStore(client, target.names).all()
        recent = [] if active_only or limit == 0 else state.recent(limit)
    finally:
        client.close()
    now = time.time()
    active_silences = [silence for silence in silences if silence.active(now)]
    if target.as_json:
        active_rows = []
        for stored in firing:
            row = msgspec.to_builtins(stored.record)
            row["last_notified_at"] = stored.notified
            row["clear_since"] = stored.clear_since
            row["silenced_by"] = silenced_by(stored.record, active_silences, now)
            active_rows.append(row)
        recent_rows = [{"id": entry_id, **msgspec.to_builtins(record)} for entry_id, record in recent]
        silence_rows = [_silence_json(silence, now) for silence in active_silences]
        echo_json({"group": group, "active": active_rows, "silences": silence_rows, "recent": recent_rows})
        return
    echo(click.style(f"Firing now: {len(firing)}", bold=True) + click.style(f"  (consumer group {group})", dim=True))
    for stored in firing:
        echo(active_row(stored, now, silenced_by(stored.record, active_silences, now)))
    echo()
    echo(click.style(f"Silences: {len(active_silences)}", bold=True))
    for silence in active_silences:
        echo(silence_row(silence, now))
    if active_only:
        return
    echo()
    echo(click.style(f"Latest notifications: {len(recent)}", bold=True))
    for _, record in recent:
        echo(recent_row(record))


def _matchers(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[LabelMatcher]:
    try:
        return [parse_matcher(value) for value in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@alerts.command()
@click.option(
    "--matcher",
    "matchers",
    multiple=True,
    required=True,
    callback=_matchers,
    metavar="LABEL=VALUE",
    help="Which alerts: a label (rule is the rule's name) with =, !=, =~ or !~; repeat to narrow down.",
)
@click.option("--for", "duration", type=DurationParam(), default="2h", show_default=True, help="How long it holds.")
@click.option("--comment", required=True, help="Why (shown with the silence and in the alerts stream).")
@click.option("--author", default=None, help="Who [default: the login name].")
@redis_options
def silence(target: Target, matchers: list[LabelMatcher], duration: float, comment: str, author: Optional[str]) -> None:
    """Hold back the notifications of matching alerts in every collector for a while."""
    if duration <= 0:
        raise click.BadParameter("must be > 0", param_hint="--for")
    client = target.connect("alerts")
    try:
        created = SilenceStore(client, target.names).create(
            matchers, duration=duration, comment=comment, created_by=author or getpass.getuser(), now=time.time()
        )
    finally:
        client.close()
    if target.as_json:
        echo_json(_silence_json(created, time.time()))
    else:
        echo(created.id)


@alerts.command("silences")
@click.option("--all", "show_all", is_flag=True, help="Ended silences too (kept for a week after they end).")
@redis_options
def silences_(target: Target, show_all: bool) -> None:
    """The silences in force (every collector obeys them)."""
    client = target.connect("alerts")
    try:
        now = time.time()
        listed = [silence for silence in SilenceStore(client, target.names).all() if show_all or silence.active(now)]
    finally:
        client.close()
    if target.as_json:
        echo_json([_silence_json(silence, now) for silence in listed])
        return
    for silence in listed:
        echo(silence_row(silence, now))


@alerts.command()
@click.argument("silence_id", metavar="ID")
@redis_options
def expire(target: Target, silence_id: str) -> None:
    """End silence ID now: its alerts are notified again."""
    client = target.connect("alerts")
    try:
        ended = SilenceStore(client, target.names).expire(silence_id, time.time())
    finally:
        client.close()
    if ended is None:
        raise click.ClickException(f"no silence {silence_id!r} (see 'telemetry-collector alerts silences --all')")
    if target.as_json:
        echo_json(_silence_json(ended, time.time()))
    else:
        echo(f"expired {ended.id}")
