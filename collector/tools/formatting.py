"""How events and figures read on a terminal: one line per event, short ages and sizes, JSON rows."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import click
import msgspec

from collector.tools.reading import StoredEvent
from collector.tools.times import NS_PER_MS, iso_time
from emitters.events import Envelope, ErrorEvent, Event, is_error

__all__ = [
    "severity_label",
    "format_age",
    "format_bytes",
    "format_relative",
    "format_counts",
    "event_details",
    "event_line",
    "event_json",
]

_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__) | {"type"}

_SEVERITY_STYLE: dict[str, dict[str, Any]] = {
    "debug": {"dim": True},
    "info": {"fg": "green"},
    "warn": {"fg": "yellow", "bold": True},
    "error": {"fg": "red", "bold": True},
    "critical": {"fg": "white", "bg": "red", "bold": True},
}


_SEVERITY_LABEL = {"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR", "critical": "CRIT"}


def severity_label(severity: str) -> str:
    """Upper-case severity, at most five letters so columns line up."""
    return _SEVERITY_LABEL[severity]


def format_age(seconds: float) -> str:
    """A short human duration: ``850ms``, ``12.5s``, ``4m05s``, ``3h12m``, ``2d04h``."""
    if seconds < 0:
        return "-" + format_age(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_relative(delta_ns: int) -> str:
    """An offset from a timeline's start: ``+12.3ms``, ``+2.512s``, ``+3m02.1s``."""
    ms = delta_ns / NS_PER_MS
    if ms < 1000:
        return f"+{ms:.1f}ms"
    if ms < 60_000:
        return f"+{ms / 1000:.3f}s"
    minutes, rest = divmod(ms / 1000, 60)
    return f"+{int(minutes)}m{rest:04.1f}s"


def format_bytes(size: Optional[int]) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_counts(counts: Mapping[str, int], between: str = " ") -> str:
    """Counts by name, sorted by name: ``events:g1 3, errors:g1 1`` (empty when there are none)."""
    return ", ".join(f"{name}{between}{count}" for name, count in sorted(counts.items()))


def _value(value: Any) -> str:
    if isinstance(value, str):
        if value == "" or any(ch.isspace() for ch in value) or '"' in value:
            return msgspec.json.encode(value).decode()
        return value
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def event_details(event: Event) -> list[str]:
    """The type-specific fields and attrs of an event as ``key=value`` words, one line."""
    data = msgspec.to_builtins(event)
    words: list[str] = []
    skip = set(_ENVELOPE_FIELDS)
    if isinstance(event, ErrorEvent):
        words.append(f"{event.error_type}: {' '.join(event.message.split())}")
        skip |= {"error_type", "message", "stack"}
    for key, value in data.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            words.extend(f"{key}.{inner}={_value(item)}" for inner, item in value.items())
        else:
            words.append(f"{key}={_value(value)}")
    words.extend(f"{key}={_value(value)}" for key, value in event.attrs.items())
    return words


def _ids(event: Event) -> list[str]:
    words = [f"{name}={_value(value)}" for name, value in (("req", event.request_id), ("job", event.job_id)) if value]
    if event.trace_id:  # events outside every scope carry no trace
        words.append(f"trace={event.trace_id[:8]}")
    return words


def event_line(row: StoredEvent) -> str:
    """One readable line per event; errors stand out when colour is on."""
    event = row.event
    style = _SEVERITY_STYLE[event.severity]
    details = " ".join(event_details(event))
    if is_error(event):
        details = click.style(details, fg="red")
    return " ".join(
        part
        for part in (
            click.style(iso_time(event.ts), dim=True),
            click.style(f"{severity_label(event.severity):<5}", **style),
            click.style(f"{event.service:<12}", fg="cyan"),
            click.style(f"{event.type:<20}", bold=True),
            click.style(" ".join(_ids(event)), dim=True),
            details,
        )
        if part
    )


def event_json(row: StoredEvent) -> dict[str, Any]:
    """The event as the archive stores it (wire fields) plus where it was found."""
    data: dict[str, Any] = msgspec.to_builtins(row.event)
    data["stream"] = row.stream
    data["stream_id"] = row.stream_id
    return data
