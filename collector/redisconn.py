"""One way to open a Redis connection for the daemon and the operator tools.

Secrets come from the URL, the environment or a file, never from a flag value
that ends up in ``ps`` output or a log line: ``TELEMETRY_REDIS_PASSWORD`` or
``TELEMETRY_REDIS_PASSWORD_FILE`` (and ``TELEMETRY_REDIS_USERNAME``). TLS is
selected by the ``rediss://`` scheme; ``TELEMETRY_REDIS_TLS_CA_FILE`` (and
optional client cert/key) point at the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

import redis

__all__ = ["connect", "redact_url", "secret_from_env"]


def secret_from_env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``$NAME`` or the first line of the file named by ``$NAME_FILE``."""
    env = os.environ if environ is None else environ
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if path:
        return Path(path).read_text().splitlines()[0].strip() if Path(path).stat().st_size else ""
    return None


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe for logs and health output."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(
    url: str,
    *,
    environ: Mapping[str, str] | None = None,
    socket_timeout: float | None = 10.0,
    socket_connect_timeout: float = 5.0,
    client_name: str | None = None,
    decode_responses: bool = False,
) -> redis.Redis:
    """A client for ``url`` with credentials and TLS files from the environment.

    Retries are left to the caller (capped backoff around its own loop), so
    redis-py's built-in retry is turned off.
    """
    env = os.environ if environ is None else environ
    options: dict[str, object] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_connect_timeout,
        "health_check_interval": 30,
        "decode_responses": decode_responses,
        "retry": redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    }
    if client_name:
        options["client_name"] = client_name
    password = secret_from_env("TELEMETRY_REDIS_PASSWORD", env)
    if password is not None and urlsplit(url).password is None:
        options["password"] = password
    username = env.get("TELEMETRY_REDIS_USERNAME")
    if username and urlsplit(url).username is None:
        options["username"] = username
    if url.startswith("rediss://"):
        ca_file = env.get("TELEMETRY_REDIS_TLS_CA_FILE")
        if ca_file:
            options["ssl_ca_certs"] = ca_file
        cert, key = env.get("TELEMETRY_REDIS_TLS_CERT_FILE"), env.get("TELEMETRY_REDIS_TLS_KEY_FILE")
        if cert and key:
            options["ssl_certfile"], options["ssl_keyfile"] = cert, key
    return redis.Redis.from_url(url, **options)  # type: ignore[arg-type]
