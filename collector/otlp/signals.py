"""Per-signal export settings from config and the ``OTEL_EXPORTER_OTLP_[{SIGNAL}_]*`` variables.

For each signal (``LOGS``, ``TRACES``, ``METRICS``) and each setting, the
first of: the ``[otlp]`` config value (flags, ``TELEMETRY_OTLP_*``, file),
``OTEL_EXPORTER_OTLP_{SIGNAL}_{SETTING}``, ``OTEL_EXPORTER_OTLP_{SETTING}``,
the default. Headers merge in that order instead (later ones win per name).

Endpoints as the specification says: with HTTP/protobuf a generic endpoint
gets ``/v1/{signal}`` appended, a per-signal one is used as it is; with gRPC
``host:port`` without a scheme is accepted, plaintext when ``INSECURE`` is
true, else TLS (``http://`` is plaintext, ``https://`` TLS).
"""

from __future__ import annotations

import ssl
from typing import Dict, Literal, Mapping, Optional
from urllib.parse import unquote, urlsplit

import msgspec

from collector.durations import Duration

__all__ = [
    "SignalSettings",
    "check_ca_bundle",
    "check_endpoint",
    "check_readable",
    "env_milliseconds",
    "env_timeout",
    "env_value",
    "parse_bool",
    "parse_resource_attributes",
    "signal_endpoint",
]

DEFAULT_TIMEOUT = Duration(10)


class SignalSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where and how one signal is sent. ``headers`` may hold the token: never log them."""

    endpoint: str  # HTTP: the URL to POST to; gRPC: the endpoint as given
    target: str  # host:port
    tls: bool
    headers: Dict[str, str]
    compression: Literal["gzip", "none"]
    timeout: Duration
    certificate_file: Optional[str] = None
    client_key_file: Optional[str] = None
    client_certificate_file: Optional[str] = None

    def __repr__(self) -> str:
        return f"SignalSettings(endpoint={self.endpoint!r}, headers={sorted(self.headers)!r})"


def env_value(env: Mapping[str, str], signal: str, setting: str) -> tuple[Optional[str], str]:
    """(value, variable name) of the per-signal variable, else the generic one; empty counts as unset."""
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_{setting}"
    if env.get(specific):
        return env[specific], specific
    generic = f"OTEL_EXPORTER_OTLP_{setting}"
    return env.get(generic) or None, generic


def parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def check_endpoint(endpoint: str, field: str) -> None:
    """http(s)://host:port[/path], or host:port (gRPC, no scheme). Raises ValueError naming ``field``."""
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    if "://" in endpoint and parts.scheme not in ("http", "https"):
        raise ValueError(f"{field}: expected http://host:port, https://host:port or host:port, got {endpoint!r}")
    if not parts.hostname:
        raise ValueError(f"{field}: expected http://host:port, https://host:port or host:port, got {endpoint!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"{field}: the port must be a number, got {endpoint!r}") from None
    if parts.username or parts.password:
        raise ValueError(f"{field}: must not carry credentials; use the token or headers")
    if parts.query or parts.fragment:
        raise ValueError(f"{field}: must not have a query or fragment, got {endpoint!r}")


def signal_endpoint(
    protocol: str, signal: str, endpoint: str, per_signal: bool, insecure: bool, field: str
) -> tuple[str, str, bool]:
    """(endpoint, host:port target, tls) for one signal."""
    check_endpoint(endpoint, field)
    if "://" not in endpoint:
        if protocol != "grpc":
            raise ValueError(f"{field}: OTLP/HTTP needs http:// or https://, got {endpoint!r}")
        parts = urlsplit(f"//{endpoint}")
        tls = not insecure
    else:
        parts = urlsplit(endpoint)
        tls = parts.scheme == "https"
    target = f"{parts.hostname}:{parts.port or (443 if tls else 80)}"
    if protocol == "grpc":
        return endpoint.rstrip("/"), target, tls
    url = endpoint if per_signal else f"{endpoint.rstrip('/')}/v1/{signal}"
    return url, target, tls


def parse_resource_attributes(value: str, name: str = "OTEL_RESOURCE_ATTRIBUTES") -> dict[str, str]:
    """``key1=value1,key2=value2`` with percent-encoded values (the specification's format)."""
    attributes: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{name}: expected key=value items separated by commas, got {item.strip()!r}")
        attributes[key.strip()] = unquote(raw.strip())
    return attributes


def env_timeout(raw: Optional[str], name: str) -> Duration:
    """An ``OTEL_EXPORTER_OTLP_*TIMEOUT`` value (milliseconds), else the default."""
    return env_milliseconds(raw, name, DEFAULT_TIMEOUT)


def env_milliseconds(raw: Optional[str], name: str, default: Duration) -> Duration:
    """A positive number of milliseconds from variable ``name`` (the OTel spec's unit), else ``default``."""
    if not raw:
        return default
    try:
        milliseconds = float(raw)
    except ValueError:
        raise ValueError(f"{name}: expected milliseconds, got {raw!r}") from None
    if milliseconds <= 0:
        raise ValueError(f"{name}: must be > 0, got {raw!r}")
    return Duration(milliseconds / 1000.0)


def check_readable(path: str, field: str) -> None:
    """A certificate or key file named by ``field`` can be opened now, not at the first export."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def check_ca_bundle(path: str, field: str) -> None:
    """``path`` is a PEM bundle of CA certificates."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"{field}: {path} is not a PEM CA bundle: {exc.reason or exc}") from None
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
