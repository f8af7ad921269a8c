"""``telemetry-collector alerts``: what is firing now and the latest notifications.

Reads one consumer group's alert state (``{prefix}:alerts:{group}:state``)
and the alerts stream (``{prefix}:alerts``); changes nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click
import msgspec

from collector.alerts.records import AlertRecord, StoredAlert
from collector.alerts.state import AlertState
from collector.config import CollectorConfig
from collector.tools.common import Target, ToolCommand, echo, echo_json, format_age, redis_options

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


def active_row(stored: StoredAlert, now: float) -> str:
    record = stored.record
    clearing = f" (clear for {format_age(now - stored.clear_since)})" if stored.clear_since is not None else ""
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


group_option = click.option(
    "--group",
    envvar="TELEMETRY_GROUP",
    show_envvar=True,
    default=DEFAULT_GROUP,
    show_default=True,
    help="Consumer group whose alerts to show (each group keeps its own alert state).",
)


@click.command("alerts", cls=ToolCommand)
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
def alerts(target: Target, limit: int, active_only: bool, group: str) -> None:
    """Alerts firing now, then the latest notifications (firing, repeated, resolved)."""
    client = target.connect("alerts")
    try:
        state = AlertState(client, target.names, group)
        firing = sorted(
            (stored for stored in state.alerts().values() if stored.status == "firing"),
            key=lambda stored: stored.record.starts_at,
        )
        recent = [] if active_only or limit == 0 else state.recent(limit)
    finally:
        client.close()
    now = time.time()
    if target.as_json:
        active_rows = []
        for stored in firing:
            row = msgspec.to_builtins(stored.record)
            row["last_notified_at"] = stored.notified
            row["clear_since"] = stored.clear_since
            active_rows.append(row)
        recent_rows = [{"id": entry_id, **msgspec.to_builtins(record)} for entry_id, record in recent]
        echo_json({"active": active_rows, "recent": recent_rows})
        return
    echo(click.style(f"Firing now: {len(firing)}", bold=True))
    for stored in firing:
        echo(active_row(stored, now))
    if active_only:
        return
    echo()
    echo(click.style(f"Latest notifications: {len(recent)}", bold=True))
    for _, record in recent:
        echo(recent_row(record))
