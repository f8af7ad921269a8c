"""The alert channels besides the stream and the log, built from the config: JSONL, OTLP, webhook.

Each channel has its own connection or file, made from the settings: the
daemon's sinks keep the state of the event batch they are retrying (so
nothing is sent twice), and alerts must not disturb it.
"""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

import msgspec

from collector.alerts.config import WebhookConfig
from collector.alerts.delivery import Channel, DeliveryFailed
from collector.alerts.records import AlertRecord, iso_time
from collector.sinks import SinkAuthError, SinkUnavailable
from emitters.events import CustomEvent

if TYPE_CHECKING:
    from collector.config import Config
    from collector.otlp.config import OtlpSettings
    from collector.otlp.transport import Transport

__all__ = [
    "JsonlChannel",
    "OtlpChannel",
    "WebhookChannel",
    "alertmanager_payload",
    "alert_event",
    "build_channels",
]

_encoder = msgspec.json.Encoder()

ALERTMANAGER_PATH = "/api/v2/alerts"
MAX_ATTR_LEN = 4096


# --- payloads ------------------------------------------------------------------------------------


def _number(value: Optional[float]) -> str:
    return "" if value is None else f"{value:g}"


def alertmanager_payload(
    records: Sequence[AlertRecord],
    *,
    now: float,
    hold: Callable[[str], float],
    generator_url: Optional[str] = None,
) -> list[dict[str, Any]]:
    """The Alertmanager v2 ``POST /api/v2/alerts`` body for ``records``.

    A firing alert gets ``endsAt`` ``hold(rule)`` seconds ahead (twice its
    repeat interval): Alertmanager then keeps it active between our
    re-notifications and resolves it on its own only if we stop sending
    altogether. Labels with empty values are left out, as Alertmanager
    treats them as absent.
    """
    alerts = []
    for record in records:
        labels = {"alertname": record.rule}
        labels.update((name, value) for name, value in record.labels.items() if value != "")
        annotations = {"summary": record.summary, "kind": record.kind}
        if record.value is not None:
            annotations["value"] = _number(record.value)
        if record.threshold is not None:
            annotations["threshold"] = _number(record.threshold)
        alerts.append(
            {
                "labels": labels,
                "annotations": annotations,
                "startsAt": record.starts_at,
                "endsAt": record.ends_at or iso_time(now + hold(record.rule)),
                "generatorURL": generator_url or f"urn:mlx-telemetry:alert:{record.rule}",
            }
        )
    return alerts


def alert_event(record: AlertRecord, *, host: str, pid: int, now: float) -> CustomEvent:
    """The alert as an ``alert.firing``/``alert.resolved`` event, so the OTLP sink exports it as a log record.

    Severity: a firing critical alert is ``critical``, another firing one
    ``warn``, a resolution ``info``.
    """
    if record.status == "resolved":
        severity = "info"
    else:
        severity = "critical" if record.labels.get("severity") == "critical" else "warn"
    attrs: dict[str, Any] = {
        "alert.rule": record.rule,
        "alert.kind": record.kind,
        "alert.status": record.status,
        "alert.fingerprint": record.fingerprint,
        "alert.summary": record.summary[:MAX_ATTR_LEN],
        "alert.starts_at": record.starts_at,
    }
    if record.ends_at is not None:
        attrs["alert.ends_at"] = record.ends_at
    if record.value is not None:
        attrs["alert.value"] = record.value
    if record.threshold is not None:
        attrs["alert.threshold"] = record.threshold
    for name, value in list(record.labels.items())[: 64 - len(attrs)]:
        attrs[f"alert.label.{name}"[:128]] = value[:MAX_ATTR_LEN]
    return CustomEvent(
        type=f"alert.{record.status}",
        id=secrets.token_hex(16),
        ts=int(now * 1e9),
        service="telemetry-collector",
        host=host[:255] or "unknown",
        pid=pid,
        severity=severity,  # type: ignore[arg-type]
        trace_id=secrets.token_hex(16),
        span_id=secrets.token_hex(8),
        attrs=attrs,
    )


# --- channels ----------------------------------------------------------------------------------


class JsonlChannel:
    """``alerts-YYYY-MM-DD.jsonl`` through the JSONL sink's rotating writer."""

    name = "jsonl"

    def __init__(self, directory: str, *, max_bytes: int, retention_days: Optional[int]) -> None:
        from collector.sinks.jsonl import RotatingJsonlWriter

        self._writer = RotatingJsonlWriter(directory, "alerts", max_bytes=max_bytes, retention_days=retention_days)

    def send(self, records: Sequence[AlertRecord]) -> None:
        try:
            self._writer.write_lines([_encoder.encode(record) for record in records])
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {self._writer.directory}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._writer.close()


class OtlpChannel:
    """A log record per alert (an ``alert.*`` event) over a connection of its own.

    ``transport`` defaults to one made from ``settings``.
    """

    name = "otlp"

    def __init__(
        self,
        settings: "OtlpSettings",
        *,
        transport: Optional["Transport"] = None,
        host: Optional[str] = None,
        pid: Optional[int] = None,
    ) -> None:
        # Imported only when used: the protobuf modules weigh on start-up time and memory.
        from collector.otlp.resources import Resources
        from collector.otlp.translate import TranslateOptions, Translator
        from collector.otlp.transport import make_transport

        options = TranslateOptions(
            deployment_environment=settings.deployment_environment,
            capture_content=settings.capture_content,
            max_request_bytes=settings.max_request_bytes,
            latest_genai=settings.latest_genai,
        )
        self._translator = Translator(options, Resources(options, settings.resource_attributes))
        self._transport = transport or make_transport(settings, "logs")
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid

    def send(self, records: Sequence[AlertRecord]) -> None:
        from collector.otlp.transport import Rejected

        now = time.time()
        events = [alert_event(record, host=self._host, pid=self._pid, now=now) for record in records]
        try:
            for payload in self._translator.logs(events, time.time_ns()):
                self._transport.export("logs", payload)
        except SinkUnavailable as exc:
            raise DeliveryFailed(str(exc), retry_after=exc.retry_after) from None
        except (Rejected, SinkAuthError) as exc:
            raise DeliveryFailed(str(exc), retryable=False) from None

    def close(self) -> None:
        self._transport.close()


class WebhookChannel:
    """``POST`` the alerts as Alertmanager v2 alerts or as a JSON list of records.

    Plain ``http.client``: no redirects are followed (a POST turned into a
    GET would lose the alert silently). 5xx, 429, timeouts and connection
    errors are retried; any other 4xx is final.
    """

    name = "webhook"

    def __init__(self, config: WebhookConfig, *, hold: Callable[[str], float]) -> None:
        url = config.url
        if config.format == "alertmanager" and not url.rstrip("/").endswith(ALERTMANAGER_PATH):
            url = url.rstrip("/") + ALERTMANAGER_PATH
        parts = urlsplit(url)
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._config = config
        self._hold = hold
        self._headers = {"Content-Type": "application/json", "User-Agent": "mlx-telemetry-collector"}
        self._headers.update(config.resolved_headers())

    def body(self, records: Sequence[AlertRecord], now: float) -> bytes:
        if self._config.format == "alertmanager":
            payload: Any = alertmanager_payload(
                records, now=now, hold=self._hold, generator_url=self._config.generator_url
            )
        else:
            payload = list(records)
        return _encoder.encode(payload)

    def send(self, records: Sequence[AlertRecord]) -> None:
        body = self.body(records, time.time())
        connection_class = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = connection_class(self._host, self._port, timeout=self._config.timeout)
        try:
            connection.request("POST", self._path, body=body, headers=self._headers)
            response = connection.getresponse()
            response.read(64 * 1024)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryFailed(f"POST {self._safe_url()}: {exc or type(exc).__name__}") from None
        finally:
            connection.close()
        if 200 <= response.status < 300:
            return
        message = f"POST {self._safe_url()}: HTTP {response.status} {response.reason}"
        if response.status == 429 or response.status >= 500:
            raise DeliveryFailed(message, retry_after=_retry_after(response.getheader("Retry-After")))
        raise DeliveryFailed(message, retryable=False)

    def _safe_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    def close(self) -> None:
        """Connections are per request; nothing is held."""


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


def build_channels(config: "Config", *, hold: Callable[[str], float]) -> list[Channel]:
    """The channels ``config`` turns on: JSONL with the JSONL sink, OTLP when logs are exported, the webhook.

    Raises ValueError naming the setting when the OTLP settings (which may
    come from ``OTEL_EXPORTER_OTLP_*``) or a webhook secret are unusable.
    """
    channels: list[Channel] = []
    jsonl = config.jsonl
    if jsonl.enabled:
        channels.append(JsonlChannel(jsonl.dir, max_bytes=jsonl.max_bytes, retention_days=jsonl.retention_days or None))
    otlp = config.otlp.resolve()
    if otlp.enabled and "logs" in otlp.signals:
        channels.append(OtlpChannel(otlp))
    if config.alerts.webhook is not None:
        channels.append(WebhookChannel(config.alerts.webhook, hold=hold))
    return channels
