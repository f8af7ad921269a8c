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

Each collector observes only the entries the consumer group hands it, so
counters and histograms of several collectors add up: ``sum without
(instance)``. The per-engine gauges are last values: ``max without (instance)``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from emitters.events import SEVERITY_RANK, ErrorEvent, Event, GenerationCompleted, RuntimeStatus

__all__ = ["EventMetrics", "HISTOGRAMS", "CLIENT_REPORT"]

CLIENT_REPORT = "client.report"
# What goes to the error stream besides `error` events (emitters.events.is_error).
_ERROR_SEVERITIES = frozenset(name for name, rank in SEVERITY_RANK.items() if rank >= SEVERITY_RANK["error"])
GB = 1024**3

# The OTel GenAI spec's explicit bucket boundaries (collector/otlp/metrics.py holds the same for
# OTLP; it is not imported here because it pulls the protobuf modules into every collector).
HISTOGRAMS: dict[str, tuple[str, tuple[float, ...]]] = {
    "gen_ai_server_time_to_first_token_seconds": (
        "Time to generate first token for successful responses.",
        (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    ),
    "gen_ai_server_time_per_output_token_seconds": (
        "Time per output token generated after the first token for successful responses.",
        (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
    ),
    "gen_ai_server_request_duration_seconds": (
        "Generative AI server request duration.",
        (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92),
    ),
    "gen_ai_client_token_usage": (
        "Number of input and output tokens used.",
        tuple(float(4**power) for power in range(14)),
    ),
}
_TTFT_BOUNDS = HISTOGRAMS["gen_ai_server_time_to_first_token_seconds"][1]
_TPOT_BOUNDS = HISTOGRAMS["gen_ai_server_time_per_output_token_seconds"][1]
_DURATION_BOUNDS = HISTOGRAMS["gen_ai_server_request_duration_seconds"][1]
_TOKEN_BOUNDS = HISTOGRAMS["gen_ai_client_token_usage"][1]

_REQUESTS_HELP = "Generations completed, by finish reason."
_TOKENS_HELP = "Output tokens generated."
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


def _cumulative(buckets: list[int], total: float, bounds: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    pairs, running = [], 0
    for bound, count in zip((*bounds, float("inf")), buckets):
        running += count
        pairs.append((floatToGoString(bound), running))
    return pairs, total


class _ModelSeries:
    """Every series of one (model, service), updated inline: the hot path of the metrics stage.

    Flat slots rather than one object per histogram: each level of attribute
    lookup costs measurably at tens of thousands of events per second.
    """

    __slots__ = ("ttft", "ttft_sum", "tpot", "tpot_sum", "duration", "duration_sum",
                 "tokens_in", "tokens_in_sum", "tokens_out", "tokens_out_sum", "finish", "generated")  # fmt: skip

    def __init__(self) -> None:
        # One count per bucket, the last one +Inf.
        self.ttft, self.ttft_sum = [0] * (len(_TTFT_BOUNDS) + 1), 0.0
        self.tpot, self.tpot_sum = [0] * (len(_TPOT_BOUNDS) + 1), 0.0
        self.duration, self.duration_sum = [0] * (len(_DURATION_BOUNDS) + 1), 0.0
        self.tokens_in, self.tokens_in_sum = [0] * (len(_TOKEN_BOUNDS) + 1), 0
        self.tokens_out, self.tokens_out_sum = [0] * (len(_TOKEN_BOUNDS) + 1), 0
        self.finish: dict[str, int] = {}
        self.generated = 0

    def observe(self, event: GenerationCompleted) -> None:
        # Prometheus buckets are `le` (upper bound included): bisect_left finds that bucket.
        duration_s = event.duration_ms / 1000.0
        self.duration[bisect_left(_DURATION_BOUNDS, duration_s)] += 1
        self.duration_sum += duration_s
        tokens = event.generation_tokens
        ttft_ms = event.ttft_ms
        if ttft_ms is not None:
            ttft_s = ttft_ms / 1000.0
            self.ttft[bisect_left(_TTFT_BOUNDS, ttft_s)] += 1
            self.ttft_sum += ttft_s
            if tokens > 1:
                per_token = (duration_s - ttft_s if duration_s > ttft_s else 0.0) / (tokens - 1)
                self.tpot[bisect_left(_TPOT_BOUNDS, per_token)] += 1
                self.tpot_sum += per_token
        prompt = event.prompt_tokens
        self.tokens_in[bisect_left(_TOKEN_BOUNDS, prompt)] += 1
        self.tokens_in_sum += prompt
        self.tokens_out[bisect_left(_TOKEN_BOUNDS, tokens)] += 1
        self.tokens_out_sum += tokens
        reason = event.finish_reason or "unknown"
        finish = self.finish
        finish[reason] = finish.get(reason, 0) + 1
        self.generated += tokens

    def snapshot(self) -> tuple[Any, ...]:
        """ttft, tpot, duration, tokens in, tokens out (each cumulative buckets and sum), finish reasons, tokens."""
        return (
            _cumulative(self.ttft, self.ttft_sum, _TTFT_BOUNDS),
            _cumulative(self.tpot, self.tpot_sum, _TPOT_BOUNDS),
            _cumulative(self.duration, self.duration_sum, _DURATION_BOUNDS),
            _cumulative(self.tokens_in, self.tokens_in_sum, _TOKEN_BOUNDS),
            _cumulative(self.tokens_out, self.tokens_out_sum, _TOKEN_BOUNDS),
            dict(self.finish),
            self.generated,
        )


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
        self._models: dict[tuple[str, str], _ModelSeries] = {}
        self._counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _COUNTERS}
        self._gauges: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in _GAUGES}

    # -- aggregation -----------------------------------------------------------------------------

    def observe(self, events: Iterable[Event]) -> None:
        with self._lock:
            models = self._models
            for event in events:
                kind = type(event)
                if kind is GenerationCompleted:
                    key = (event.model, event.service)
                    series = models.get(key)
                    if series is None:
                        series = models[key] = _ModelSeries()
                    series.observe(event)
                elif kind is RuntimeStatus:
                    self._runtime(event)
                elif event.type == CLIENT_REPORT:
                    self._client_report(event)
                if kind is ErrorEvent or event.severity in _ERROR_SEVERITIES:
                    error_type = event.error_type if kind is ErrorEvent else event.type
                    self._add("mlx_errors", (event.service, error_type), 1)

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

    def _add(self, name: str, labels: tuple[str, ...], amount: float) -> None:
        series = self._counters[name]
        series[labels] = series.get(labels, 0) + amount

    # -- exposition ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            models = {key: series.snapshot() for key, series in self._models.items()}
            counters = {name: dict(series) for name, series in self._counters.items()}
            gauges = {name: dict(series) for name, series in self._gauges.items()}
        yield from _model_families(models)
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


_Snapshot = tuple[Any, ...]


def _model_families(models: dict[tuple[str, str], _Snapshot]) -> Iterator[Metric]:
    names = list(HISTOGRAMS)  # ttft, tpot, duration, token usage: the order of the snapshot
    for index, name in enumerate(names[:3]):
        family = HistogramMetricFamily(name, HISTOGRAMS[name][0], labels=["model", "service"])
        for labels, snapshot in sorted(models.items()):
            if snapshot[index][0][-1][1]:  # no observation: no series (a model without TTFT)
                family.add_metric(list(labels), *snapshot[index])
        yield family
    usage = HistogramMetricFamily(names[3], HISTOGRAMS[names[3]][0], labels=["model", "service", "token_type"])
    requests = CounterMetricFamily("mlx_requests", _REQUESTS_HELP, labels=["model", "service", "finish_reason"])
    generated = CounterMetricFamily("mlx_tokens_generated", _TOKENS_HELP, labels=["model", "service"])
    for (model, service), snapshot in sorted(models.items()):
        usage.add_metric([model, service, "input"], *snapshot[3])
        usage.add_metric([model, service, "output"], *snapshot[4])
        for reason, count in sorted(snapshot[5].items()):
            requests.add_metric([model, service, reason], count)
        generated.add_metric([model, service], snapshot[6])
    yield from (usage, requests, generated)
