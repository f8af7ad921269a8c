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
``telemetry_emitter_dropped_total``              ``client.report`` drops per engine and reason
==============================================  =======================================================

The generation series (histograms, requests, tokens) live in :mod:`.generations`,
bucketed a column at a time; this module routes each batch and keeps the rest.

Each collector observes only the entries the consumer group hands it, so
counters and histograms of several collectors add up: ``sum without
(instance)``. The per-engine gauges (``mlx_requests_running``, ``mlx_memory_bytes``,
…) are not kept here: they are the newest report of the whole fleet, in
:mod:`.engines`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, Metric

from collector.http.generations import Generations
from emitters.events import (
    SEVERITY_RANK,
    ClientReport,
    CustomEvent,
    ErrorEvent,
    Event,
    GenerationCompleted,
)

__all__ = ["EventMetrics", "CLIENT_REPORT", "event_field"]

CLIENT_REPORT = ClientReport.type
# What goes to the error stream besides `error` events (emitters.events.is_error).
_ERROR_SEVERITIES = frozenset(name for name, rank in SEVERITY_RANK.items() if rank >= SEVERITY_RANK["error"])
_TYPICAL = frozenset({GenerationCompleted})

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mlx_errors": ("Error events (type error or severity >= error), by error type.", ("service", "error_type")),
    "telemetry_emitter_dropped": ("Events emitters dropped, from their client reports.", ("service", "host", "reason")),
    "telemetry_emitter_sent": ("Events emitters shipped, from their client reports.", ("service", "host")),
    "telemetry_emitter_reconnects": ("Emitter reconnects to Redis, from their client reports.", ("service", "host")),
}


def event_field(event: Event, name: str) -> Any:
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
        # Besides generations, the only types any series reads; every other type costs one lookup.
        self._handlers: dict[type, Callable[[Any], None]] = {
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

    def _client_report(self, event: Event) -> None:
        engine = (event.service, event.host)
        for reason, count in _dropped(event).items():
            self._add("telemetry_emitter_dropped", engine + (reason,), count)
        for name, field in (("telemetry_emitter_sent", "sent"), ("telemetry_emitter_reconnects", "reconnects")):
            value = event_field(event, field)
            if isinstance(value, int):
                self._add(name, engine, value)

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
        yield from generations
        for name, (help_text, label_names) in _COUNTERS.items():
            counter = CounterMetricFamily(name, help_text, labels=label_names)
            for labels, value in sorted(counters[name].items()):
                counter.add_metric(list(labels), value)
            yield counter

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not run a collect()

