"""Everything ``run`` reads before it starts, checked in one place.

``run`` and ``check-config`` both call :func:`preflight`, so ``check-config``
fails exactly where ``run`` would: the Redis URL, password file and TLS files,
the OTLP token and CA bundle, the webhook's secret headers, the JSONL
directory and, for the embedded Redis, a redis-server binary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional

from collector.config import Config, ConfigError
from collector.configerrors import unreadable_file
from collector.embedded import RedisNotFound, find_redis_server
from collector.redisproblems import RedisProblem, UrlSetting, check_settings

__all__ = ["preflight", "EMBEDDED_SETTING"]

# What the connection checks see when run starts its own redis-server (no URL, no TLS).
EMBEDDED_SETTING = UrlSetting("redis://127.0.0.1:6379/0", "redis.url", "not set: embedded Redis")


def preflight(
    config: Config,
    redis_setting: UrlSetting,
    jsonl_origin: str = "the default",
    environ: Optional[Mapping[str, str]] = None,
) -> None:
    """Raise :class:`ConfigError` (one line naming the setting) for anything ``run`` could not use."""
    env = os.environ if environ is None else environ
    try:
        check_settings(EMBEDDED_SETTING if config.redis.use_embedded else redis_setting, env)
    except RedisProblem as exc:
        raise ConfigError(str(exc)) from None
    if config.redis.use_embedded:
        try:
            find_redis_server()
        except RedisNotFound as exc:
            raise ConfigError(f"redis.url is not set, so run starts an embedded Redis, but {exc}") from None
    try:
        config.otlp.resolve(env)
        if config.alerts.enabled and config.alerts.webhook is not None:
            config.alerts.webhook.resolved_headers()
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    except OSError as exc:
        raise ConfigError(unreadable_file(exc, env)) from None
    if config.jsonl.enabled:
        _check_writable_dir(Path(config.jsonl.dir), f"jsonl.dir ({jsonl_origin})")


def _check_writable_dir(directory: Path, setting: str) -> None:
    """The directory, or the nearest parent that would hold it, must be a writable directory."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = "choose another --jsonl-dir, fix the permissions, or --no-jsonl"
    if not existing.is_dir():
        raise ConfigError(f"{setting} {directory}: {existing} is not a directory: {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting} {directory}: {existing} is not writable by uid {os.getuid()}: {fix}")
