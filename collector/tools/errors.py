"""``telemetry-collector errors``: which errors dominate a window, and which are new."""

from __future__ import annotations

import time
from itertools import chain
from typing import Iterable, Optional

import click
import msgspec

from collector.durations import Duration, DurationParam, format_duration
from collector.tools.command import ToolCommand
from collector.tools.filters import EventFilter
from collector.tools.formatting import format_age
from collector.tools.options import Target, archive_option, filter_options, redis_options
from collector.tools.output import echo, echo_json, warn
from collector.tools.reading import ReadStats, StoredEvent, archive_events, stream_events
from collector.tools.times import NS_PER_S, TimeParam, check_window, iso_time
from emitters.events import SEVERITY_RANK, ErrorEvent, Event
from emitters.fingerprint import fingerprint, message_template

__all__ = ["errors", "ErrorGroup", "error_key", "group_errors"]

_SAMPLE_LEN = 200


class ErrorGroup(msgspec.Struct, kw_only=True):
    """Occurrences of one kind of error (one fingerprint) in the window."""

    fingerprint: str
    error_type: str
    count: int
    rate_per_hour: float
    first_seen: int  # unix ns
    last_seen: int
    services: list[str]
    severity: str  # the worst seen
    sample_message: str  # of the latest occurrence
    sample_id: str
    new: bool  # no occurrence before the window


def error_key(event: Event) -> tuple[str, str, str]:
    """(fingerprint, error type, message) of an error-stream event.

    Emitters fingerprint every error they report; for one that arrives
    without (an older emitter, a custom event with severity error) the same
    recipe as the emitter's is applied to its type and message template, so
    the two group together.
    """
    if isinstance(event, ErrorEvent):
        error_type, message = event.error_type, event.message
    else:
        error_type, message = event.type, str(event.attrs.get("message", event.type))
    found = event.fingerprint if isinstance(event, ErrorEvent) else None
    return found or fingerprint(error_type, message_template(message)), error_type, message


def group_errors(
    window: Iterable[StoredEvent],
    seen_before: set[str],
    *,
    since_ns: int,
    until_ns: int,
) -> list[ErrorGroup]:
    """Errors of the window grouped by fingerprint, most frequent first.

    ``seen_before`` holds the fingerprints of occurrences before the window:
    those groups are not new. Duplicates of one event (stream and archive,
    redeliveries) count once.
    """
    groups: dict[str, ErrorGroup] = {}
    counted: set[str] = set()
    hours = max(until_ns - since_ns, 1) / (3600 * NS_PER_S)
    for row in sorted(window, key=lambda r: r.event.ts):
        event = row.event
        if event.id in counted:
            continue
        counted.add(event.id)
        key, error_type, message = error_key(event)
        group = groups.get(key)
        if group is None:
            group = groups[key] = ErrorGroup(
                fingerprint=key,
                error_type=error_type,
                count=0,
                rate_per_hour=0.0,
                first_seen=event.ts,
                last_seen=event.ts,
                services=[],
                severity=event.severity,
                sample_message=message,
                sample_id=event.id,
                new=key not in seen_before,
            )
        group.count += 1
        group.last_seen = event.ts
        group.sample_message, group.sample_id = message, event.id
        if event.service not in group.services:
            group.services.append(event.service)
        if SEVERITY_RANK[event.severity] > SEVERITY_RANK[group.severity]:
            group.severity = event.severity
    for group in groups.values():
        group.rate_per_hour = round(group.count / hours, 3)
        group.services.sort()
    return sorted(groups.values(), key=lambda g: (-g.count, -g.last_seen))


def _group_json(group: ErrorGroup) -> dict[str, object]:
    data: dict[str, object] = msgspec.to_builtins(group)
    data["first_seen"] = iso_time(group.first_seen)
    data["last_seen"] = iso_time(group.last_seen)
    return data


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _SAMPLE_LEN else flat[: _SAMPLE_LEN - 3] + "..."


def _print_report(groups: list[ErrorGroup], shown: list[ErrorGroup], since_ns: int, until_ns: int, now_ns: int) -> None:
    total = sum(group.count for group in groups)
    echo(
        click.style("Errors", bold=True)
        + f" {iso_time(since_ns)} .. {iso_time(until_ns)}: {len(groups)} kinds, {total} occurrences, "
        + f"{sum(group.new for group in groups)} new"
    )
    if not shown:
        return
    echo(click.style(f"{'COUNT':>6} {'RATE/H':>8}  {'FIRST':<10} {'LAST':<10} {'NEW':<3}  {'FINGERPRINT':<16}  {'SERVICES':<20} TYPE: SAMPLE", dim=True))
    for group in shown:
        colour = "red" if SEVERITY_RANK[group.severity] >= SEVERITY_RANK["error"] else "yellow"
        echo(
            f"{group.count:>6} {group.rate_per_hour:>8.2f}  "
            f"{format_age((now_ns - group.first_seen) / NS_PER_S) + ' ago':<10} "
            f"{format_age((now_ns - group.last_seen) / NS_PER_S) + ' ago':<10} "
            + click.style(f"{'new' if group.new else '':<3}", fg="magenta", bold=True)
            + f"  {group.fingerprint[:16]:<16}  {','.join(group.services):<20} "
            + click.style(f"{group.error_type}: {_one_line(group.sample_message)}", fg=colour)
        )


@click.command(cls=ToolCommand)
@click.option("--since", type=TimeParam(), default="24h", show_default=True, metavar="TIME", help="Window start.")
@click.option("--until", type=TimeParam(), metavar="TIME", help="Window end (default now).")
@click.option(
    "--history",
    type=DurationParam(),
    default="7d",
    show_default=True,
    help="How far before the window the archive is searched for earlier occurrences (the errors stream is always read whole).",
)
@archive_option
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="Show at most this many kinds (0: all).")
@filter_options
@redis_options
def errors(
    target: Target,
    event_filter: EventFilter,
    since: int,
    until: Optional[int],
    history: Duration,
    archive: Optional[str],
    limit: int,
) -> None:
    """Errors grouped by fingerprint over a window, most frequent first.

    Per kind: count, rate per hour, first and last seen, services, a sample
    message and whether it is new, i.e. never seen before the window (in the
    errors stream, or the archive up to --history back).

    \b
      telemetry-collector errors --since 6h --service engine
    """
    check_window(since, until)
    now_ns = time.time_ns()
    until_ns = until if until is not None else now_ns
    history_ns = since - round(history * NS_PER_S)
    stats = ReadStats()
    window: list[StoredEvent] = []
    seen_before: set[str] = set()
    client = target.connect("errors")
    try:
        rows = chain(
            # The errors stream is read whole: its older part is the history that decides "new".
            stream_events(client, target.names, streams=("errors",), until_ns=until_ns, stats=stats),
            archive_events(archive, since_ns=history_ns, until_ns=until_ns, streams=("errors",), stats=stats),
        )
        for row in rows:
            if row.event.ts < since:
                seen_before.add(error_key(row.event)[0])
            elif event_filter.matches(row.event):
                window.append(row)
    finally:
        client.close()
    groups = group_errors(window, seen_before, since_ns=since, until_ns=until_ns)
    stats.report()
    shown = groups[:limit] if limit else groups
    if target.as_json:
        echo_json(
            {
                "since": iso_time(since),
                "until": iso_time(until_ns),
                "history": format_duration(history),
                "kinds": len(groups),
                "occurrences": sum(group.count for group in groups),
                "groups": [_group_json(group) for group in shown],
            }
        )
    else:
        _print_report(groups, shown, since, until_ns, now_ns)
    if len(shown) < len(groups):
        warn(f"showing {len(shown)} of {len(groups)} kinds (raise --limit, or --limit 0 for all)")
