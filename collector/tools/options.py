"""The options every tool shares, and the values they hand the command.

``--redis-url`` (``$TELEMETRY_REDIS_URL``), ``--stream-prefix``
(``$TELEMETRY_STREAM_PREFIX``) and ``--json`` become one :class:`Target`; the
event filters one :class:`~collector.tools.filters.EventFilter`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, TypeVar

import click
import redis

from collector.exitcodes import Failure
from collector.redisconn import connect
from collector.redisproblems import RedisProblem, UrlSetting, check_settings, probe
from collector.tools.filters import EventFilter
from emitters.events import SEVERITIES
from emitters.streams import DEFAULT_ERRORS_MAXLEN, DEFAULT_EVENTS_MAXLEN, StreamNames, stream_names

__all__ = [
    "Target",
    "SeverityChoice",
    "url_setting",
    "check_redis_url",
    "redis_options",
    "filter_options",
    "maxlen_options",
    "archive_option",
]

F = TypeVar("F", bound=Callable[..., Any])

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


def check_redis_url() -> None:
    """Probe this command's ``--redis-url`` now: a problem is one line and exit 2, as in every command (#17)."""
    try:
        probe(url_setting(click.get_current_context()))
    except RedisProblem as exc:
        raise Failure(str(exc)) from None


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
    """The stream caps the emitters use, for the headroom ``health`` judges backlogs by."""
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
