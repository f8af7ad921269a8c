"""GenAI serving metrics: which values each event contributes. Pure: no I/O.

Histograms follow the OpenTelemetry GenAI semantic conventions, with their
units and recommended explicit bucket boundaries; attributes
``gen_ai.operation.name``, the provider (``gen_ai.system``, or
``gen_ai.provider.name`` with the latest conventions) and ``gen_ai.request.model``:

=====================================  ========  ====================================================
``gen_ai.server.request.duration``     s         every generation, completed or failed; a failed one
                                                 carries ``error.type`` (semconv)
``gen_ai.server.time_to_first_token``  s         ``ttft_ms`` of a completed generation
``gen_ai.server.time_per_output_token`` s        ``(duration - ttft) / (generation_tokens - 1)``
``gen_ai.client.token.usage``          {token}   only with ``otlp.client_token_usage``: the engine's
                                                 counts are server-side, not a client's view
=====================================  ========  ====================================================

Engine counters (monotonic sums):

=============================  ========  ==========================================================
``mlx.tokens.generated``       {token}   sum of ``generation_tokens``, by ``gen_ai.request.model``
``mlx.tokens.prompt``          {token}   sum of ``prompt_tokens``, by ``gen_ai.request.model``
``mlx.models.loaded``          {model}   ``model.loaded`` events, by ``gen_ai.request.model``
``mlx.models.unloaded``        {model}   ``model.unloaded`` events
``mlx.models.invalidated``     {model}   ``model.invalidated`` events
``mlx.generation.errors``      {error}   ``error`` events tied to a generation (``model`` or
                                         ``request_id`` set), by model and ``error.type``
``mlx.errors``                 {error}   every error (type ``error`` or severity >= error), by
                                         ``error.type`` (the exception type, else the event type)
``mlx.emitter.dropped``        {event}   ``client.report`` drops, by ``mlx.drop.reason``; the
                                         resource names the emitting service
=============================  ========  ==========================================================

Points are aggregated per export interval (:mod:`collector.otlp.intervals`).
Temporality is DELTA by default: several collectors share one consumer
group, so each sees only part of every emitter's events; with deltas each
exports its own share and the backend sums them. The instrumentation scope
carries the collector's identity in ``mlx.collector.instance`` so every series
has a single writer. CUMULATIVE (on request) reports running totals per
collector since its start.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Union

from collector.otlp.spans import StartTimes, failure_of, generation_duration_ms, is_failed_generation
from collector.otlp.translate import OPERATION_KEY, TranslateOptions, operation_name, provider_name
from emitters.events import (
    ClientReport,
    ErrorEvent,
    Event,
    GenerationCompleted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    is_error,
)

__all__ = [
    "HistogramSpec",
    "CounterSpec",
    "HISTOGRAMS",
    "COUNTERS",
    "SPECS",
    "Observation",
    "is_metric_event",
    "observations",
]


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
TOKENS_PROMPT = CounterSpec("mlx.tokens.prompt", "{token}", "Prompt tokens processed.")
EMITTER_DROPPED = CounterSpec(
    "mlx.emitter.dropped", "{event}", "Events an emitter dropped before they reached Redis, by reason."
)
COUNTERS = (
    TOKENS_GENERATED,
    TOKENS_PROMPT,
    MODELS_LOADED,
    MODELS_UNLOADED,
    MODELS_INVALIDATED,
    GENERATION_ERRORS,
    ERRORS,
    EMITTER_DROPPED,
)
SPECS: dict[str, HistogramSpec | CounterSpec] = {spec.name: spec for spec in (*HISTOGRAMS, *COUNTERS)}

_MODEL_COUNTERS: dict[type, CounterSpec] = {
    ModelLoaded: MODELS_LOADED,
    ModelUnloaded: MODELS_UNLOADED,
    ModelInvalidated: MODELS_INVALIDATED,
}

Attributes = tuple[tuple[str, str], ...]
ResourceKey = tuple[str, str, int]


class Observation(NamedTuple):
    """One value for one series; ``event`` is the exemplar's source (histograms)."""

    spec: Union[HistogramSpec, CounterSpec]
    resource: ResourceKey
    attributes: Attributes
    value: float
    event: Optional[Event] = None


def is_metric_event(event: Event) -> bool:
    """Whether ``event`` contributes to any metric point."""
    kind = type(event)
    return kind is GenerationCompleted or kind is ClientReport or kind in _MODEL_COUNTERS or is_error(event)


def observations(event: Event, options: TranslateOptions, starts: StartTimes) -> Iterator[Observation]:
    """Every metric value ``event`` contributes."""
    resource = (event.service, event.host, event.pid)
    kind = type(event)
    if kind is GenerationCompleted or is_failed_generation(event):
        yield from _generation(event, resource, options, starts)
    elif kind in _MODEL_COUNTERS:
        yield Observation(_MODEL_COUNTERS[kind], resource, (("gen_ai.request.model", event.model),), 1)
    elif kind is ClientReport:
        for reason, count in sorted(event.dropped.items()):
            if count:
                yield Observation(EMITTER_DROPPED, resource, (("mlx.drop.reason", reason),), count)
    if is_error(event):
        error_type = event.error_type if kind is ErrorEvent else event.type
        yield Observation(ERRORS, resource, (("error.type", error_type),), 1)
        if kind is ErrorEvent and (event.model or event.request_id):
            attributes: Attributes = (("error.type", error_type),)
            if event.model:
                attributes = (("gen_ai.request.model", event.model),) + attributes
            yield Observation(GENERATION_ERRORS, resource, attributes, 1)


def _generation(
    event: Event, resource: ResourceKey, options: TranslateOptions, starts: StartTimes
) -> Iterator[Observation]:
    model = getattr(event, "model", None) or "unknown"
    attributes: Attributes = (
        (OPERATION_KEY, operation_name(event, options)),
        (options.provider_key, provider_name(event, options)),
        ("gen_ai.request.model", model),
    )
    duration_s = generation_duration_ms(event, starts) / 1000.0
    failure = failure_of(event)
    if failure is not None:
        # Failed requests are in the duration histogram, told apart by error.type (semconv).
        yield Observation(REQUEST_DURATION, resource, attributes + (("error.type", failure.error_type),), duration_s, event)
        return
    yield Observation(REQUEST_DURATION, resource, attributes, duration_s, event)
    assert type(event) is GenerationCompleted
    if event.ttft_ms is not None:
        ttft_s = event.ttft_ms / 1000.0
        yield Observation(TIME_TO_FIRST_TOKEN, resource, attributes, ttft_s, event)
        if event.generation_tokens > 1:
            per_token = max(duration_s - ttft_s, 0.0) / (event.generation_tokens - 1)
            yield Observation(TIME_PER_OUTPUT_TOKEN, resource, attributes, per_token, event)
    if options.client_token_usage:
        yield Observation(TOKEN_USAGE, resource, attributes + (("gen_ai.token.type", "input"),), event.prompt_tokens, event)
        yield Observation(TOKEN_USAGE, resource, attributes + (("gen_ai.token.type", "output"),), event.generation_tokens, event)
    model_only = (("gen_ai.request.model", model),)
    yield Observation(TOKENS_GENERATED, resource, model_only, event.generation_tokens)
    yield Observation(TOKENS_PROMPT, resource, model_only, event.prompt_tokens)
