"""The ``[otlp]`` config section (its command-line options: :mod:`collector.otlp.cli`).

Precedence, highest first: ``--otlp-*`` flags, ``TELEMETRY_OTLP_*`` variables,
the TOML file, then the standard OpenTelemetry variables, per signal first
(``OTEL_EXPORTER_OTLP_{LOGS,TRACES,METRICS}_*``, then
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``_HEADERS``, ``_PROTOCOL``,
``_COMPRESSION``, ``_TIMEOUT`` in milliseconds, ``_CERTIFICATE``,
``_CLIENT_KEY``, ``_CLIENT_CERTIFICATE``, ``_INSECURE``; see
:mod:`collector.otlp.signals`), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``,
``OTEL_SEMCONV_STABILITY_OPT_IN``, then the defaults. Fields left unset
(``None``) in :class:`OtlpConfig` are filled from the ``OTEL_*`` variables by
:meth:`OtlpConfig.resolve`, which the sink calls.

The bearer token is a secret: give it as ``TELEMETRY_OTLP_TOKEN`` or in a file
named by ``TELEMETRY_OTLP_TOKEN_FILE`` (or ``token_file``); ``--otlp-token``
works but shows in ``ps``. It is sent as ``Authorization: Bearer <token>``,
and no repr of these objects shows it (nor any header value).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Union
from urllib.parse import unquote

import msgspec

from collector.durations import Duration, format_duration
from collector.otlp.signals import (
    SignalSettings,
    check_ca_bundle,
    check_endpoint,
    check_readable,
    env_milliseconds,
    env_timeout,
    env_value,
    parse_bool,
    parse_resource_attributes,
    signal_endpoint,
)
from collector.redisconn import secret_from_env

__all__ = [
    "OtlpConfig",
    "OtlpSettings",
    "CLI_OPTIONS",
    "SIGNALS",
    "parse_headers",
    "DEFAULT_ENDPOINTS",
]

Protocol = Literal["grpc", "http"]
Signal = Literal["logs", "traces", "metrics"]
SIGNALS: tuple[Signal, ...] = ("logs", "traces", "metrics")
DEFAULT_ENDPOINTS: dict[str, str] = {"grpc": "http://localhost:4317", "http": "http://localhost:4318"}
DEFAULT_METRIC_INTERVAL = Duration(60)
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
    client_key_file: Optional[str] = None  # mTLS; None: OTEL_..._CLIENT_KEY
    client_certificate_file: Optional[str] = None  # mTLS; None: OTEL_..._CLIENT_CERTIFICATE
    insecure: Optional[bool] = None  # gRPC host:port without TLS; None: OTEL_..._INSECURE, else false
    # Added to (and overriding) OTEL_RESOURCE_ATTRIBUTES; the event's service/host/pid win.
    resource_attributes: Dict[str, str] = {}
    # Metric points are aggregated over this interval; None: OTEL_METRIC_EXPORT_INTERVAL (ms), else 60s.
    metric_export_interval: Optional[Duration] = None
    # None: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, else delta (see collector.otlp.metrics).
    temporality: Optional[Literal["delta", "cumulative"]] = None
    # Tries of a request failing with a status the spec does not call retryable, then dead letters.
    max_attempts: int = 5
    # Export the engine's token counts as gen_ai.client.token.usage (a client metric) too.
    client_token_usage: bool = False
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
            check_endpoint(self.endpoint, "otlp.endpoint")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"otlp.timeout: must be > 0, got {format_duration(self.timeout)}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"otlp.max_request_bytes: must be >= 1024, got {self.max_request_bytes}")
        if self.max_attempts < 1:
            raise ValueError(f"otlp.max_attempts: must be >= 1, got {self.max_attempts}")
        if self.metric_export_interval is not None and self.metric_export_interval <= 0:
            raise ValueError("otlp.metric_export_interval: must be > 0")
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
        endpoints = {signal: self.endpoint or env_value(env, signal, "ENDPOINT")[0] for signal in SIGNALS}
        enabled = self.enabled if self.enabled is not None else any(endpoints.values())
        token = self.token or _token_from_env(env) or _read_token_file(self.token_file)
        per_signal = {signal: self._signal(env, signal, protocol, token) for signal in SIGNALS}
        logs = per_signal["logs"]
        resource = parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        resource.update(self.resource_attributes)
        return OtlpSettings(
            enabled=enabled,
            endpoint=(self.endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINTS[protocol]).rstrip("/"),
            protocol=protocol,
            headers=logs.headers,
            compression=logs.compression,
            timeout=logs.timeout,
            certificate_file=logs.certificate_file,
            deployment_environment=self.deployment_environment,
            capture_content=self.capture_content,
            signals=tuple(signal for signal in SIGNALS if signal in self.signals),
            max_retry_after=self.max_retry_after,
            max_request_bytes=self.max_request_bytes,
            per_signal=per_signal,
            resource_attributes=resource,
            metric_export_interval=self._metric_interval(env),
            temporality=self.temporality or _temporality(env),
            max_attempts=self.max_attempts,
            client_token_usage=self.client_token_usage,
            latest_genai="gen_ai_latest_experimental"
            in [item.strip() for item in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")],
        )

    def _signal(self, env: Mapping[str, str], signal: Signal, protocol: Protocol, token: Optional[str]) -> SignalSettings:
        raw, name = env_value(env, signal, "ENDPOINT")
        per_signal = self.endpoint is None and raw is not None and name.endswith(f"_{signal.upper()}_ENDPOINT")
        endpoint = self.endpoint or raw or DEFAULT_ENDPOINTS[protocol]
        field = "otlp.endpoint" if self.endpoint else name
        if self.insecure is not None:
            insecure = self.insecure
        else:
            value, variable = env_value(env, signal, "INSECURE")
            insecure = parse_bool(value, variable) if value is not None else False
        url, target, tls = signal_endpoint(protocol, signal, endpoint, per_signal, insecure, field)

        headers = parse_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""), field="OTEL_EXPORTER_OTLP_HEADERS")
        specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_HEADERS"
        headers.update(parse_headers(env.get(specific, ""), field=specific))
        headers.update(self.headers)  # type: ignore[arg-type]
        if token:
            headers["authorization"] = f"Bearer {token}"
        if self.dataset:
            headers[DATASET_HEADER] = self.dataset

        value, variable = env_value(env, signal, "COMPRESSION")
        compression = self.compression or value or "gzip"
        if compression not in ("gzip", "none"):
            raise ValueError(f"{variable}: must be gzip or none, got {compression!r}")
        timeout = self.timeout if self.timeout is not None else env_timeout(*env_value(env, signal, "TIMEOUT"))
        files: dict[str, Optional[str]] = {}
        for field_name, setting in (
            ("certificate_file", "CERTIFICATE"),
            ("client_key_file", "CLIENT_KEY"),
            ("client_certificate_file", "CLIENT_CERTIFICATE"),
        ):
            value, variable = env_value(env, signal, setting)
            path = getattr(self, field_name) or value
            if path is not None:
                check_readable(path, f"otlp.{field_name}" if getattr(self, field_name) else variable)
            files[field_name] = path
        if files["certificate_file"] is not None:
            field = "otlp.certificate_file" if self.certificate_file else env_value(env, signal, "CERTIFICATE")[1]
            check_ca_bundle(files["certificate_file"], field)
        if (files["client_key_file"] is None) != (files["client_certificate_file"] is None):
            raise ValueError(
                f"otlp.client_key_file / OTEL_EXPORTER_OTLP_{signal.upper()}_CLIENT_KEY: mTLS needs both the client"
                " key and the client certificate; set both or neither"
            )
        return SignalSettings(
            endpoint=url,
            target=target,
            tls=tls,
            headers=headers,
            compression=compression,  # type: ignore[arg-type]
            timeout=timeout,
            **files,
        )

    def _metric_interval(self, env: Mapping[str, str]) -> Duration:
        if self.metric_export_interval is not None:
            return self.metric_export_interval
        name = "OTEL_METRIC_EXPORT_INTERVAL"
        return env_milliseconds(env.get(name), name, DEFAULT_METRIC_INTERVAL)


def _temporality(env: Mapping[str, str]) -> Literal["delta", "cumulative"]:
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    raw = env.get(name, "").strip().lower()
    if raw in ("", "delta", "lowmemory"):  # lowmemory: counters and histograms are delta
        return "delta"
    if raw == "cumulative":
        return "cumulative"
    raise ValueError(f"{name}: must be delta, cumulative or lowmemory, got {raw!r}")


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
    per_signal: Dict[str, SignalSettings]
    resource_attributes: Dict[str, str] = {}
    metric_export_interval: Duration = DEFAULT_METRIC_INTERVAL
    temporality: Literal["delta", "cumulative"] = "delta"
    max_attempts: int = 5
    client_token_usage: bool = False
    latest_genai: bool = False

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
            "endpoints": {signal: target.endpoint for signal, target in self.per_signal.items()},
            "metric_export_interval": format_duration(self.metric_export_interval),
            "temporality": self.temporality,
        }

    def __repr__(self) -> str:
        return f"OtlpSettings({self.describe()!r})"


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

# (flag, field, help[, env]) as collector.config.cli_settings() reads them; click: collector.otlp.cli.
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
