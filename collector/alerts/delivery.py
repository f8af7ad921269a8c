"""Alert delivery: the daemon log, JSONL, OTLP and a webhook, each on its own.

The ``{prefix}:alerts`` stream entry is written by the state transition
itself (see :mod:`collector.alerts.state`); everything else goes through
here. The log line is written at once; every other channel has a worker
thread with a bounded queue (sentry-python's transport worker): publishing
never blocks, a full queue drops and counts, a failed send is retried with
capped, jittered backoff (honouring ``Retry-After``) and then dropped and
counted. A dead webhook therefore delays nothing but its own queue.
"""

from __future__ import annotations

import http.client
import itertools
import os
import queue
import random
import secrets
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence
from urllib.parse import urlsplit

import msgspec

from collector.alerts.config import WebhookConfig
from collector.alerts.rules import AlertRecord, iso_time
from collector.records import Record
from collector.sinks import Sink, SinkAuthError, SinkRejected, SinkUnavailable
from emitters.events import CustomEvent, encode

__all__ = [
    "DeliveryFailed",
    "Channel",
    "ChannelWorker",
    "Delivery",
    "JsonlChannel",
    "OtlpChannel",
    "alert_log_sink",
    "WebhookChannel",
    "alertmanager_payload",
    "alert_event",
    "log_alert",
]

_encoder = msgspec.json.Encoder()

ALERTMANAGER_PATH = "/api/v2/alerts"
MAX_ATTR_LEN = 4096


class DeliveryFailed(Exception):
    """A channel could not deliver; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(Protocol):
    """Where alert records go besides the stream."""

    name: str

    def send(self, records: Sequence[AlertRecord]) -> None:
        """Deliver ``records`` or raise :class:`DeliveryFailed`."""

    def close(self) -> None:
        """Release resources; not used afterwards."""


# --- pure translations -------------------------------------------------------------------------


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


def log_alert(log: Any, record: AlertRecord) -> None:
    """Firing at warning (error for a critical alert), resolved at info."""
    fields = {
        "rule": record.rule,
        "kind": record.kind,
        "status": record.status,
        "labels": record.labels,
        "value": record.value,
        "threshold": record.threshold,
        "starts_at": record.starts_at,
        "fingerprint": record.fingerprint,
    }
    if record.status == "resolved":
        log.info("alert_resolved", summary=record.summary, ends_at=record.ends_at, **fields)
    elif record.labels.get("severity") == "critical":
        log.error("alert_firing", summary=record.summary, **fields)
    else:
        log.warning("alert_firing", summary=record.summary, **fields)


# --- channels ----------------------------------------------------------------------------------


class JsonlChannel:
    """``alerts-YYYY-MM-DD.jsonl`` through the JSONL sink's rotating writer."""

    name = "jsonl"

    def __init__(self, writer: Any) -> None:
        self._writer = writer  # collector.sinks.jsonl.RotatingJsonlWriter

    def send(self, records: Sequence[AlertRecord]) -> None:
        try:
            self._writer.write_lines([_encoder.encode(record) for record in records])
        except OSError as exc:
            raise DeliveryFailed(f"cannot write {self._writer.directory}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self._writer.close()


class OtlpChannel:
    """A log record per alert through an OTLP sink (as an ``alert.*`` event).

    ``owned``: the channel closes the sink (one made for alerts alone, see
    :func:`alert_log_sink`).
    """

    name = "otlp"

    def __init__(self, sink: Sink, *, owned: bool = False, host: Optional[str] = None, pid: Optional[int] = None) -> None:
        self._sink = sink
        self._owned = owned
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        # The OTLP sink tells batches apart by their stream ids; alerts have none of their own.
        self._ids = itertools.count(1)

    def send(self, records: Sequence[AlertRecord]) -> None:
        now = time.time()
        batch = []
        for record in records:
            event = alert_event(record, host=self._host, pid=self._pid, now=now)
            batch.append(Record(stream="events", stream_id=f"0-{next(self._ids)}", event=event, raw=encode(event)))
        try:
            self._sink.write(batch)
        except SinkUnavailable as exc:
            raise DeliveryFailed(str(exc), retry_after=exc.retry_after) from None
        except (SinkRejected, SinkAuthError) as exc:
            raise DeliveryFailed(str(exc), retryable=False) from None

    def close(self) -> None:
        if self._owned:
            self._sink.close()


def alert_log_sink(sink: Sink) -> Optional[Sink]:
    """A logs-only sibling of the daemon's OTLP sink for alerts, or None when logs are not exported.

    A sibling, not the daemon's own sink: that one keeps the state of the
    event batch it is retrying (so nothing is sent twice) and counts errors
    into metrics, and alerts must disturb neither.
    """
    from collector.otlp.sink import OtlpSink

    if not isinstance(sink, OtlpSink):
        return sink
    if "logs" not in sink.settings.signals:
        return None
    settings = msgspec.structs.replace(sink.settings, signals=("logs",))
    return OtlpSink(settings, collector_instance=sink.collector_instance)


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


# --- the worker --------------------------------------------------------------------------------


_STOP = object()


class ChannelWorker:
    """One channel's thread and bounded queue; losses are counted by reason.

    Reasons: ``queue_full`` (published faster than delivered), ``failed``
    (retries used up), ``rejected`` (the receiver refused for good) and
    ``shutdown`` (still queued or in retry when :meth:`close`'s deadline came).
    """

    def __init__(
        self,
        channel: Channel,
        *,
        queue_size: int,
        retries: int,
        log: Any,
        max_batch: int = 100,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.channel = channel
        self.retries = retries
        self.max_batch = max_batch
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sent = 0
        self.attempts = 0
        self.lost: Counter[str] = Counter()
        self._log = log
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._closing = threading.Event()  # cuts backoff waits short
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"alerts-{channel.name}", daemon=True)
        self._thread.start()

    def put(self, record: AlertRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.lost["queue_full"] += 1

    def queued(self) -> int:
        return self._queue.qsize()

    def _take(self) -> Optional[list[AlertRecord]]:
        """The next batch, or None once told to stop and nothing is left."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put_nowait(_STOP)  # seen again after this batch
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if time.monotonic() > self._deadline:
                self.lost["shutdown"] += len(batch)
                continue
            self._deliver(batch)

    def _deliver(self, batch: list[AlertRecord]) -> None:
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                self.channel.send(batch)
            except DeliveryFailed as exc:
                if not exc.retryable:
                    self.lost["rejected"] += len(batch)
                    self._log.error("alert_delivery_rejected", channel=self.channel.name, alerts=len(batch), error=str(exc))
                    return
                final = attempt == self.retries
                self._log.warning(
                    "alert_delivery_failed",
                    channel=self.channel.name,
                    alerts=len(batch),
                    attempt=attempt + 1,
                    error=str(exc),
                    retrying=not final and not self._closing.is_set(),
                )
                if final:
                    self.lost["failed"] += len(batch)
                    return
                if self._closing.is_set():
                    self.lost["shutdown"] += len(batch)
                    return
                delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                if self._closing.wait(delay):
                    self.lost["shutdown"] += len(batch)
                    return
            else:
                self.sent += len(batch)
                return

    def close(self, timeout: float) -> None:
        """Deliver what is queued (one attempt each) until ``timeout``, then count the rest as lost."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self._thread.is_alive():
            self.lost["shutdown"] += self._queue.qsize()
        self.channel.close()

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "queued": self.queued(), "attempts": self.attempts, "lost": dict(self.lost)}


class Delivery:
    """Logs each notification and hands it to every channel's worker."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        log: Any,
        queue_size: int = 1000,
        retries: Optional[Mapping[str, int]] = None,
    ) -> None:
        self._log = log
        self.workers = [
            ChannelWorker(channel, queue_size=queue_size, retries=(retries or {}).get(channel.name, 5), log=log)
            for channel in channels
        ]

    def publish(self, records: Sequence[AlertRecord]) -> None:
        """Never blocks: the log line now, the channels in their own time."""
        for record in records:
            log_alert(self._log, record)
            for worker in self.workers:
                worker.put(record)

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.close(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, dict[str, Any]]:
        return {worker.channel.name: worker.stats() for worker in self.workers}
