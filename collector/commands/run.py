"""``telemetry-collector run`` (the daemon) and ``check-config``.

Every option of ``run`` is bound to a config field (see
:data:`collector.config.CLI_SETTINGS`) and can also be set through its
``TELEMETRY_<NAME>`` environment variable or the TOML file given with
``--config``; flags win over the environment, which wins over the file.
"""

from __future__ import annotations

import functools
import gc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NoReturn, Optional
from urllib.parse import urlsplit

import click
import msgspec
import structlog
from click.core import ParameterSource

from collector import durations
from collector.config import (
    CliSetting,
    Config,
    ConfigError,
    cli_settings,
    load_config,
    redacted,
    setting_origin,
)
from collector.durations import Duration, DurationParam
from collector.embedded import RedisNotFound, RedisProcess, free_port, port_is_free
from collector.exitcodes import EXIT_USAGE
from collector.http.embed import CollectorHttp
from collector.logsetup import configure_logging
from collector.otlp.cli import cli_options as otlp_cli_options
from collector.pipeline import build_collector
from collector.preflight import preflight
from collector.redisconn import redact_url
from collector.redisproblems import RedisProblem, UrlSetting, probe
from collector.shutdown import StopSignals

__all__ = ["run", "check_config"]

log = structlog.get_logger("collector.run")

EMBEDDED_PORT = 6379
EMITTER_DEFAULT_URL = "redis://localhost:6379/0"  # what Emitter() uses when given no URL
# Shown as the default of options whose default depends on other settings.
_DEFAULT_TEXT = {"redis.embedded": "true when no Redis URL is set"}
# After the graceful deadline has passed, a sink stuck in a write gets this much more.
HARD_STOP_GRACE = 5.0


# --- options derived from the config fields -----------------------------------------------------


@functools.cache
def _config_fields() -> dict[str, dict[str, msgspec.inspect.Type]]:
    sections = msgspec.inspect.type_info(Config).fields  # type: ignore[attr-defined]
    return {section.name: {f.name: f.type for f in section.type.fields} for section in sections}


@functools.cache
def _defaults() -> Config:
    return Config()


def _field_type(path: str) -> msgspec.inspect.Type:
    section, name = path.split(".")
    kind = _config_fields()[section][name]
    while True:
        if isinstance(kind, msgspec.inspect.Metadata):
            kind = kind.type
        elif isinstance(kind, msgspec.inspect.UnionType):
            kind = next(t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
        else:
            return kind


def _click_type(kind: msgspec.inspect.Type) -> click.ParamType:
    if isinstance(kind, msgspec.inspect.IntType):
        return click.INT
    if isinstance(kind, msgspec.inspect.FloatType):
        return click.FLOAT
    if isinstance(kind, msgspec.inspect.LiteralType):
        return click.Choice([str(value) for value in kind.values])
    if isinstance(kind, msgspec.inspect.CustomType) and issubclass(kind.cls, Duration):
        return DurationParam()
    return click.STRING  # msgspec validates the rest when the config is converted


def _default_text(path: str) -> Optional[str]:
    section, name = path.split(".")
    value = getattr(getattr(_defaults(), section), name)
    if value is None:
        return None
    shown = msgspec.to_builtins(value, enc_hook=durations.enc_hook)
    return str(shown).lower() if isinstance(shown, bool) else str(shown)


def _option(setting: CliSetting) -> Callable[[Any], Any]:
    kind = _field_type(setting.path)
    options: dict[str, Any] = {
        "default": None,  # unset must not override the environment or the file
        "envvar": setting.envvar,
        "show_envvar": True,
        "help": setting.help,
        "show_default": _DEFAULT_TEXT.get(setting.path) or _default_text(setting.path),
    }
    if isinstance(kind, msgspec.inspect.BoolType):
        flag = setting.flag if "/" in setting.flag else f"{setting.flag}/--no-{setting.flag[2:]}"
        return click.option(flag, setting.option_name, **options)
    return click.option(setting.flag, setting.option_name, type=_click_type(kind), **options)


def _setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    # The OTLP section builds its own options (repeatable headers and the like).
    for decorator in reversed(otlp_cli_options()):
        command = decorator(command)
    for setting in reversed([setting for setting in cli_settings() if not setting.path.startswith("otlp.")]):
        command = _option(setting)(command)
    return command


def _command_line_overrides(ctx: click.Context, values: Mapping[str, Any]) -> dict[str, Any]:
    """Values given as flags; environment values are applied by load_config itself."""
    return {
        setting.path: list(value) if isinstance(value, tuple) else value
        for setting in cli_settings()
        if ctx.get_parameter_source(setting.option_name) is ParameterSource.COMMANDLINE
        for value in [values[setting.option_name]]
    }


def _exit_with(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(EXIT_USAGE)


def _load_or_exit(path: Optional[Path], overrides: Mapping[str, Any]) -> tuple[Config, UrlSetting]:
    """The config and its Redis URL setting, after every file and secret run reads was checked."""
    try:
        config = load_config(path, overrides)
        url = UrlSetting(config.redis.url or "", "redis.url", setting_origin("redis.url", path, overrides))
        preflight(config, url, setting_origin("jsonl.dir", path, overrides))
    except ConfigError as exc:
        _exit_with(str(exc))
    return config, url


# --- run ----------------------------------------------------------------------------------------


@contextmanager
def _redis_for(config: Config) -> Iterator[tuple[Config, Optional[RedisProcess]]]:
    """The config with a Redis URL, starting a private redis-server when asked or when none is set."""
    if not config.redis.use_embedded:
        yield config, None
        return
    if config.redis.url is not None:
        log.warning("embedded_redis_ignores_url", note="--embedded was given, the configured Redis URL is not used")
    data_dir = Path(config.redis.embedded_dir).resolve()  # redis-server chdirs into it
    data_dir.mkdir(parents=True, exist_ok=True)
    port = EMBEDDED_PORT if port_is_free(EMBEDDED_PORT) else free_port()
    if port != EMBEDDED_PORT:
        log.warning(
            "embedded_redis_port_taken",
            wanted=EMBEDDED_PORT,
            port=port,
            note=f"something (another collector's embedded Redis?) holds port {EMBEDDED_PORT}, where emitters "
            f"send by default: point them at this collector's Redis (see emitters_should_use), "
            f"or give both the same --redis-url",
        )
    try:
        server = RedisProcess(port=port, data_dir=data_dir, appendonly=True).start()
    except (RedisNotFound, RuntimeError, TimeoutError) as exc:
        _exit_with(f"cannot start the embedded Redis (redis.url not set): {exc}")
    log.info(
        "embedded_redis_started",
        reason="--embedded" if config.redis.embedded else "no Redis URL configured (redis.url / TELEMETRY_REDIS_URL)",
        url=server.url,
        data_dir=str(data_dir),
        binary=server.binary,
    )
    embedded = msgspec.structs.replace(config.redis, url=server.url)
    try:
        yield msgspec.structs.replace(config, redis=embedded), server
    finally:
        server.stop()
        log.info("embedded_redis_stopped")


def _terminate(embedded: RedisProcess) -> None:
    """Cold exit: the private redis-server must not outlive us (it would hold the port)."""
    if embedded.process is not None:
        embedded.process.terminate()


@click.command(context_settings={"max_content_width": 120})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TELEMETRY_CONFIG",
    show_envvar=True,
    help="TOML config file (sections redis, collector, jsonl, log, otlp, alerts).",
)
@_setting_options
@click.pass_context
def run(ctx: click.Context, config_path: Optional[Path], **values: Any) -> None:
    """Run the collector daemon: Redis Streams -> JSONL / OTLP / alerts, at least once.

    Stops on SIGTERM/SIGINT after acking the batch in hand (a second signal exits
    at once). With no Redis URL configured it starts an embedded redis-server.
    """
    config, url = _load_or_exit(config_path, _command_line_overrides(ctx, values))
    configure_logging(config.log.format, config.log.level)
    with _redis_for(config) as (config, embedded):
        if embedded is None:
            _check_reachable(url)
        log.info(
            "emitters_should_use",
            redis_url=redact_url(config.redis.url or ""),
            stream_prefix=config.redis.stream_prefix,
            note=_emitter_note(config.redis.url or ""),
        )
        try:
            http = CollectorHttp(config) if config.http.port else None
            collector = build_collector(config, extra_sinks=[http.sink] if http is not None else [])
        except ValueError as exc:  # settings only checkable now: OTEL_* variables, webhook secrets
            click.echo(f"Error: invalid config: {exc}", err=True)
            raise click.exceptions.Exit(2) from None
        signals = StopSignals(
            collector.request_stop,
            name="telemetry-collector",
            deadline=collector.settings.shutdown_timeout + HARD_STOP_GRACE,
            before_exit=None if embedded is None else functools.partial(_terminate, embedded),
        )
        if http is not None:
            http.start(collector)
        _tune_garbage_collection()
        with signals:
            try:
                collector.run()
            except Exception:
                log.exception("collector_failed")
                raise SystemExit(1) from None
            finally:
                if http is not None:
                    http.close()


def _emitter_note(url: str) -> str:
    parts, default = urlsplit(url), urlsplit(EMITTER_DEFAULT_URL)
    local = {"localhost", "127.0.0.1", "::1"}
    if parts.scheme == "redis" and parts.hostname in local and parts.port == default.port and parts.path in ("", "/0"):
        return f"the emitters' default ({EMITTER_DEFAULT_URL}) reaches it"
    return f"pass it to Emitter(service, redis_url): the emitters' default {EMITTER_DEFAULT_URL} does not reach it"


def _check_reachable(url: UrlSetting) -> None:
    """Exit 2 when Redis refuses us for good (credentials, protocol, TLS); only warn when it may come up later."""
    try:
        probe(url)
    except RedisProblem as problem:
        if problem.lasting:
            _exit_with(str(problem))
        log.warning("redis_not_reachable_yet", error=str(problem), note="retrying with capped backoff")


# --- check-config ---------------------------------------------------------------------------------


@click.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate FILE (with TELEMETRY_* variables applied) and print the effective config.

    Reads every file and secret run would read (Redis password file, TLS
    files, OTLP token and CA bundle, webhook secrets, the JSONL directory)
    without connecting, so it fails where run would fail. Secrets are masked.
    Exits 0 when the config is valid, 2 with the setting and the fix when not.
    """
    config, _ = _load_or_exit(file, {})
    otlp = config.otlp.resolve()  # checked by _load_or_exit, like every file and secret run reads
    shown = redacted(config)
    shown["otlp_effective"] = {"enabled": otlp.enabled, **otlp.describe()}
    click.echo(msgspec.json.format(msgspec.json.encode(shown), indent=2))


def _tune_garbage_collection() -> None:
    """What is built by now lives as long as the daemon: keep it out of every later collection.

    A batch allocates thousands of short-lived objects that reference counting
    frees (decoded events hold no cycles); at CPython's default threshold the
    cycle collector would still run every 700 of them and rescan what survives.
    """
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


_GC_YOUNG_THRESHOLD = 20_000
