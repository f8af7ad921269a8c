"""Serving metrics from events, in the Prometheus text format. Aggregation is pure; no I/O.

Names follow the OpenTelemetry GenAI semantic conventions converted the way
OpenTelemetry's Prometheus exporter converts them (dots to underscores, the
unit as a suffix), with the spec's recommended bucket boundaries; labels are
short (``model``, ``service``, ``token_type``):

==============================================  =======================================================
``gen_ai_server_time_to_first_token_seconds``    ``ttft_ms`` of each ``generation.completed``
``gen_ai_server_time_per_output_token_seconds``  ``(duration - ttft) / (generation_tokens - 1)``
``gen_ai_server_request_duration_seconds``       its ``duration_ms``
``gen_ai_client_token_usage``                    ``prompt_tokens`` / ``generation_tokens`` by ``token_type``
``mlx_requests_total``                           generations by ``finish_reason``
``mlx_errors_total``                             error events by ``error_type``
``mlx_requests_running`` / ``_waiting``          the latest ``runtime.status`` per engine (service, host)
``mlx_memory_bytes`` / ``mlx_models_loaded``     idem
``telemetry_emitter_dropped_total``              ``client.report`` drops per engine and reason
==============================================  =======================================================

The generation series (histograms, requests, tokens) live in :mod:`.generations`,
bucketed a column at a time; this module routes each batch and keeps the rest.

Each collector observes only the entries the consumer group hands it, so
counters and histograms of several collectors add up: ``sum without
(instance)``. The per-engine gauges are last values: ``max without (instance)``.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.http.generations import Generations
from emitters.events import (
    SEVERITY_RANK,
    ClientReport,
    CustomEvent,
    ErrorEvent,
    Event,
    GenerationCompleted,
    RuntimeStatus,
)

__all__ = ["EventMetrics", "CLIENT_REPORT"]

CLIENT_REPORT = "client.report"
# What goes to the error stream besides `error` events (emitters.events.is_error).
_ERROR_SEVERITIES = frozenset(name for name, rank in SEVERITY_RANK.items() if rank >= SEVERITY_RANK["error"])
GB = 1024**3
_TYPICAL = frozenset({GenerationCompleted})

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlx_errors": ("Error events (type error or severity >= error), by error type.", ("service", "error_type")),
    "telemetry_emitter_dropped": ("Events emitters dropped, from their client reports.", ("service", "host", "reason")),
    "telemetry_emitter_sent": ("Events emitters shipped, from their client reports.", ("service", "host")),
    "telemetry_emitter_reconnects": ("Emitter reconnects to Redis, from their client reports.", ("service", "host")),
}
_ENGINE = ("service", "host")
_GAUGES: dict[str, str] = {
    "mlx_requests_running": "Requests in progress (runtime.status requests_running, else active_tasks).",
    "mlx_requests_waiting": "Requests queued (runtime.status requests_waiting).",
    "mlx_memory_bytes": "Memory in use (runtime.status memory_gb).",
    "mlx_peak_memory_bytes": "Peak memory (runtime.status peak_memory_gb).",
    "mlx_models_loaded": "Models loaded (runtime.status models_loaded).",
    "telemetry_emitter_buffer_high_water": "Most events an emitter held in its buffer in its last report interval.",
    "mlx_runtime_status_timestamp_seconds": "When the engine last reported its runtime.status.",
}


def _field(event: Event, name: str) -> Any:
    """A field of a typed event, else the attr of that name (the same event sent as a custom one)."""
    value = getattr(event, name, None)
    return event.attrs.get(name) if value is None else value


def _dropped(event: Event) -> dict[str, int]:
    dropped = getattr(event, "dropped", None)
    if isinstance(dropped, dict):
        return dropped
    # Sent as a custom event, the dict travels flattened: attrs `dropped.<reason>`.
    return {key[8:]: value for key, value in event.attrs.items() if key.startswith("dropped.") and isinstance(value, int)}


class EventMetrics:
    """Everything ``/metrics`` derives from events; :meth:`observe` is thread-safe and cheap.

    Also a prometheus_client custom collector: ``collect()`` yields the families.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generations = Generations()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _COUNTERS}
        self._gauges: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _GAUGES}
        # Besides generations, the only types any series reads; every other type costs one lookup.
        self._handlers: dict[type, Callable[[Any], None]] = {
            RuntimeStatus: self._runtime,
            ClientReport: self._client_report,
            CustomEvent: self._custom,
        }

    # -- aggregation -----------------------------------------------------------------------------

    def observe(self, events: Sequence[Event]) -> None:
        """One delivered batch. Typical traffic is all ``generation.completed``: whole-batch checks in C."""
        if not events:
            return
        kinds = set(map(type, events))
        if kinds == _TYPICAL:
            completed = events
        else:
            completed = [event for event in events if type(event) is GenerationCompleted]
        severities = {event.severity for event in events}
        errors = ErrorEvent in kinds or not _ERROR_SEVERITIES.isdisjoint(severities)
        with self._lock:
            if completed:
                self._generations.observe(completed)  # type: ignore[arg-type]
            if not kinds.isdisjoint(self._handlers):
                handlers = self._handlers
                for event in events:
                    handler = handlers.get(type(event))
                    if handler is not None:
                        handler(event)
            if errors:
                for event in events:
                    if type(event) is ErrorEvent:
                        self._add("mlx_errors", (event.service, event.error_type), 1)
                    elif event.severity in _ERROR_SEVERITIES:
                        self._add("mlx_errors", (event.service, event.type), 1)

    def _runtime(self, event: RuntimeStatus) -> None:
        engine = (event.service, event.host)
        gauges = self._gauges
        gauges["mlx_models_loaded"][engine] = event.models_loaded
        gauges["mlx_runtime_status_timestamp_seconds"][engine] = event.ts / 1e9
        for name, value, scale in (
            ("mlx_requests_running", _field(event, "requests_running") or event.active_tasks, 1),
            ("mlx_requests_waiting", _field(event, "requests_waiting"), 1),
            ("mlx_memory_bytes", event.memory_gb, GB),
            ("mlx_peak_memory_bytes", event.peak_memory_gb, GB),
        ):
            if isinstance(value, (int, float)):
                gauges[name][engine] = value * scale

    def _client_report(self, event: Event) -> None:
        engine = (event.service, event.host)
        for reason, count in _dropped(event).items():
            self._add("telemetry_emitter_dropped", engine + (reason,), count)
        for name, field in (("telemetry_emitter_sent", "sent"), ("telemetry_emitter_reconnects", "reconnects")):
            value = _field(event, field)
            if isinstance(value, int):
                self._add(name, engine, value)
        high_water = _field(event, "buffer_high_water")
        if isinstance(high_water, int):
            self._gauges["telemetry_emitter_buffer_high_water"][engine] = high_water

    def _custom(self, event: CustomEvent) -> None:
        if event.type == CLIENT_REPORT:
            self._client_report(event)

    def _add(self, name: str, labels: tuple[str, ...], amount: float) -> None:
        series = self._counters[name]
        series[labels] = series.get(labels, 0) + amount

    # -- exposition ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            generations = list(self._generations.collect())
            counters = {name: dict(series) for name, series in self._counters.items()}
            gauges = {name: dict(series) for name, series in self._gauges.items()}
        yield from generations
        for name, (help_text, label_names) in _COUNTERS.items():
            counter = CounterMetricFamily(name, help_text, labels=label_names)
            for labels, value in sorted(counters[name].items()):
                counter.add_metric(list(labels), value)
            yield counter
        for name, help_text in _GAUGES.items():
            gauge = GaugeMetricFamily(name, help_text, labels=_ENGINE)
            for labels, value in sorted(gauges[name].items()):
                gauge.add_metric(list(labels), value)
            yield gauge

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not run a collect()

