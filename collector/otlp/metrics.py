"""GenAI serving metrics aggregated from a batch of events. Pure: no I/O.

Histograms follow the OpenTelemetry GenAI semantic conventions, with their
units and recommended explicit bucket boundaries; attributes
``gen_ai.operation.name``, ``gen_ai.provider.name`` and ``gen_ai.request.model``:

=====================================  ========  ====================================================
``gen_ai.server.request.duration``     s         ``duration_ms`` of each ``generation.completed``
``gen_ai.server.time_to_first_token``  s         its ``ttft_ms``
``gen_ai.server.time_per_output_token`` s        ``(duration - ttft) / (generation_tokens - 1)``
``gen_ai.client.token.usage``          {token}   ``prompt_tokens`` / ``generation_tokens``, by
                                                 ``gen_ai.token.type`` = ``input`` / ``output``
=====================================  ========  ====================================================

Engine counters (monotonic sums):

=============================  ========  ==========================================================
``mlx.tokens.generated``       {token}   sum of ``generation_tokens``, by ``gen_ai.request.model``
``mlx.models.loaded``          {model}   ``model.loaded`` events, by ``gen_ai.request.model``
``mlx.models.unloaded``        {model}   ``model.unloaded`` events
``mlx.models.invalidated``     {model}   ``model.invalidated`` events
``mlx.generation.errors``      {error}   ``error`` events tied to a generation (``model`` or
                                         ``request_id`` set), by model and ``error.type``
``mlx.errors``                 {error}   every error (type ``error`` or severity >= error), by
                                         ``error.type`` (the exception type, else the event type)
=============================  ========  ==========================================================

Temporality is DELTA. Several collectors share one consumer group, so each
sees only part of every emitter's events: with deltas each exports its own
share and the backend sums them. Cumulative points would need one writer per
series, which several collectors cannot be, and their totals would reset on
every restart. To keep each series single-writer anyway (as OTLP expects of
delta streams too), the instrumentation scope carries the collector's
identity in ``mlx.collector.instance``. A batch's points cover the interval
from the previous metrics export of this collector to now, so one writer's
intervals never overlap.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, NamedTuple, Optional

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector.otlp.translate import (
    OPERATION_KEY,
    PROVIDER_KEY,
    TranslateOptions,
    operation_name,
    provider_name,
    resource_attributes,
)
from emitters.events import (
    ErrorEvent,
    Event,
    GenerationCompleted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    is_error,
)

__all__ = ["HistogramSpec", "CounterSpec", "HISTOGRAMS", "COUNTERS", "COLLECTOR_INSTANCE_KEY", "is_metric_event", "metrics_request"]

COLLECTOR_INSTANCE_KEY = "mlx.collector.instance"
_DELTA = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA


class HistogramSpec(NamedTuple):
    name: str
    unit: str
    description: str
    bounds: tuple[float, ...]


class CounterSpec(NamedTuple):
    name: str
    unit: str
    description: str


_DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
REQUEST_DURATION = HistogramSpec(
    "gen_ai.server.request.duration", "s", "Generative AI server request duration.", _DURATION_BOUNDS
)
TIME_TO_FIRST_TOKEN = HistogramSpec(
    "gen_ai.server.time_to_first_token",
    "s",
    "Time to generate first token for successful responses.",
    (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
)
TIME_PER_OUTPUT_TOKEN = HistogramSpec(
    "gen_ai.server.time_per_output_token",
    "s",
    "Time per output token generated after the first token for successful responses.",
    (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5),
)
TOKEN_USAGE = HistogramSpec(
    "gen_ai.client.token.usage",
    "{token}",
    "Number of input and output tokens used.",
    tuple(float(4**power) for power in range(14)),  # 1, 4, 16, ... 67108864
)
HISTOGRAMS = (REQUEST_DURATION, TIME_TO_FIRST_TOKEN, TIME_PER_OUTPUT_TOKEN, TOKEN_USAGE)

TOKENS_GENERATED = CounterSpec("mlx.tokens.generated", "{token}", "Output tokens generated.")
MODELS_LOADED = CounterSpec("mlx.models.loaded", "{model}", "Models loaded.")
MODELS_UNLOADED = CounterSpec("mlx.models.unloaded", "{model}", "Models unloaded.")
MODELS_INVALIDATED = CounterSpec("mlx.models.invalidated", "{model}", "Models invalidated.")
GENERATION_ERRORS = CounterSpec("mlx.generation.errors", "{error}", "Errors raised while serving a generation.")
ERRORS = CounterSpec("mlx.errors", "{error}", "Error events, by error type.")
COUNTERS = (TOKENS_GENERATED, MODELS_LOADED, MODELS_UNLOADED, MODELS_INVALIDATED, GENERATION_ERRORS, ERRORS)

_MODEL_COUNTERS: dict[type, CounterSpec] = {
    ModelLoaded: MODELS_LOADED,
    ModelUnloaded: MODELS_UNLOADED,
    ModelInvalidated: MODELS_INVALIDATED,
}

_Attributes = tuple[tuple[str, str], ...]
_ResourceKey = tuple[str, str, int]


class _Histogram:
    __slots__ = ("count", "total", "low", "high", "buckets")

    def __init__(self, size: int) -> None:
        self.count = 0
        self.total = 0.0
        self.low = float("inf")
        self.high = float("-inf")
        self.buckets = [0] * size

    def record(self, value: float, bounds: tuple[float, ...]) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        # Bucket i holds (bounds[i-1], bounds[i]]; the last one everything above.
        self.buckets[bisect_left(bounds, value)] += 1


class _Aggregate:
    """Per resource: histogram states and counter totals by attribute set."""

    def __init__(self) -> None:
        self.histograms: dict[_ResourceKey, dict[tuple[HistogramSpec, _Attributes], _Histogram]] = {}
        self.counters: dict[_ResourceKey, dict[tuple[CounterSpec, _Attributes], int]] = {}

    def observe(self, resource: _ResourceKey, spec: HistogramSpec, attributes: _Attributes, value: float) -> None:
        states = self.histograms.setdefault(resource, {})
        state = states.get((spec, attributes))
        if state is None:
            state = states[(spec, attributes)] = _Histogram(len(spec.bounds) + 1)
        state.record(value, spec.bounds)

    def add(self, resource: _ResourceKey, spec: CounterSpec, attributes: _Attributes, amount: int) -> None:
        totals = self.counters.setdefault(resource, {})
        totals[(spec, attributes)] = totals.get((spec, attributes), 0) + amount


def is_metric_event(event: Event) -> bool:
    """Whether ``event`` contributes to any metric point."""
    return type(event) is GenerationCompleted or type(event) in _MODEL_COUNTERS or is_error(event)


def _aggregate(events: Iterable[Event], options: TranslateOptions) -> _Aggregate:
    aggregate = _Aggregate()
    for event in events:
        resource = (event.service, event.host, event.pid)
        kind = type(event)
        if kind is GenerationCompleted:
            _observe_generation(aggregate, resource, event, options)  # type: ignore[arg-type]
        elif kind in _MODEL_COUNTERS:
            model: str = event.model  # type: ignore[union-attr]
            aggregate.add(resource, _MODEL_COUNTERS[kind], (("gen_ai.request.model", model),), 1)
        if is_error(event):
            error_type = event.error_type if kind is ErrorEvent else event.type  # type: ignore[union-attr]
            aggregate.add(resource, ERRORS, (("error.type", error_type),), 1)
            if kind is ErrorEvent and (event.model or event.request_id):  # type: ignore[union-attr]
                attributes: _Attributes = (("error.type", error_type),)
                if event.model:  # type: ignore[union-attr]
                    attributes = (("gen_ai.request.model", event.model),) + attributes  # type: ignore[union-attr]
                aggregate.add(resource, GENERATION_ERRORS, attributes, 1)
    return aggregate


def _observe_generation(
    aggregate: _Aggregate, resource: _ResourceKey, event: GenerationCompleted, options: TranslateOptions
) -> None:
    attributes: _Attributes = (
        (OPERATION_KEY, operation_name(event, options)),
        (PROVIDER_KEY, provider_name(event, options)),
        ("gen_ai.request.model", event.model),
    )
    duration_s = event.duration_ms / 1000.0
    aggregate.observe(resource, REQUEST_DURATION, attributes, duration_s)
    if event.ttft_ms is not None:
        ttft_s = event.ttft_ms / 1000.0
        aggregate.observe(resource, TIME_TO_FIRST_TOKEN, attributes, ttft_s)
        if event.generation_tokens > 1:
            per_token = max(duration_s - ttft_s, 0.0) / (event.generation_tokens - 1)
            aggregate.observe(resource, TIME_PER_OUTPUT_TOKEN, attributes, per_token)
    aggregate.observe(resource, TOKEN_USAGE, attributes + (("gen_ai.token.type", "input"),), event.prompt_tokens)
    aggregate.observe(resource, TOKEN_USAGE, attributes + (("gen_ai.token.type", "output"),), event.generation_tokens)
    aggregate.add(resource, TOKENS_GENERATED, (("gen_ai.request.model", event.model),), event.generation_tokens)


def metrics_request(
    events: Iterable[Event],
    options: TranslateOptions,
    *,
    start_ns: int,
    end_ns: int,
    collector_instance: str,
) -> Optional[ExportMetricsServiceRequest]:
    """DELTA points for ``events`` over ``[start_ns, end_ns]``; None if they carry no metric."""
    aggregate = _aggregate(events, options)
    resources = list(dict.fromkeys([*aggregate.histograms, *aggregate.counters]))
    if not resources:
        return None
    scope = InstrumentationScope(
        name=options.scope_name,
        version=options.scope_version,
        attributes=[_key_value(COLLECTOR_INSTANCE_KEY, collector_instance)],
    )
    request = ExportMetricsServiceRequest()
    for resource_key in resources:
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.CopyFrom(_resource(resource_key, options.deployment_environment))
        scope_metrics = resource_metrics.scope_metrics.add()
        scope_metrics.scope.CopyFrom(scope)
        metrics: dict[str, metrics_pb2.Metric] = {}
        for (spec, attributes), state in aggregate.histograms.get(resource_key, {}).items():
            metric = _metric(metrics, scope_metrics, spec.name, spec.unit, spec.description)
            metric.histogram.aggregation_temporality = _DELTA
            metric.histogram.data_points.add(
                attributes=[_key_value(key, value) for key, value in attributes],
                start_time_unix_nano=start_ns,
                time_unix_nano=end_ns,
                count=state.count,
                sum=state.total,
                min=state.low,
                max=state.high,
                bucket_counts=state.buckets,
                explicit_bounds=spec.bounds,
            )
        for (counter, attributes), total in aggregate.counters.get(resource_key, {}).items():
            metric = _metric(metrics, scope_metrics, counter.name, counter.unit, counter.description)
            metric.sum.aggregation_temporality = _DELTA
            metric.sum.is_monotonic = True
            metric.sum.data_points.add(
                attributes=[_key_value(key, value) for key, value in attributes],
                start_time_unix_nano=start_ns,
                time_unix_nano=end_ns,
                as_int=total,
            )
    return request


def _metric(
    metrics: dict[str, metrics_pb2.Metric],
    scope_metrics: metrics_pb2.ScopeMetrics,
    name: str,
    unit: str,
    description: str,
) -> metrics_pb2.Metric:
    """The scope's metric called ``name``, created on first use (one per name)."""
    metric = metrics.get(name)
    if metric is None:
        metric = metrics[name] = scope_metrics.metrics.add(name=name, unit=unit, description=description)
    return metric


def _key_value(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _resource(key: _ResourceKey, environment: Optional[str]) -> Resource:
    return Resource(attributes=[_key_value(name, value) for name, value in resource_attributes(*key, environment).items()])
