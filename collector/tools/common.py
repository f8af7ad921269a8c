"""What the operator tools share: options, filters, time parsing, reading, output.

Conventions every tool follows:

- ``--redis-url`` (``$TELEMETRY_REDIS_URL``), ``--stream-prefix``
  (``$TELEMETRY_STREAM_PREFIX``) and ``--json``.
- Exit codes from :mod:`collector.exitcodes`: a bad argument, a secret that
  cannot be read, Redis out of reach or refusing the credentials are one
  ``Error: ...`` line (:mod:`collector.redisproblems`) and exit status 2.
- Colour only when stdout is a terminal (click strips it otherwise) and never
  with ``$NO_COLOR`` set.
- Times are the event's own ``ts``. Streams are read with ``XRANGE`` from a
  millisecond id a little before ``--since`` (emitter clocks may run ahead of
  Redis) to the end (an event can reach Redis long after it happened, e.g.
  from an emitter's spool), then filtered on ``ts``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, TypeVar

import click
import msgspec
import redis

from collector.archive import ArchiveStats, ArchiveStem, read_archive
from collector.durations import parse_duration
from collector.exitcodes import Failure, OneLineUsageError, one_line
from collector.redisconn import connect
from collector.redisproblems import RedisProblem, UrlSetting, check_settings, explain
from emitters.events import (
    SEVERITIES,
    SEVERITY_RANK,
    DecodeError,
    Envelope,
    ErrorEvent,
    Event,
    decode,
    is_error,
)
from emitters.streams import DEFAULT_ERRORS_MAXLEN, DEFAULT_EVENTS_MAXLEN, PAYLOAD_FIELD, StreamNames, stream_names

__all__ = [
    "ToolCommand",
    "ToolGroup",
    "Target",
    "SeverityChoice",
    "url_setting",
    "redis_options",
    "filter_options",
    "maxlen_options",
    "archive_option",
    "TimeParam",
    "parse_time",
    "check_window",
    "EventFilter",
    "StoredEvent",
    "ReadStats",
    "decode_entry",
    "read_stream",
    "stream_events",
    "archive_events",
    "iso_time",
    "severity_label",
    "format_age",
    "format_bytes",
    "format_relative",
    "event_details",
    "event_line",
    "event_json",
    "echo",
    "echo_json",
    "warn",
    "first_line",
]

F = TypeVar("F", bound=Callable[..., Any])

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
# How far before --since the stream scan starts: emitter clocks can run ahead of Redis's.
CLOCK_SKEW_NS = 5 * 60 * NS_PER_S
PAGE_SIZE = 1000
_PAYLOAD_KEY = PAYLOAD_FIELD.encode()
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__) | {"type"}


# -- one-line usage errors ---------------------------------------------------


def _command_path(info_name: Optional[str], parent: Optional[click.Context]) -> str:
    return " ".join(part for part in ((parent.command_path if parent else ""), info_name or "") if part)


class _OneLineErrors:
    """Mixin: usage errors become one line, Redis failures a one-line ClickException."""

    def make_context(
        self,
        info_name: Optional[str],
        args: list[str],
        parent: Optional[click.Context] = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except (click.exceptions.NoArgsIsHelpError, OneLineUsageError):
            raise
        except click.UsageError as exc:
            raise one_line(exc, _command_path(info_name, parent)) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise one_line(exc, ctx.command_path) from None
        except RedisProblem as exc:
            raise Failure(str(exc)) from None
        except redis.RedisError as exc:
            raise Failure(explain(exc, url_setting(ctx))) from None
        except BrokenPipeError:
            # `... | head`: the reader left. Point stdout at /dev/null so the
            # interpreter's final flush does not complain, and exit quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)


class ToolCommand(_OneLineErrors, click.Command):
    """A tool command: one-line usage errors, one-line Redis failures."""


class ToolGroup(_OneLineErrors, click.Group):
    """A group of tool commands (``dlq``) with the same one-line errors."""

    command_class = ToolCommand


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- shared options ------------------------------------------------------------


_ORIGINS = {
    click.core.ParameterSource.COMMANDLINE: "from the command line",
    click.core.ParameterSource.ENVIRONMENT: "from $TELEMETRY_REDIS_URL",
}


def url_setting(ctx: click.Context) -> UrlSetting:
    """The ``--redis-url`` of this command (or its parent's) and where its value came from."""
    while ctx.parent is not None and "redis_url" not in ctx.params:
        ctx = ctx.parent
    source = ctx.get_parameter_source("redis_url")
    origin = _ORIGINS.get(source, "the default") if source is not None else "the default"
    return UrlSetting(str(ctx.params.get("redis_url", "")), "--redis-url", origin)


class Target(NamedTuple):
    """Where a tool reads: the Redis URL, the key prefix, and the output form."""

    redis_url: str
    prefix: str
    as_json: bool
    url_origin: str = "the default"

    @property
    def names(self) -> StreamNames:
        return stream_names(self.prefix)

    @property
    def setting(self) -> UrlSetting:
        return UrlSetting(self.redis_url, "--redis-url", self.url_origin)

    def connect(self, tool: str, *, timeout: float = 10.0) -> redis.Redis:
        """A client, after the URL and every secret and TLS file it needs were checked."""
        check_settings(self.setting)
        return connect(
            self.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 5.0),
            client_name=f"telemetry-{tool}",
        )


def _apply(func: Callable[..., Any], options: list[Callable[[Any], Any]]) -> Any:
    # click lists options in the order their decorators appear, i.e. reversed.
    for option in reversed(options):
        func = option(func)
    return func


def redis_options(func: F) -> F:
    """``--redis-url``, ``--stream-prefix`` and ``--json``, passed on as ``target``."""

    @functools.wraps(func)
    def wrapper(*args: Any, redis_url: str, stream_prefix: str, as_json: bool, **kwargs: Any) -> Any:
        origin = url_setting(click.get_current_context()).origin
        return func(*args, target=Target(redis_url, stream_prefix, as_json, origin), **kwargs)

    return _apply(  # type: ignore[no-any-return]
        wrapper,
        [
            click.option(
                "--redis-url",
                envvar="TELEMETRY_REDIS_URL",
                default="redis://localhost:6379/0",
                show_default=True,
                show_envvar=True,
                metavar="URL",
                help="Redis to read (password from $TELEMETRY_REDIS_PASSWORD[_FILE], not the URL).",
            ),
            click.option(
                "--stream-prefix",
                envvar="TELEMETRY_STREAM_PREFIX",
                default="telemetry",
                show_default=True,
                show_envvar=True,
                help="Key prefix of the streams ({prefix}:events, {prefix}:errors, ...).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output."),
        ],
    )


class SeverityChoice(click.Choice):
    """A severity name, case-insensitive; the spellings the logging world uses are taken too."""

    ALIASES = {"warning": "warn", "fatal": "critical", "crit": "critical", "err": "error"}

    def __init__(self) -> None:
        super().__init__(SEVERITIES, case_sensitive=False)

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if isinstance(value, str):
            value = self.ALIASES.get(value.lower(), value)
        return super().convert(value, param, ctx)


def filter_options(func: F) -> F:
    """``--service``, ``--type``, ``--severity``, ``--trace``, ``--request``, ``--job`` as ``event_filter``."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        services: tuple[str, ...],
        types: tuple[str, ...],
        severity: Optional[str],
        trace_id: Optional[str],
        request_id: Optional[str],
        job_id: Optional[str],
        **kwargs: Any,
    ) -> Any:
        event_filter = EventFilter(
            services=services,
            types=types,
            min_severity=severity.lower() if severity else None,
            trace_id=trace_id.lower() if trace_id else None,
            request_id=request_id,
            job_id=job_id,
        )
        return func(*args, event_filter=event_filter, **kwargs)

    return _apply(  # type: ignore[no-any-return]
        wrapper,
        [
            click.option("--service", "services", multiple=True, metavar="GLOB", help="Service name or glob (repeatable)."),
            click.option("--type", "types", multiple=True, metavar="GLOB", help="Event type or glob, e.g. 'generation.*' (repeatable)."),
            click.option(
                "--severity",
                type=SeverityChoice(),
                help="Only events at least this severe ('warning' is taken for 'warn').",
            ),
            click.option("--trace", "trace_id", metavar="ID", help="Trace id (a prefix of 8+ hex digits is enough)."),
            click.option("--request", "request_id", metavar="ID", help="Request id."),
            click.option("--job", "job_id", metavar="ID", help="Job id."),
        ],
    )


def maxlen_options(func: F) -> F:
    """The stream caps the emitters use, for headroom and replay trimming."""
    return _apply(  # type: ignore[no-any-return]
        func,
        [
            click.option(
                "--events-maxlen",
                type=click.IntRange(min=1),
                default=DEFAULT_EVENTS_MAXLEN,
                show_default=True,
                envvar="TELEMETRY_EVENTS_MAXLEN",
                help="MAXLEN the emitters cap the events stream at.",
            ),
            click.option(
                "--errors-maxlen",
                type=click.IntRange(min=1),
                default=DEFAULT_ERRORS_MAXLEN,
                show_default=True,
                envvar="TELEMETRY_ERRORS_MAXLEN",
                help="MAXLEN the emitters cap the errors stream at.",
            ),
        ],
    )


archive_option = click.option(
    "--archive",
    type=click.Path(exists=True, file_okay=False, readable=True),
    envvar="TELEMETRY_ARCHIVE_DIR",
    metavar="DIR",
    help="Also read the collector's JSONL archive in DIR (events-YYYY-MM-DD.jsonl, errors-...).",
)


# -- time ----------------------------------------------------------------------


def parse_time(text: str, now_ns: int) -> int:
    """Unix ns for ``now``, a duration ago (``90s``, ``15m``, ``1h``, ``7d``) or an ISO-8601 time.

    ISO times without a zone are UTC, like the archive's file names.
    """
    value = text.strip()
    if value.lower() == "now":
        return now_ns
    try:
        return now_ns - round(parse_duration(value) * NS_PER_S)
    except ValueError:
        pass
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"expected a duration ago (30s, 15m, 1h, 7d), 'now' or an ISO-8601 time "
            f"such as 2024-05-01T12:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return round(moment.timestamp() * 1e6) * 1000


class TimeParam(click.ParamType):
    """A point in time as unix ns; relative values count back from when the command started."""

    name = "time"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value), time.time_ns())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def check_window(since_ns: Optional[int], until_ns: Optional[int]) -> None:
    if since_ns is not None and until_ns is not None and since_ns > until_ns:
        raise click.BadParameter(
            f"{iso_time(since_ns)} is after --until {iso_time(until_ns)}", param_hint="'--since'"
        )


# -- filtering -----------------------------------------------------------------


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """The filters every tool takes; all given ones must match (globs within one are OR-ed)."""

    services: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    min_severity: Optional[str] = None
    trace_id: Optional[str] = None
    request_id: Optional[str] = None
    job_id: Optional[str] = None

    def matches(self, event: Event) -> bool:
        if self.services and not any(fnmatch.fnmatchcase(event.service, g) for g in self.services):
            return False
        if self.types and not any(fnmatch.fnmatchcase(event.type, g) for g in self.types):
            return False
        if self.min_severity is not None and SEVERITY_RANK[event.severity] < SEVERITY_RANK[self.min_severity]:
            return False
        if self.trace_id is not None and not (event.trace_id or "").startswith(self.trace_id):
            return False
        if self.request_id is not None and event.request_id != self.request_id:
            return False
        if self.job_id is not None and event.job_id != self.job_id:
            return False
        return True


# -- reading -------------------------------------------------------------------


class StoredEvent(NamedTuple):
    """An event and where it was found: ``events``/``errors`` (or ``live``) and its stream id."""

    stream: str
    stream_id: Optional[str]
    event: Event


class ReadStats:
    """Entries a read skipped because they do not decode (the collector dead-letters those)."""

    def __init__(self) -> None:
        self.undecodable = 0
        self.archive = ArchiveStats()

    def report(self) -> None:
        if self.undecodable:
            warn(f"skipped {self.undecodable} stream entries that do not decode (see 'dlq list')")
        if self.archive.bad_lines:
            warn(f"skipped {self.archive.bad_lines} archive lines that do not parse")


def decode_entry(fields: dict[bytes, bytes]) -> Optional[Event]:
    payload = fields.get(_PAYLOAD_KEY)
    if payload is None:
        return None
    try:
        return decode(payload)
    except DecodeError:
        return None


def read_stream(
    client: redis.Redis,
    key: str,
    stream: str,
    *,
    start: str = "-",
    end: str = "+",
    reverse: bool = False,
    stats: Optional[ReadStats] = None,
) -> Iterator[StoredEvent]:
    """Decoded entries of one stream between two ids, paged, optionally newest first."""
    while True:
        if reverse:
            entries = client.xrevrange(key, max=end, min=start, count=PAGE_SIZE)
        else:
            entries = client.xrange(key, min=start, max=end, count=PAGE_SIZE)
        for entry_id, fields in entries:
            event = decode_entry(fields)
            if event is None:
                if stats is not None:
                    stats.undecodable += 1
                continue
            yield StoredEvent(stream, entry_id.decode(), event)
        if len(entries) < PAGE_SIZE:
            return
        last = "(" + entries[-1][0].decode()
        if reverse:
            end = last
        else:
            start = last


def _in_window(ts: int, since_ns: Optional[int], until_ns: Optional[int]) -> bool:
    return (since_ns is None or ts >= since_ns) and (until_ns is None or ts <= until_ns)


def stream_events(
    client: redis.Redis,
    names: StreamNames,
    *,
    since_ns: Optional[int] = None,
    until_ns: Optional[int] = None,
    streams: Iterable[ArchiveStem] = ("events", "errors"),
    stats: Optional[ReadStats] = None,
) -> Iterator[StoredEvent]:
    """Events of the streams whose own ``ts`` is within the window."""
    start = "-" if since_ns is None else str(max(0, since_ns - CLOCK_SKEW_NS) // NS_PER_MS)
    for stream in streams:
        for row in read_stream(client, getattr(names, stream), stream, start=start, stats=stats):
            if _in_window(row.event.ts, since_ns, until_ns):
                yield row


def archive_events(
    directory: Optional[str],
    *,
    since_ns: Optional[int] = None,
    until_ns: Optional[int] = None,
    streams: Iterable[ArchiveStem] = ("events", "errors"),
    contains: Optional[str] = None,
    stats: Optional[ReadStats] = None,
) -> Iterator[StoredEvent]:
    """Events of the JSONL archive in the window; nothing when no directory is given."""
    if directory is None:
        return
    for line in read_archive(
        directory,
        since_ns=since_ns,
        until_ns=until_ns,
        streams=streams,
        contains=contains.encode() if contains else None,
        stats=stats.archive if stats is not None else None,
    ):
        yield StoredEvent(line.stream, line.stream_id, line.event)


# -- formatting ----------------------------------------------------------------

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


def iso_time(ts_ns: int) -> str:
    """UTC time with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    moment = dt.datetime.fromtimestamp(ts_ns // NS_PER_MS / 1000, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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


def _color() -> Optional[bool]:
    # None lets click decide (colour on a TTY only); NO_COLOR turns it off everywhere.
    return False if os.environ.get("NO_COLOR") else None


def echo(line: str = "") -> None:
    click.echo(line, color=_color())


def echo_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


def warn(message: str) -> None:
    click.echo(click.style(f"warning: {message}", fg="yellow"), err=True, color=_color())
