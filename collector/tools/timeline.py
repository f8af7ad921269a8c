"""``telemetry-collector timeline ID``: one trace, request or job, start to end."""

from __future__ import annotations

from itertools import chain
from typing import Iterable, Literal, Optional

import click
import msgspec

from collector.durations import Duration, DurationParam, format_duration
from collector.tools.command import ToolCommand
from collector.tools.formatting import event_details, event_json, format_age, format_relative, severity_label
from collector.tools.options import Target, archive_option, redis_options
from collector.tools.output import echo, echo_json
from collector.tools.reading import ReadStats, StoredEvent, archive_events, stream_events
from collector.tools.times import NS_PER_MS, NS_PER_S, TimeParam, check_window, iso_time
from emitters.events import Event, is_error

__all__ = ["timeline", "IdKind", "matched_by", "Step", "Timeline", "build_timeline", "timeline_json"]

IdKind = Literal["any", "trace", "request", "job"]
# A shortened trace id (as `tail` prints it) is enough, but not fewer digits than that.
MIN_TRACE_PREFIX = 8


def matched_by(event: Event, wanted: str, kind: IdKind) -> list[str]:
    """Which of the event's ids equal ``wanted`` (trace ids also by a prefix of 8+ digits)."""
    found: list[str] = []
    if kind in ("any", "trace"):
        trace = wanted.lower()
        event_trace = event.trace_id or ""  # events outside every scope carry no trace
        if event_trace == trace or (len(trace) >= MIN_TRACE_PREFIX and event_trace.startswith(trace)):
            found.append("trace")
    if kind in ("any", "request") and event.request_id == wanted:
        found.append("request")
    if kind in ("any", "job") and event.job_id == wanted:
        found.append("job")
    return found


class Step(msgspec.Struct):
    """One event on the timeline and how it relates to the one before it."""

    row: StoredEvent
    offset_ns: int
    delta_ns: int
    handoff_from: Optional[str]
    gap: bool


class Timeline(msgspec.Struct):
    steps: list[Step]
    services: list[str]  # in order of first appearance
    matched_by: list[str]

    @property
    def duration_ns(self) -> int:
        return self.steps[-1].offset_ns if self.steps else 0

    @property
    def gaps(self) -> int:
        return sum(step.gap for step in self.steps)


def build_timeline(rows: Iterable[StoredEvent], wanted: str, kind: IdKind, gap_ns: int) -> Timeline:
    """Distinct matching events in time order, with offsets, handoffs and gaps over ``gap_ns``."""
    unique: dict[str, StoredEvent] = {}
    matched: set[str] = set()
    for row in rows:
        how = matched_by(row.event, wanted, kind)
        if how:
            matched.update(how)
            unique.setdefault(row.event.id, row)
    ordered = sorted(unique.values(), key=lambda r: (r.event.ts, r.stream_id or "", r.event.id))
    steps: list[Step] = []
    services: list[str] = []
    for index, row in enumerate(ordered):
        previous = ordered[index - 1] if index else None
        delta = row.event.ts - previous.event.ts if previous else 0
        handoff = previous.event.service if previous and previous.event.service != row.event.service else None
        steps.append(Step(row, row.event.ts - ordered[0].event.ts, delta, handoff, delta > gap_ns))
        if row.event.service not in services:
            services.append(row.event.service)
    return Timeline(steps, services, sorted(matched))


def _archive_needle(wanted: str, kind: IdKind) -> Optional[str]:
    """A string every matching archive line contains, to skip the rest undecoded.

    Trace ids are stored lowercase and matched case-insensitively, so an id
    given in another case cannot be searched for verbatim.
    """
    if kind == "trace":
        return wanted.lower()
    if kind == "any" and wanted != wanted.lower():
        return None
    return wanted


def timeline_json(wanted: str, timeline: Timeline, gap: Duration) -> dict[str, object]:
    return {
        "id": wanted,
        "matched_by": timeline.matched_by,
        "start": iso_time(timeline.steps[0].row.event.ts) if timeline.steps else None,
        "duration_ms": timeline.duration_ns / NS_PER_MS,
        "services": timeline.services,
        "gap_threshold_ms": gap * 1000,
        "gaps": timeline.gaps,
        "events": [
            {
                **event_json(step.row),
                "offset_ms": step.offset_ns / NS_PER_MS,
                "delta_ms": step.delta_ns / NS_PER_MS,
                "handoff_from": step.handoff_from,
                "gap": step.gap,
            }
            for step in timeline.steps
        ],
    }


def _print_timeline(wanted: str, timeline: Timeline, gap: Duration) -> None:
    first = timeline.steps[0].row.event
    echo(
        click.style(f"Timeline of {'/'.join(timeline.matched_by)} {wanted}", bold=True)
        + f": {len(timeline.steps)} events over {format_age(timeline.duration_ns / NS_PER_S)} from {iso_time(first.ts)},"
        + f" services {' -> '.join(timeline.services)}, "
        + (click.style(f"{timeline.gaps} gap(s) over {format_duration(gap)}", fg="yellow", bold=True) if timeline.gaps else "no gaps")
    )
    width = max(len(format_relative(step.offset_ns)) for step in timeline.steps)
    for step in timeline.steps:
        event = step.row.event
        if step.gap:
            echo(click.style(f"  !! gap of {format_relative(step.delta_ns)[1:]} (over {format_duration(gap)})", fg="yellow", bold=True))
        if step.handoff_from is not None:
            echo(click.style(f"  >> handoff {step.handoff_from} -> {event.service}", fg="magenta"))
        details = " ".join(event_details(event))
        line = (
            f"  {format_relative(step.offset_ns):>{width}} "
            + click.style(f"{event.service:<12}", fg="cyan")
            + " "
            + click.style(f"{event.type:<20}", bold=True)
            + f" {severity_label(event.severity):<5} "
            + (click.style(details, fg="red", bold=True) if is_error(event) else details)
        )
        echo(line)


@click.command(cls=ToolCommand)
@click.argument("correlation_id", metavar="ID")
@click.option(
    "--kind",
    type=click.Choice(["any", "trace", "request", "job"]),
    default="any",
    show_default=True,
    help="Which id ID is.",
)
@click.option(
    "--gap",
    type=DurationParam(),
    default="1s",
    show_default=True,
    help="Flag pauses between consecutive events longer than this.",
)
@click.option("--since", type=TimeParam(), metavar="TIME", help="Only events from this time (default: all kept).")
@click.option("--until", type=TimeParam(), metavar="TIME", help="Only events up to this time.")
@archive_option
@redis_options
def timeline(
    target: Target,
    correlation_id: str,
    kind: IdKind,
    gap: Duration,
    since: Optional[int],
    until: Optional[int],
    archive: Optional[str],
) -> None:
    """Every event carrying ID (a trace, request or job id) in time order.

    Times are relative to the first event; a change of service is marked as a
    handoff and a pause longer than --gap as a gap. Exit status 1 when no
    event carries ID.

    \b
      telemetry-collector timeline req-8f2c --gap 500ms --archive logs/
    """
    check_window(since, until)
    stats = ReadStats()
    client = target.connect("timeline")
    try:
        found = build_timeline(
            chain(
                stream_events(client, target.names, since_ns=since, until_ns=until, stats=stats),
                archive_events(
                    archive, since_ns=since, until_ns=until, contains=_archive_needle(correlation_id, kind), stats=stats
                ),
            ),
            correlation_id,
            kind,
            round(gap * NS_PER_S),
        )
    finally:
        client.close()
    stats.report()
    if target.as_json:
        echo_json(timeline_json(correlation_id, found, gap))
    elif found.steps:
        _print_timeline(correlation_id, found, gap)
    if not found.steps:
        where = "the streams" + (f" or {archive}" if archive else "")
        raise click.ClickException(f"no event in {where} carries {kind if kind != 'any' else 'the'} id {correlation_id!r}")
