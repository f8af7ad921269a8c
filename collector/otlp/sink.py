"""The OTLP sink: logs and spans exported with every batch, metrics per export interval.

``write`` translates the batch, sends its logs and traces requests (the two
signals concurrently, each on its own transport) and returns only when each
was accepted or refused for good; then it folds the batch's metric events
into the current interval and persists that aggregation to Redis before the
daemon acks the batch (:mod:`collector.otlp.metric_export`). Failures are the
shared sink errors, so the daemon retries with backoff (``SinkUnavailable``),
dead-letters (``SinkRejected``) or pauses (``SinkAuthError``).

Several batches may be written at once (``concurrent_writes``: the daemon
keeps up to ``batches_in_flight`` exports going), each on the daemon's
worker thread with its own requests. A retried batch is not sent twice: the
sink remembers, for each batch in flight, which requests were accepted and
resends only the rest. Per request:

- retryable statuses (see :mod:`collector.otlp.transport`): retried without bound;
- a 413: the request is halved and the halves retried, down to single records;
- ``Failed`` (e.g. HTTP 500): ``max_attempts`` tries, then refused for good;
- refused for good: the records in that request (by ``event.id``) are
  dead-lettered with the backend's status and message; the rest of the batch,
  and the following batches, flow on.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Mapping, Optional, Sequence

import msgspec
import structlog

from collector.config import MAX_BATCHES_IN_FLIGHT
from collector.otlp.config import OtlpConfig, OtlpSettings, Signal
from collector.otlp.metric_export import MetricPipeline
from collector.otlp.metric_store import MemoryMetricStore, MetricStore
from collector.otlp.resources import Resources
from collector.otlp.split import event_ids, split_request
from collector.otlp.translate import TranslateOptions, Translator
from collector.otlp.transport import Failed, Rejected, TooLarge, Transport, make_transport
from collector.sinks import Record, SinkAuthError, SinkRejected, SinkUnavailable

__all__ = ["OtlpSink"]

log = structlog.get_logger("collector.otlp")

_BatchKey = tuple[tuple[str, str], ...]
_BATCH_SIGNALS: tuple[Signal, ...] = ("logs", "traces")
# Batches whose progress is remembered for a retry; one abandoned by the daemon (a stop, a reread
# after a reconnect) is forgotten once this many newer ones came.
_REMEMBERED_BATCHES = 64
# Requests sent at once: both signals of every batch in flight (threads start only when needed).
_SENDERS = len(_BATCH_SIGNALS) * MAX_BATCHES_IN_FLIGHT


class _Progress:
    """One batch: its requests still to send per signal, and what was refused for good."""

    def __init__(self, key: _BatchKey, payloads: dict[Signal, list[bytes]], items: dict[Signal, int]) -> None:
        self.key = key
        self.pending: dict[Signal, deque[bytes]] = {signal: deque(requests) for signal, requests in payloads.items()}
        self.items = items  # log records / spans behind each signal
        self.attempts: dict[Signal, int] = {signal: 0 for signal in payloads}
        self.rejected_ids: set[str] = set()
        self.reasons: list[str] = []
        self.metrics_added = False

    @property
    def complete(self) -> bool:
        return not any(self.pending.values())


class OtlpStats(msgspec.Struct):
    """Counters for health output: what the backend accepted, and what went wrong."""

    requests: int = 0
    log_records: int = 0
    spans: int = 0
    metric_events: int = 0  # events folded into metric intervals
    partially_rejected: int = 0  # items the backend dropped from accepted requests
    rejected_batches: int = 0
    rejected_records: int = 0  # dead-lettered after a permanent refusal or bounded tries
    split_requests: int = 0  # requests halved after a 413
    failures: int = 0  # transient and auth failures


class OtlpSink:
    """Sink protocol implementation for OTLP over gRPC or HTTP/protobuf."""

    name = "otlp"
    concurrent_writes = True

    def __init__(
        self,
        settings: OtlpSettings,
        *,
        collector_instance: Optional[str] = None,
        store: Optional[MetricStore] = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.options = TranslateOptions(
            deployment_environment=settings.deployment_environment,
            capture_content=settings.capture_content,
            max_request_bytes=settings.max_request_bytes,
            client_token_usage=settings.client_token_usage,
            latest_genai=settings.latest_genai,
        )
        self.collector_instance = collector_instance or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = OtlpStats()
        self._resources = Resources(self.options, settings.resource_attributes)
        self._translator = Translator(self.options, self._resources)
        self._transports: dict[Signal, Transport] = {
            signal: make_transport(settings, signal) for signal in settings.signals
        }
        self._clock = clock
        self._progress: OrderedDict[_BatchKey, _Progress] = OrderedDict()
        self._lock = threading.Lock()  # the progress map and closing
        self._closed = False
        self._stats_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=_SENDERS, thread_name_prefix="otlp-send")
        self.metrics: Optional[MetricPipeline] = None
        if "metrics" in settings.signals:
            self.metrics = MetricPipeline(
                instance=self.collector_instance,
                options=self.options,
                starts=self._translator.starts,
                transport=self._transports["metrics"],
                store=store or MemoryMetricStore(),
                resource=self._resources.message,
                interval=settings.metric_export_interval,
                temporality=settings.temporality,
                max_attempts=settings.max_attempts,
                schema_url=self._resources.schema_url,
                clock=clock,
            )
        log.info("otlp_sink_ready", collector_instance=self.collector_instance, **settings.describe())

    @classmethod
    def from_config(
        cls,
        config: OtlpConfig,
        *,
        environ: Optional[Mapping[str, str]] = None,
        collector_instance: Optional[str] = None,
        store: Optional[MetricStore] = None,
    ) -> "OtlpSink":
        """A sink for ``config`` (unset fields from ``OTEL_EXPORTER_OTLP_*``); ValueError if unusable."""
        return cls(config.resolve(environ), collector_instance=collector_instance, store=store)

    def write(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        key: _BatchKey = tuple((record.stream, record.stream_id) for record in batch)
        with self._lock:
            progress = self._progress.get(key)
        if progress is None:
            progress = self._translate(key, batch)
            with self._lock:
                self._progress[key] = progress
                while len(self._progress) > _REMEMBERED_BATCHES:
                    self._progress.popitem(last=False)
        if not progress.complete:
            self._send(progress)
        if self.metrics is not None:
            if not progress.metrics_added:
                added = self.metrics.add([record.event for record in batch])
                progress.metrics_added = True
                with self._stats_lock:
                    self.stats.metric_events += added
            self.metrics.persist()
        with self._lock:
            self._progress.pop(key, None)  # done: accepted, or refused for good just below
        if progress.rejected_ids:
            records = [record for record in batch if record.event.id in progress.rejected_ids]
            with self._stats_lock:
                self.stats.rejected_batches += 1
                self.stats.rejected_records += len(records)
            raise SinkRejected("; ".join(progress.reasons), records)

    def _translate(self, key: _BatchKey, batch: Sequence[Record]) -> _Progress:
        events = [record.event for record in batch]
        signals = self.settings.signals
        logs, spans = self._translator.translate(
            events, self._clock(), logs="logs" in signals, spans="traces" in signals
        )
        payloads: dict[Signal, list[bytes]] = {}
        items: dict[Signal, int] = {}
        if "logs" in signals:
            payloads["logs"], items["logs"] = logs, logs.records
        if "traces" in signals:
            payloads["traces"], items["traces"] = spans, spans.records
        return _Progress(key, payloads, items)

    def _send(self, progress: _Progress) -> None:
        """Send every signal's pending requests, the signals concurrently; raise the gravest failure."""
        signals = [signal for signal, pending in progress.pending.items() if pending]
        futures = [self._pool.submit(self._send_signal, progress, signal) for signal in signals]
        errors = [future.exception() for future in futures]
        for kind in (SinkAuthError, SinkUnavailable):
            for error in errors:
                if isinstance(error, kind):
                    with self._stats_lock:
                        self.stats.failures += 1
                    raise error
        for error in errors:
            if error is not None:
                raise error

    def _send_signal(self, progress: _Progress, signal: Signal) -> None:
        pending = progress.pending[signal]
        transport = self._transports[signal]
        while pending:
            payload = pending[0]
            try:
                result = transport.export(signal, payload)
            except TooLarge as exc:
                halves = split_request(signal, payload)
                pending.popleft()
                if halves is None:
                    self._refuse(progress, signal, payload, exc.reason)
                else:
                    with self._stats_lock:
                        self.stats.split_requests += 1
                    pending.extendleft(reversed(halves))
                continue
            except Rejected as exc:
                pending.popleft()
                self._refuse(progress, signal, payload, exc.reason)
                continue
            except Failed as exc:
                progress.attempts[signal] += 1
                if progress.attempts[signal] < self.settings.max_attempts:
                    raise SinkUnavailable(
                        f"{exc.reason} (try {progress.attempts[signal]} of {self.settings.max_attempts})",
                        retry_after=exc.retry_after,
                    ) from None
                pending.popleft()
                self._refuse(progress, signal, payload, f"{exc.reason} (after {progress.attempts[signal]} tries)")
                continue
            pending.popleft()
            progress.attempts[signal] = 0
            with self._stats_lock:
                self.stats.requests += 1
                if not pending:
                    self._count_accepted(signal, progress.items[signal])
                self.stats.partially_rejected += result.rejected
            if result.rejected or result.message:
                # Logged even when nothing was rejected: the backend had something to say.
                log.warning(
                    "otlp_partial_success", signal=signal, rejected=result.rejected, backend_message=result.message
                )

    def _refuse(self, progress: _Progress, signal: Signal, payload: bytes, reason: str) -> None:
        progress.attempts[signal] = 0
        ids = event_ids(signal, payload)
        with self._stats_lock:  # the signals are sent from two threads
            progress.rejected_ids |= ids
            progress.reasons.append(reason)
        log.error("otlp_request_refused", signal=signal, reason=reason, action="its records go to the dead letters")

    def _count_accepted(self, signal: Signal, items: int) -> None:
        if signal == "logs":
            self.stats.log_records += items
        else:
            self.stats.spans += items

    def flush(self) -> None:
        """Logs and spans are never buffered; metric intervals are persisted with every batch."""

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.metrics is not None:
                self.metrics.close()
            self._pool.shutdown(wait=True)
            for transport in self._transports.values():
                transport.close()
