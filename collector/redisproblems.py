"""Redis settings and connection failures as one line: the setting, where it came from, the fix.

Every command goes through here: ``run`` and ``check-config`` (so the two fail
at the same place), ``demo`` and the operator tools. :func:`check_settings`
reads everything :func:`collector.redisconn.connect` would read (the URL, the
password file, the TLS files) before any connection is tried;
:func:`explain` turns what redis-py raises while connecting into a sentence.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Mapping, NamedTuple, Optional
from urllib.parse import urlsplit

import redis

from collector.redisconn import connect, redact_url

__all__ = ["RedisProblem", "UrlSetting", "check_settings", "explain", "is_lasting", "probe"]

PASSWORD = "TELEMETRY_REDIS_PASSWORD"
PASSWORD_FILE = "TELEMETRY_REDIS_PASSWORD_FILE"
USERNAME = "TELEMETRY_REDIS_USERNAME"
TLS_CA = "TELEMETRY_REDIS_TLS_CA_FILE"
TLS_CERT = "TELEMETRY_REDIS_TLS_CERT_FILE"
TLS_KEY = "TELEMETRY_REDIS_TLS_KEY_FILE"
SCHEMES = ("redis://", "rediss://", "unix://")
EXAMPLE_URL = "redis://localhost:6379/0"


class RedisProblem(Exception):
    """A Redis setting or connection that cannot work; the message is the whole story, one line.

    ``lasting`` is False for what may pass by itself (Redis not up yet, a network blip).
    """

    def __init__(self, message: str, *, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting


class UrlSetting(NamedTuple):
    """The Redis URL in use, the setting that holds it and where its value came from."""

    url: str
    name: str  # "--redis-url" for the tools, "redis.url" for run
    origin: str  # "from --redis-url", "from $TELEMETRY_REDIS_URL", "in collector.toml", "by default"

    @property
    def shown(self) -> str:
        return f"{redact_url(self.url)} ({self.name}, {self.origin})"


# --- before connecting -------------------------------------------------------------------------


def check_settings(setting: UrlSetting, environ: Optional[Mapping[str, str]] = None) -> None:
    """Raise :class:`RedisProblem` for a URL, secret or TLS file a connection could not use."""
    env = os.environ if environ is None else environ
    _check_url(setting)
    _check_password(env)
    if setting.url.startswith("rediss://"):
        _check_tls(env)


def _check_url(setting: UrlSetting) -> None:
    url = setting.url
    fix = f"use redis://host:port/db, rediss:// for TLS or unix:///path/redis.sock, e.g. {EXAMPLE_URL}"
    where = f"{setting.name} {redact_url(url)!r} ({setting.origin})"
    if not url.startswith(SCHEMES):
        raise RedisProblem(f"{where} is not a Redis URL: {fix}")
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError as exc:
        raise RedisProblem(f"{where} has a bad port ({exc}): {fix}") from None
    if url.startswith("unix://"):
        if not parts.path:
            raise RedisProblem(f"{where} names no socket path: {fix}")
        return
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise RedisProblem(f"{where}: the database after the last '/' must be a number, got {database!r}: {fix}")


def _readable(variable: str, path: str, what: str) -> str:
    """The file's text, or a RedisProblem naming the variable and the file."""
    try:
        return Path(path).read_text()
    except IsADirectoryError:
        reason = "is a directory"
    except FileNotFoundError:
        reason = "does not exist"
    except PermissionError:
        reason = f"is not readable by this user (uid {os.getuid()})"
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"cannot be read ({exc})"
    raise RedisProblem(f"${variable}={path} {reason}: point it at {what}")


def _check_password(env: Mapping[str, str]) -> None:
    if env.get(PASSWORD) or not env.get(PASSWORD_FILE):
        return
    path = env[PASSWORD_FILE]
    text = _readable(PASSWORD_FILE, path, "a file whose first line is the Redis password")
    if not text.strip():
        raise RedisProblem(
            f"${PASSWORD_FILE}={path} is empty: write the Redis password on its first line, "
            f"or unset ${PASSWORD_FILE} if Redis needs none"
        )


def _check_tls(env: Mapping[str, str]) -> None:
    ca = env.get(TLS_CA)
    if ca:
        _readable(TLS_CA, ca, "the PEM file of the CA that signed the Redis server certificate")
        try:
            ssl.create_default_context(cafile=ca)
        except ssl.SSLError as exc:
            raise RedisProblem(f"${TLS_CA}={ca} holds no PEM certificate ({exc.reason or exc}): point it at the CA bundle") from None
    cert, key = env.get(TLS_CERT), env.get(TLS_KEY)
    if bool(cert) != bool(key):
        given, missing = (TLS_CERT, TLS_KEY) if cert else (TLS_KEY, TLS_CERT)
        raise RedisProblem(f"${given} is set but ${missing} is not: a client certificate needs both (or neither)")
    if cert and key:
        _readable(TLS_CERT, cert, "the PEM client certificate")
        _readable(TLS_KEY, key, "the PEM private key of the client certificate")
        try:
            ssl.create_default_context().load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise RedisProblem(
                f"${TLS_CERT}={cert} and ${TLS_KEY}={key} are not a matching PEM certificate and key "
                f"({exc.reason or exc})"
            ) from None


# --- while connecting --------------------------------------------------------------------------


def _credentials(url: str, env: Mapping[str, str]) -> str:
    if urlsplit(url).password is not None:
        return "the password in the URL"
    user = f" as user {env[USERNAME]!r} (${USERNAME})" if env.get(USERNAME) else ""
    if env.get(PASSWORD):
        return f"${PASSWORD}{user}"
    if env.get(PASSWORD_FILE):
        return f"${PASSWORD_FILE} ({env[PASSWORD_FILE]}){user}"
    return "no password"


def explain(exc: BaseException, setting: UrlSetting, environ: Optional[Mapping[str, str]] = None) -> str:
    """One line for what redis-py raised while talking to ``setting.url``."""
    env = os.environ if environ is None else environ
    text = " ".join(str(exc).split()) or type(exc).__name__
    lower = text.lower()
    url = setting.shown
    if isinstance(exc, redis.AuthenticationError) or "noauth" in lower or "authentication required" in lower:
        if "authentication required" in lower or "noauth" in lower:
            return (
                f"Redis at {url} says 'Authentication required': set ${PASSWORD} "
                f"(or ${PASSWORD_FILE} naming a file that holds it; ${USERNAME} for an ACL user)"
            )
        if "without any password configured" in lower:
            return (
                f"Redis at {url} has no password, but {_credentials(setting.url, env)} gives one: "
                f"unset it, or configure requirepass / an ACL user on the server"
            )
        return (
            f"Redis at {url} refused {_credentials(setting.url, env)} ({text}): "
            f"fix ${PASSWORD}[_FILE] and ${USERNAME}"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith("NOPERM"):
        return (
            f"Redis at {url} denies a command to {_credentials(setting.url, env)} ({text}): "
            f"grant it in the ACL (README: Secrets, ACL users and TLS)"
        )
    if isinstance(exc, redis.exceptions.InvalidResponse) or "protocol error" in lower:
        return (
            f"the server at {url} does not speak the Redis protocol ({text}): "
            f"check the host and port of {setting.name}"
            + (" (a TLS port needs rediss://)" if not setting.url.startswith("rediss://") else "")
        )
    if "ssl" in lower or "certificate" in lower or "tls" in lower:
        if "wrong_version_number" in lower or "wrong version number" in lower or "record layer" in lower:
            return f"the server at {url} does not speak TLS ({text}): use redis:// for a plain port, or the TLS port"
        return (
            f"TLS with Redis at {url} failed ({text}): set ${TLS_CA} to the CA that signed the server "
            f"certificate, and ${TLS_CERT}/${TLS_KEY} when Redis asks for a client certificate"
        )
    if isinstance(exc, redis.TimeoutError) or "timeout" in lower or "timed out" in lower:
        return (
            f"Redis at {url} did not answer in time ({text}): check that the host and port are Redis and "
            f"reachable; "
            + ("a TLS port needs rediss://" if setting.url.startswith("redis://") else "a plain port needs redis://")
        )
    if "closed by server" in lower or "reset by peer" in lower or "eof" in lower:
        if setting.url.startswith("rediss://"):
            return (
                f"Redis at {url} dropped the TLS connection ({text}): when it requires client certificates "
                f"(tls-auth-clients), set ${TLS_CERT} and ${TLS_KEY}"
            )
        return f"the server at {url} dropped the connection ({text}): a TLS port needs rediss://; otherwise check {setting.name}"
    if isinstance(exc, redis.ResponseError):
        return f"Redis at {url} refused the request ({text})"
    return f"cannot reach Redis at {url} ({text}): start it, or fix {setting.name}"


def probe(
    setting: UrlSetting,
    environ: Optional[Mapping[str, str]] = None,
    *,
    timeout: float = 5.0,
) -> None:
    """Check the settings, then connect and PING once; :class:`RedisProblem` says what failed."""
    check_settings(setting, environ)
    client = connect(setting.url, environ=environ, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RedisProblem(explain(exc, setting, environ), lasting=is_lasting(exc)) from None
    finally:
        client.close()


def is_lasting(exc: BaseException) -> bool:
    """True for failures that retrying cannot fix (credentials, permissions, protocol, TLS setup)."""
    text = str(exc).lower()
    if isinstance(exc, (redis.AuthenticationError, redis.exceptions.NoPermissionError, redis.exceptions.InvalidResponse)):
        return True
    return any(word in text for word in ("noauth", "authentication required", "protocol error", "certificate", "wrong version number"))
