"""The ``[otlp]`` config section and its command-line options.

Precedence, highest first: ``--otlp-*`` flags, ``TELEMETRY_OTLP_*`` variables,
the TOML file, then the standard OpenTelemetry variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``_HEADERS``, ``_PROTOCOL``,
``_COMPRESSION``, ``_TIMEOUT`` in milliseconds, ``_CERTIFICATE``), then the
defaults. Fields left unset (``None``) in :class:`OtlpConfig` are filled from
the ``OTEL_*`` variables by :meth:`OtlpConfig.resolve`, which the sink calls.

The bearer token is a secret: give it as ``TELEMETRY_OTLP_TOKEN`` or in a file
named by ``TELEMETRY_OTLP_TOKEN_FILE`` (or ``token_file``); ``--otlp-token``
works but shows in ``ps``. It is sent as ``Authorization: Bearer <token>``,
and no repr of these objects shows it (nor any header value).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Union
from urllib.parse import unquote, urlsplit

import click
import msgspec

from collector.durations import Duration, DurationParam, format_duration
from collector.redisconn import secret_from_env

__all__ = [
    "OtlpConfig",
    "OtlpSettings",
    "CLI_OPTIONS",
    "SIGNALS",
    "cli_options",
    "options_to_overrides",
    "parse_headers",
    "DEFAULT_ENDPOINTS",
]

Protocol = Literal["grpc", "http"]
Signal = Literal["logs", "traces", "metrics"]
SIGNALS: tuple[Signal, ...] = ("logs", "traces", "metrics")
DEFAULT_ENDPOINTS: dict[str, str] = {"grpc": "http://localhost:4317", "http": "http://localhost:4318"}
DEFAULT_TIMEOUT = Duration(10)
TOKEN_ENV = "TELEMETRY_OTLP_TOKEN"
DATASET_HEADER = "dash0-dataset"
_PROTOCOL_NAMES = {"grpc": "grpc", "http": "http", "http/protobuf": "http"}
MiB = 1024 * 1024


def parse_headers(value: Union[Mapping[str, str], List[str], str], *, field: str = "otlp.headers") -> dict[str, str]:
    """Headers as lower-case names to values.

    Accepts a mapping (TOML table), literal ``KEY=VALUE`` items (repeated
    ``--otlp-header``) or one string of comma-separated ``KEY=VALUE`` pairs
    with percent-encoded values (the ``OTEL_EXPORTER_OTLP_HEADERS`` format,
    also used by ``TELEMETRY_OTLP_HEADERS``). Raises ValueError naming ``field``.
    """
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        encoded = isinstance(value, str)
        pairs = []
        for item in value.split(",") if encoded else value:
            if encoded and not item.strip():
                continue
            name, sep, header_value = item.partition("=")
            if not sep or not name.strip():
                # Never echo the item: it may be "Authorization=Bearer ...".
                raise ValueError(f"{field}: expected KEY=VALUE items, got one without '=' or a name")
            header_value = header_value.strip()
            pairs.append((name, unquote(header_value) if encoded else header_value))
    headers: dict[str, str] = {}
    for name, header_value in pairs:
        name = name.strip().lower()
        if not name or any(char.isspace() or char in ":\r\n" for char in name):
            raise ValueError(f"{field}: invalid header name {name!r}")
        if "\n" in header_value or "\r" in header_value:
            raise ValueError(f"{field}: the value of header {name!r} contains a line break")
        headers[name] = header_value
    return headers


class OtlpConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Export to an OTLP endpoint (Dash0 or any OpenTelemetry backend)."""

    # None: on exactly when an endpoint is configured (here or OTEL_EXPORTER_OTLP_ENDPOINT).
    enabled: Optional[bool] = None
    # http(s)://host:port[/base path]; https means TLS. None: OTEL_EXPORTER_OTLP_ENDPOINT,
    # else localhost:4317 (grpc) / localhost:4318 (http).
    endpoint: Optional[str] = None
    protocol: Optional[Literal["grpc", "http", "http/protobuf"]] = None  # None: OTEL_..._PROTOCOL, else grpc
    headers: Union[Dict[str, str], List[str], str] = {}
    token: Optional[str] = None  # prefer TELEMETRY_OTLP_TOKEN[_FILE]
    token_file: Optional[str] = None
    dataset: Optional[str] = None  # sent as Dash0-Dataset
    compression: Optional[Literal["gzip", "none"]] = None  # None: OTEL_..._COMPRESSION, else gzip
    timeout: Optional[Duration] = None  # per export request; None: OTEL_..._TIMEOUT, else 10s
    certificate_file: Optional[str] = None  # CA bundle for TLS; None: OTEL_..._CERTIFICATE
    deployment_environment: Optional[str] = None  # resource attribute deployment.environment[.name]
    capture_content: bool = False  # export prompt and token text
    signals: List[Signal] = msgspec.field(default_factory=lambda: list(SIGNALS))
    # A backend's Retry-After hint is honoured up to this long.
    max_retry_after: Duration = Duration(120)
    # Requests are split to stay under this size (gRPC servers refuse > 4 MiB by default).
    max_request_bytes: int = 3 * MiB

    def __post_init__(self) -> None:
        self.headers = parse_headers(self.headers)
        if self.endpoint is not None:
            _check_endpoint(self.endpoint, "otlp.endpoint")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"otlp.timeout: must be > 0, got {format_duration(self.timeout)}")
        if self.max_request_bytes < 64 * 1024:
            raise ValueError(f"otlp.max_request_bytes: must be >= 65536, got {self.max_request_bytes}")
        if len(set(self.signals)) != len(self.signals):
            raise ValueError("otlp.signals: each signal may be listed once")
        if self.dataset is not None and not self.dataset.strip():
            raise ValueError("otlp.dataset: must not be empty")

    def __repr__(self) -> str:
        shown = {field: getattr(self, field) for field in self.__struct_fields__}
        shown["token"] = None if self.token is None else "***"
        shown["headers"] = {name: "***" for name in self.headers}  # type: ignore[union-attr]
        return "OtlpConfig(" + ", ".join(f"{field}={value!r}" for field, value in shown.items()) + ")"

    def resolve(self, environ: Mapping[str, str] | None = None) -> "OtlpSettings":
        """Concrete settings: unset fields from the ``OTEL_EXPORTER_OTLP_*`` variables.

        Raises ValueError naming the field or variable at fault.
        """
        env = os.environ if environ is None else environ
        protocol_name = self.protocol or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        if protocol_name not in _PROTOCOL_NAMES:
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: must be grpc or http/protobuf, got {protocol_name!r}"
                " (http/json is not supported)"
            )
        protocol: Protocol = _PROTOCOL_NAMES[protocol_name]  # type: ignore[assignment]
        endpoint = self.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        enabled = self.enabled if self.enabled is not None else bool(endpoint)
        if endpoint is None:
            endpoint = DEFAULT_ENDPOINTS[protocol]
        else:
            _check_endpoint(endpoint, "otlp.endpoint" if self.endpoint else "OTEL_EXPORTER_OTLP_ENDPOINT")

        headers = parse_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), field="OTEL_EXPORTER_OTLP_HEADERS")
        headers.update(self.headers)  # type: ignore[arg-type]
        token = self.token or _token_from_env(env) or _read_token_file(self.token_file)
        if token:
            headers["authorization"] = f"Bearer {token}"
        if self.dataset:
            headers[DATASET_HEADER] = self.dataset

        compression = self.compression or env.get("OTEL_EXPORTER_OTLP_COMPRESSION") or "gzip"
        if compression not in ("gzip", "none"):
            raise ValueError(f"OTEL_EXPORTER_OTLP_COMPRESSION: must be gzip or none, got {compression!r}")
        timeout = self.timeout if self.timeout is not None else _env_timeout(env)
        certificate_file = self.certificate_file or env.get("OTEL_EXPORTER_OTLP_CERTIFICATE") or None
        if certificate_file is not None:
            field = "otlp.certificate_file" if self.certificate_file else "OTEL_EXPORTER_OTLP_CERTIFICATE"
            _check_ca_bundle(certificate_file, field)
        return OtlpSettings(
            enabled=enabled,
            endpoint=endpoint.rstrip("/"),
            protocol=protocol,
            headers=headers,
            compression=compression,  # type: ignore[arg-type]
            timeout=timeout,
            certificate_file=certificate_file,
            deployment_environment=self.deployment_environment,
            capture_content=self.capture_content,
            signals=tuple(signal for signal in SIGNALS if signal in self.signals),
            max_retry_after=self.max_retry_after,
            max_request_bytes=self.max_request_bytes,
        )


class OtlpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the sink runs with. ``headers`` may hold the token: never log them."""

    enabled: bool
    endpoint: str
    protocol: Protocol
    headers: Dict[str, str]
    compression: Literal["gzip", "none"]
    timeout: Duration
    certificate_file: Optional[str]
    deployment_environment: Optional[str]
    capture_content: bool
    signals: tuple[Signal, ...]
    max_retry_after: Duration
    max_request_bytes: int

    @property
    def tls(self) -> bool:
        return self.endpoint.startswith("https://")

    def describe(self) -> dict[str, Any]:
        """Safe to log: header names only, never their values."""
        return {
            "endpoint": self.endpoint,
            "protocol": self.protocol,
            "headers": sorted(self.headers),
            "compression": self.compression,
            "timeout": format_duration(self.timeout),
            "signals": list(self.signals),
        }

    def __repr__(self) -> str:
        return f"OtlpSettings({self.describe()!r})"


def _check_endpoint(endpoint: str, field: str) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field}: expected http://host:port or https://host:port (https for TLS), got {endpoint!r}")
    if parts.username or parts.password:
        raise ValueError(f"{field}: must not carry credentials; use the token or headers")
    if parts.query or parts.fragment:
        raise ValueError(f"{field}: must not have a query or fragment, got {endpoint!r}")


def _env_timeout(env: Mapping[str, str]) -> Duration:
    raw = env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        milliseconds = float(raw)
    except ValueError:
        raise ValueError(f"OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds, got {raw!r}") from None
    if milliseconds <= 0:
        raise ValueError(f"OTEL_EXPORTER_OTLP_TIMEOUT: must be > 0, got {raw!r}")
    return Duration(milliseconds / 1000.0)


def _check_ca_bundle(path: str, field: str) -> None:
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(f"{field}: {path} is not a PEM CA bundle: {exc.reason or exc}") from None
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def _token_from_env(env: Mapping[str, str]) -> Optional[str]:
    try:
        return secret_from_env(TOKEN_ENV, env)
    except OSError as exc:
        raise ValueError(f"{TOKEN_ENV}_FILE: cannot read {env[TOKEN_ENV + '_FILE']}: {exc.strerror or exc}") from None


def _read_token_file(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"otlp.token_file: cannot read {path}: {exc.strerror or exc}") from None
    return lines[0].strip() if lines else None


# -- command line ----------------------------------------------------------------

# (flag, field, help[, env]) as collector.config.cli_settings() reads them.
CLI_OPTIONS: tuple[tuple[str, ...], ...] = (
    ("--otlp/--no-otlp", "enabled", "Export to OTLP [default: on when an endpoint is set]."),
    ("--otlp-endpoint", "endpoint", "OTLP endpoint, http(s)://host:port [default: $OTEL_EXPORTER_OTLP_ENDPOINT]."),
    ("--otlp-protocol", "protocol", "grpc or http (HTTP/protobuf) [default: grpc]."),
    ("--otlp-header", "headers", "Extra header KEY=VALUE (repeatable).", "TELEMETRY_OTLP_HEADERS"),
    ("--otlp-token", "token", "Bearer token; prefer $TELEMETRY_OTLP_TOKEN or $TELEMETRY_OTLP_TOKEN_FILE."),
    ("--otlp-dataset", "dataset", "Dash0 dataset (Dash0-Dataset header)."),
    ("--otlp-compression", "compression", "gzip or none [default: gzip]."),
    ("--otlp-timeout", "timeout", "Timeout of one export request [default: 10s]."),
    ("--otlp-environment", "deployment_environment", "deployment.environment resource attribute."),
)

_CLICK_KWARGS: dict[str, dict[str, Any]] = {
    "enabled": {"default": None},
    "protocol": {"type": click.Choice(["grpc", "http", "http/protobuf"])},
    "headers": {"multiple": True, "metavar": "KEY=VALUE"},
    "compression": {"type": click.Choice(["gzip", "none"])},
    "timeout": {"type": DurationParam()},
}


def _envvar(option: tuple[str, ...]) -> str:
    return option[3] if len(option) > 3 else "TELEMETRY_" + option[0].split("/")[0].lstrip("-").upper().replace("-", "_")


def cli_options() -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """Click decorators for the ``--otlp-*`` options of ``run``.

    Parameter names are ``otlp__<field>``; pass the parsed values to
    :func:`options_to_overrides`. ``TELEMETRY_OTLP_HEADERS`` holds
    comma-separated ``KEY=VALUE`` pairs.
    """
    decorators = []
    for option in CLI_OPTIONS:
        flag, field, help_text = option[:3]
        kwargs = dict(_CLICK_KWARGS.get(field, {}))
        if field == "headers":
            # One variable holds several pairs: let parse_headers split it, not click.
            kwargs["envvar"] = None
            help_text += f" [env: {_envvar(option)}, comma-separated]"
        else:
            kwargs["envvar"] = _envvar(option)
            kwargs["show_envvar"] = True
        decorators.append(click.option(flag, f"otlp__{field}", help=help_text, **kwargs))
    return decorators


def options_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config paths (``otlp.endpoint``) for the ``--otlp-*`` values given.

    ``params`` is click's parameter mapping (other keys are ignored); options
    not given are left out, so the environment, the file and the defaults
    still apply to them.
    """
    overrides: dict[str, Any] = {}
    for option in CLI_OPTIONS:
        field = option[1]
        value = params.get(f"otlp__{field}")
        if value is not None and value != ():
            overrides[f"otlp.{field}"] = list(value) if field == "headers" else value
    return overrides
