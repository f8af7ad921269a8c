"""The ``[http]`` config section: where the live view listens and who may read it."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Optional

import msgspec
from msgspec import Meta

__all__ = ["HttpConfig", "CLI_OPTIONS", "DEFAULT_PORT", "TOKEN_ENV", "read_token", "is_loopback"]

# The engine config's `prometheusPort`, and the port OpenTelemetry's Prometheus exporter uses.
DEFAULT_PORT = 9464
TOKEN_ENV = "TELEMETRY_HTTP_TOKEN"


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``/metrics``, ``/healthz``, ``/readyz`` and the dashboard; ``port = 0`` turns the server off."""

    port: Annotated[int, Meta(ge=0, le=65535)] = DEFAULT_PORT
    host: Annotated[str, Meta(min_length=1, max_length=255)] = "127.0.0.1"
    # A bearer token for everything but the probes; the token itself comes from
    # $TELEMETRY_HTTP_TOKEN or this file, never from the config.
    token_file: Optional[Annotated[str, Meta(min_length=1)]] = None


CLI_OPTIONS: tuple[tuple[str, ...], ...] = (
    ("--http-port", "port", "Port of /metrics, /healthz, /readyz and the dashboard (0: no HTTP server)."),
    ("--http-host", "host", "Address the HTTP server binds to; anything but loopback should set a token."),
    (
        "--http-token-file",
        "token_file",
        f"File holding the bearer token the HTTP server asks for (or set ${TOKEN_ENV}).",
    ),
)


def read_token(config: HttpConfig) -> Optional[str]:
    """The bearer token from ``$TELEMETRY_HTTP_TOKEN`` or ``token_file``; None: no token asked.

    Raises ValueError naming the setting when the file cannot be read or is empty.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if config.token_file is None:
        return None
    try:
        token = Path(config.token_file).read_text().strip()
    except OSError as exc:
        raise ValueError(f"http.token_file: cannot read {config.token_file}: {exc.strerror or exc}") from None
    if not token:
        raise ValueError(f"http.token_file: {config.token_file} is empty; put the bearer token in it")
    return token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
