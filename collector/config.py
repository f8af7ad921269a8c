"""The collector's one typed configuration.

Values come from, highest precedence first: command-line flags, environment
variables (``TELEMETRY_<NAME>``, the same names as the flags), a TOML file
(``--config``) and the defaults below. Everything is merged into one plain
mapping and converted with :func:`msgspec.convert` in one go, so a bad value
anywhere is reported with its field path and the rule it broke::

    Expected `int` >= 1 - at `$.collector.batch_size` (from $TELEMETRY_BATCH_SIZE)

Secrets are not part of the config: the Redis password comes from the URL or
from ``TELEMETRY_REDIS_PASSWORD[_FILE]`` (see :mod:`collector.redisconn`), and
:func:`redacted` masks anything secret-looking before a config is shown.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, NamedTuple, Optional

import msgspec
from msgspec import Meta

from collector import durations
from collector.alerts.config import AlertsConfig
from collector.durations import Duration
from collector.http import config as http_config
from collector.http.config import HttpConfig
from collector.logsetup import redact_secrets
from collector.alerts import config as alerts_config
from collector.configerrors import describe, unreadable_file
from collector.otlp import config as otlp_config
from collector.otlp.config import OtlpConfig
from collector.redisconn import redact_url
from emitters.streams import DEFAULT_ERRORS_MAXLEN, DEFAULT_EVENTS_MAXLEN

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Config",
    "RedisConfig",
    "CollectorConfig",
    "JsonlConfig",
    "LogConfig",
    "ConfigError",
    "CliSetting",
    "PositiveDuration",
    "cli_settings",
    "load_config",
    "setting_origin",
    "redacted",
    "dec_hook",
]

MiB = 1024 * 1024


class ConfigError(Exception):
    """A config that cannot be used; the message names the field and the rule."""


class PositiveDuration(Duration):
    """A :class:`Duration` that must be greater than zero (intervals, timeouts)."""


def dec_hook(type_: type, obj: Any) -> Any:
    """:func:`collector.durations.dec_hook` plus :class:`PositiveDuration`."""
    if type_ is PositiveDuration:
        value = durations.parse_duration(obj)
        if value <= 0:
            raise ValueError(f"expected a duration > 0, got {obj!r}")
        return PositiveDuration(value)
    return durations.dec_hook(type_, obj)


RedisUrl = Annotated[str, Meta(pattern=r"^(redis|rediss|unix)://")]
# Letters, digits and the characters Redis Cluster hash tags and namespaces use.
StreamPrefix = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.:{}-]{1,100}$")]
Word = Annotated[str, Meta(pattern=r"^\S{1,200}$")]


class RedisConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the streams live. With no ``url`` an embedded redis-server is started."""

    url: Optional[RedisUrl] = None
    embedded: bool = False
    embedded_dir: Annotated[str, Meta(min_length=1)] = ".telemetry/redis"
    stream_prefix: StreamPrefix = "telemetry"

    @property
    def use_embedded(self) -> bool:
        return self.embedded or self.url is None

    def __repr__(self) -> str:  # the URL may carry a password; reprs end up in logs and tracebacks
        url = None if self.url is None else redact_url(self.url)
        return (
            f"RedisConfig(url={url!r}, embedded={self.embedded!r}, "
            f"embedded_dir={self.embedded_dir!r}, stream_prefix={self.stream_prefix!r})"
        )


MAX_BATCHES_IN_FLIGHT = 16


class CollectorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Consumer-group reading, delivery, retention and housekeeping."""

    group: Word = "telemetry-collectors"
    consumer: Optional[Word] = None  # None: "<host>-<pid>", unique per process
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 500
    # Batches the sinks may write at once while a backlog drains. 1 keeps a crash's duplicates to one
    # batch; more pays off when a sink waits on a distant backend (OTLP exports overlap).
    batches_in_flight: Annotated[int, Meta(ge=1, le=MAX_BATCHES_IN_FLIGHT)] = 1
    block_ms: Annotated[int, Meta(ge=1, le=60_000)] = 1000
    claim_idle: PositiveDuration = PositiveDuration(60)
    max_deliveries: Annotated[int, Meta(ge=1)] = 10
    shutdown_timeout: PositiveDuration = PositiveDuration(30)
    heartbeat_interval: PositiveDuration = PositiveDuration(5)
    stats_interval: PositiveDuration = PositiveDuration(60)
    # XTRIM MINID retention of the streams themselves; 0 turns it off.
    events_retention: Duration = Duration(24 * 3600)
    errors_retention: Duration = Duration(7 * 24 * 3600)
    trim_interval: PositiveDuration = PositiveDuration(300)
    # The MAXLEN the emitters trim each stream to; lag is judged against it (0: uncapped).
    events_maxlen: Annotated[int, Meta(ge=0)] = DEFAULT_EVENTS_MAXLEN
    errors_maxlen: Annotated[int, Meta(ge=0)] = DEFAULT_ERRORS_MAXLEN
    lag_warn_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.8
    # Consumers idle longer than this with nothing pending leave the group; 0 keeps them.
    consumer_idle_timeout: Duration = Duration(3600)
    # Larger payloads are dead-lettered as too_large (and cut to this size there).
    max_event_size: Annotated[int, Meta(ge=1024, le=512 * MiB)] = MiB
    dead_maxlen: Annotated[int, Meta(ge=0)] = 100_000  # 0: the dead-letter stream is not capped
    max_backoff: PositiveDuration = PositiveDuration(30)
    auth_retry_interval: PositiveDuration = PositiveDuration(60)


class JsonlConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``events-YYYY-MM-DD.jsonl`` / ``errors-…`` files (the development sink)."""

    enabled: bool = True
    dir: Annotated[str, Meta(min_length=1)] = "./logs"
    max_bytes: Annotated[int, Meta(ge=1)] = 100 * MiB
    retention_days: Annotated[int, Meta(ge=0)] = 14  # 0 keeps files forever


class LogConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The daemon's own log: JSON lines, or a console renderer (``auto``: on a TTY)."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    collector: CollectorConfig = msgspec.field(default_factory=CollectorConfig)
    jsonl: JsonlConfig = msgspec.field(default_factory=JsonlConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    otlp: OtlpConfig = msgspec.field(default_factory=OtlpConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    http: HttpConfig = msgspec.field(default_factory=HttpConfig)


# --- command-line / environment bindings ---------------------------------------------------


class CliSetting(NamedTuple):
    """A ``run`` option bound to a config field.

    ``flag`` is a click declaration (``--batch-size`` or ``--jsonl/--no-jsonl``);
    the environment variable defaults to ``TELEMETRY_`` plus its first name.
    """

    flag: str
    path: str  # "section.field"
    help: str
    env: Optional[str] = None

    @property
    def envvar(self) -> str:
        if self.env:
            return self.env
        first = self.flag.split("/")[0].lstrip("-")
        return "TELEMETRY_" + first.upper().replace("-", "_")

    @property
    def option_name(self) -> str:
        return self.path.replace(".", "__")


CLI_SETTINGS: tuple[CliSetting, ...] = (
    CliSetting(
        "--redis-url",
        "redis.url",
        "Redis URL (redis://, rediss://, unix://); password via TELEMETRY_REDIS_PASSWORD[_FILE].",
    ),
    CliSetting(
        "--embedded/--no-embedded",
        "redis.embedded",
        "Start a private redis-server (the default when no Redis URL is configured).",
    ),
    CliSetting("--embedded-dir", "redis.embedded_dir", "Data directory of the embedded redis-server."),
    CliSetting(
        "--stream-prefix",
        "redis.stream_prefix",
        "Key prefix of the streams ({prefix}:events, {prefix}:errors, ...).",
    ),
    CliSetting("--group", "collector.group", "Consumer group name."),
    CliSetting(
        "--consumer",
        "collector.consumer",
        "Consumer name, unique per instance [default: <host>-<pid>].",
    ),
    CliSetting("--batch-size", "collector.batch_size", "Entries read per stream and batch."),
    CliSetting(
        "--batches-in-flight",
        "collector.batches_in_flight",
        "Batches read ahead and not yet acked while a backlog drains.",
    ),
    CliSetting("--block-ms", "collector.block_ms", "How long one XREADGROUP waits for new entries (ms)."),
    CliSetting(
        "--claim-idle",
        "collector.claim_idle",
        "Claim other consumers' entries pending longer than this.",
    ),
    CliSetting(
        "--max-deliveries",
        "collector.max_deliveries",
        "Dead-letter entries delivered more often than this.",
    ),
    CliSetting(
        "--shutdown-timeout",
        "collector.shutdown_timeout",
        "Deadline for finishing the batches in flight on SIGTERM.",
    ),
    CliSetting(
        "--heartbeat-interval",
        "collector.heartbeat_interval",
        "How often the heartbeat hash is refreshed.",
    ),
    CliSetting(
        "--events-retention",
        "collector.events_retention",
        "XTRIM MINID age of the events stream (0: off).",
    ),
    CliSetting(
        "--errors-retention",
        "collector.errors_retention",
        "XTRIM MINID age of the errors stream (0: off).",
    ),
    CliSetting("--jsonl/--no-jsonl", "jsonl.enabled", "Write events-/errors-YYYY-MM-DD.jsonl files."),
    CliSetting("--jsonl-dir", "jsonl.dir", "Directory of the JSONL files."),
    CliSetting("--jsonl-max-bytes", "jsonl.max_bytes", "Size at which a JSONL file is rotated."),
    CliSetting("--jsonl-retention-days", "jsonl.retention_days", "Days of JSONL files kept (0: forever)."),
    CliSetting("--log-format", "log.format", "Daemon log format."),
    CliSetting("--log-level", "log.level", "Daemon log level."),
)

# Sections owned by other modules may publish `CLI_OPTIONS`: (flag, field, help[, env]) tuples.
_SECTION_MODULES: tuple[tuple[str, Any], ...] = (("otlp", otlp_config), ("alerts", alerts_config), ("http", http_config))


def cli_settings() -> tuple[CliSetting, ...]:
    """Every ``run`` option with its config path: ours plus those section modules publish."""
    extra = [
        CliSetting(flag, f"{section}.{field}", help_text, *rest)
        for section, module in _SECTION_MODULES
        for flag, field, help_text, *rest in getattr(module, "CLI_OPTIONS", ())
    ]
    return CLI_SETTINGS + tuple(extra)


# --- loading ---------------------------------------------------------------------------------

def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The effective config: ``overrides`` > environment > TOML file ``path`` > defaults.

    ``overrides`` maps dotted paths (``"collector.batch_size"``) to values, as
    the command line gives them. Raises :class:`ConfigError`.
    """
    env = os.environ if environ is None else environ
    data, origins = _merged(path, overrides, env)
    try:
        # Environment values are strings: strict=False lets "500" become an int.
        return msgspec.convert(data, Config, dec_hook=dec_hook, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(describe(str(exc), origins, Config)) from None
    except OSError as exc:  # a secret file named by a variable the config refers to
        raise ConfigError(unreadable_file(exc, env)) from None


def setting_origin(
    dotted: str,
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Where the value of ``dotted`` came from: ``from --flag``, ``from $VAR``, ``in FILE`` or ``the default``."""
    _, origins = _merged(path, overrides, os.environ if environ is None else environ)
    return origins.get(dotted, "the default")


def _merged(
    path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None, env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The file, the environment and the flags merged into one mapping, and where each value came from."""
    settings = cli_settings()
    data: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        data = _read_toml(Path(path))
        origins.update((dotted, f"in {path}") for dotted in _dotted_paths(data))
    for setting in settings:
        value = env.get(setting.envvar)
        if value:  # an empty variable counts as unset, as click treats it
            _assign(data, setting.path, value)
            origins[setting.path] = f"from ${setting.envvar}"
    flags = {setting.path: setting.flag.split("/")[0] for setting in settings}
    for dotted, value in (overrides or {}).items():
        _assign(data, dotted, value)
        origins[dotted] = f"from {flags.get(dotted, 'the command line')}"
    return data, origins


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}: check the path given to --config, $TELEMETRY_CONFIG or check-config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for name in parents:
        child = node.setdefault(name, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`{name}` must be a table to hold `{dotted}` - at `$.{name}`")
        node = child
    node[leaf] = value


def _dotted_paths(data: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        yield dotted
        if isinstance(value, Mapping):
            yield from _dotted_paths(value, f"{dotted}.")


# --- showing ---------------------------------------------------------------------------------


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data, safe to print or log: secrets masked, URL passwords cut."""
    return redact_secrets(None, "config", msgspec.to_builtins(config, enc_hook=durations.enc_hook))
