"""The OTLP sink: every batch exported synchronously, acknowledged only on success.

The SDK's batch processors drop data when the backend is down, so they are
not on this path: ``write`` translates the batch (logs, spans, GenAI metrics),
sends each request and returns only when all were accepted. Failures are the
shared sink errors (see :mod:`collector.otlp.transport` for the mapping), so
the daemon stops reading and retries with backoff (``SinkUnavailable``),
dead-letters (``SinkRejected``) or pauses (``SinkAuthError``).

A retried batch is not sent twice: the sink remembers, for the batch in
flight, which requests were already accepted, and resends only the rest
(the same bytes, so metric intervals stay put). A rejection refers to the
records behind that signal: all of them for logs (nothing else is sent for
them then; a dead-letter replay sends everything again), those with spans for
traces, those with metrics for metrics.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

import msgspec
import structlog

from collector.otlp.config import OtlpConfig, OtlpSettings, Signal
from collector.otlp.metrics import is_metric_event, metrics_request
from collector.otlp.spans import makes_log, makes_span
from collector.otlp.translate import TranslateOptions, Translator
from collector.otlp.transport import Rejected, Transport, make_transport
from collector.sinks import Record, SinkAuthError, SinkRejected, SinkUnavailable

__all__ = ["OtlpSink"]

log = structlog.get_logger("collector.otlp")

_BatchKey = tuple[tuple[str, str], ...]


class _Progress:
    """What is known about one batch: its requests and which were accepted."""

    def __init__(
        self, key: _BatchKey, payloads: dict[Signal, list[bytes]], items: dict[Signal, int], metrics_end: int
    ) -> None:
        self.key = key
        self.payloads = payloads
        self.items = items  # log records, spans, metric events behind each signal
        self.sent: dict[Signal, int] = {signal: 0 for signal in payloads}  # accepted requests, in order
        self.rejections: dict[Signal, str] = {}
        self.metrics_end = metrics_end

    @property
    def complete(self) -> bool:
        if "logs" in self.rejections:
            return True  # nothing else is sent for a dead-lettered batch
        return all(
            signal in self.rejections or self.sent[signal] == len(requests)
            for signal, requests in self.payloads.items()
        )


class OtlpStats(msgspec.Struct):
    """Counters for health output: what the backend accepted, and what went wrong."""

    requests: int = 0
    log_records: int = 0
    spans: int = 0
    metric_events: int = 0  # events that contributed metric points
    partially_rejected: int = 0  # items the backend dropped from accepted requests
    rejected_batches: int = 0
    failures: int = 0  # transient and auth failures


class OtlpSink:
    """Sink protocol implementation for OTLP over gRPC or HTTP/protobuf."""

    name = "otlp"

    def __init__(
        self,
        settings: OtlpSettings,
        *,
        collector_instance: Optional[str] = None,
        transport: Optional[Transport] = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.options = TranslateOptions(
            deployment_environment=settings.deployment_environment,
            capture_content=settings.capture_content,
            max_request_bytes=settings.max_request_bytes,
        )
        self.collector_instance = collector_instance or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = OtlpStats()
        self._translator = Translator(self.options)
        self._transport = transport or make_transport(settings)
        self._clock = clock
        self._metrics_start = clock()
        self._progress: Optional[_Progress] = None
        self._lock = threading.Lock()
        log.info("otlp_sink_ready", collector_instance=self.collector_instance, **settings.describe())

    @classmethod
    def from_config(
        cls,
        config: OtlpConfig,
        *,
        environ: Optional[Mapping[str, str]] = None,
        collector_instance: Optional[str] = None,
    ) -> "OtlpSink":
        """A sink for ``config`` (unset fields from ``OTEL_EXPORTER_OTLP_*``); ValueError if unusable."""
        return cls(config.resolve(environ), collector_instance=collector_instance)

    def write(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        with self._lock:
            key: _BatchKey = tuple((record.stream, record.stream_id) for record in batch)
            progress = self._progress
            if progress is None or progress.key != key:
                progress = self._progress = self._translate(key, batch)
            if not progress.complete:
                self._send(progress)
                if progress.payloads.get("metrics") and "metrics" not in progress.rejections:
                    self._metrics_start = progress.metrics_end
                if progress.rejections:
                    self.stats.rejected_batches += 1
            if progress.rejections:
                raise SinkRejected(
                    "; ".join(progress.rejections.values()),
                    self._rejected_records(progress, batch),
                )

    def _translate(self, key: _BatchKey, batch: Sequence[Record]) -> _Progress:
        events = [record.event for record in batch]
        now = self._clock()
        payloads: dict[Signal, list[bytes]] = {}
        items: dict[Signal, int] = {}
        logs, spans = self._translator.translate(
            events, now, logs="logs" in self.settings.signals, spans="traces" in self.settings.signals
        )
        for signal in self.settings.signals:
            if signal == "logs":
                payloads[signal] = logs
                items[signal] = sum(1 for event in events if makes_log(event))
            elif signal == "traces":
                payloads[signal] = spans
                items[signal] = sum(1 for event in events if makes_span(event))
            else:
                items[signal] = sum(1 for event in events if is_metric_event(event))
                request = metrics_request(
                    events,
                    self.options,
                    start_ns=self._metrics_start,
                    end_ns=max(now, self._metrics_start),
                    collector_instance=self.collector_instance,
                )
                payloads[signal] = [] if request is None else [request.SerializeToString()]
        return _Progress(key, payloads, items, max(now, self._metrics_start))

    def _send(self, progress: _Progress) -> None:
        """Send what is not yet accepted, in order; raises on the first transient or auth failure."""
        for signal, requests in progress.payloads.items():
            if signal in progress.rejections:
                continue
            while progress.sent[signal] < len(requests):
                payload = requests[progress.sent[signal]]
                try:
                    result = self._transport.export(signal, payload)
                except Rejected as exc:
                    progress.rejections[signal] = exc.reason
                    if signal == "logs":
                        return  # the whole batch is dead-lettered: send nothing else for it
                    break
                except (SinkUnavailable, SinkAuthError):
                    self.stats.failures += 1
                    raise
                self.stats.requests += 1
                progress.sent[signal] += 1
                if progress.sent[signal] == len(requests):
                    self._count_accepted(signal, progress.items[signal])
                if result.rejected:
                    self.stats.partially_rejected += result.rejected
                    log.warning(
                        "otlp_partial_success",
                        signal=signal,
                        rejected=result.rejected,
                        backend_message=result.message,
                    )

    def _count_accepted(self, signal: Signal, items: int) -> None:
        if signal == "logs":
            self.stats.log_records += items
        elif signal == "traces":
            self.stats.spans += items
        else:
            self.stats.metric_events += items

    def _rejected_records(self, progress: _Progress, batch: Sequence[Record]) -> list[Record]:
        if "logs" in progress.rejections:
            return list(batch)
        rejected: list[Record] = []
        for record in batch:
            if "traces" in progress.rejections and makes_span(record.event):
                rejected.append(record)
            elif "metrics" in progress.rejections and is_metric_event(record.event):
                rejected.append(record)
        return rejected

    def flush(self) -> None:
        """Nothing is buffered between batches: ``write`` returns only once exported."""

    def close(self) -> None:
        with self._lock:
            self._transport.close()
