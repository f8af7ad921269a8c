"""Checks of an Emitter's settings at construction: a bad one raises at once, naming it.

A setting that would only fail later, on the worker thread (a URL without a
scheme, a batch larger than the buffer), fails here instead, with one line
naming the setting, the rule and what to do.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

__all__ = ["check_settings", "check_redis_url", "SERVICE_RULE"]

SERVICE_RULE = re.compile("^[A-Za-z0-9_-]{1,100}$")
_SCHEMES = ("redis", "rediss", "unix")
TOKEN_MODES = ("live", "sample", "stream", "off")


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def check_redis_url(url: Any) -> None:
    if not isinstance(url, str) or not url:
        raise ValueError(f"redis_url: expected a URL such as redis://localhost:6379/0, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"redis_url: {exc} in {_shown(url)!r}; expected redis://host:port/db") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"redis_url: {_shown(url)!r} has no redis://, rediss:// or unix:// scheme; "
            f"write it as redis://{url.split('://')[-1]}"
        )
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"redis_url: {_shown(url)!r} names no socket path; write it as unix:///path/to/redis.sock")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"redis_url: {_shown(url)!r} names no host; write it as redis://host:port/db")
    if port == 0:
        raise ValueError(f"redis_url: port 0 in {_shown(url)!r}; use the port Redis listens on (6379 by default)")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def _seconds(name: str, value: Any, *, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        rule = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name}: expected a finite number of seconds {rule}, got {value!r}")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Raise ValueError for the first setting that breaks its rule."""
    service = settings["service"]
    if not isinstance(service, str) or not SERVICE_RULE.match(service):
        raise ValueError(f"service: expected a name of 1 to 100 letters, digits, '_' or '-', got {service!r}")
    host = settings["host"]
    if host is not None and (not isinstance(host, str) or not 1 <= len(host) <= 255):
        raise ValueError(f"host: expected 1 to 255 characters, got {host!r}")
    if settings["token_events"] not in TOKEN_MODES:
        raise ValueError(f"token_events: expected one of {', '.join(TOKEN_MODES)}, got {settings['token_events']!r}")
    for name in ("events_maxlen", "errors_maxlen", "buffer_size", "batch_size", "token_sample_rate",
                 "max_event_bytes", "batch_token_ttl"):  # fmt: skip
        _positive_int(name, settings[name])
    if settings["batch_size"] > settings["buffer_size"]:
        raise ValueError(
            f"batch_size: expected at most buffer_size ({settings['buffer_size']}), got {settings['batch_size']}; "
            "lower batch_size or raise buffer_size"
        )
    for name in ("flush_interval", "live_flush_interval", "socket_timeout", "max_backoff", "report_interval"):
        _seconds(name, settings[name])
    _seconds("exit_timeout", settings["exit_timeout"], zero_ok=True)
    if not isinstance(settings["stream_prefix"], str) or not settings["stream_prefix"]:
        raise ValueError(f"stream_prefix: expected a non-empty string, got {settings['stream_prefix']!r}")
    secret = settings["hash_secret"]
    if secret is not None and not isinstance(secret, (str, bytes)):
        raise ValueError(f"hash_secret: expected str or bytes, got {type(secret).__name__}")
    options = settings["redis_options"]
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"redis_options: expected a mapping of redis-py options, got {type(options).__name__}")
    check_redis_url(settings["redis_url"])
