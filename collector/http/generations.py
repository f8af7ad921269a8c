"""The generation series of ``/metrics``: histograms and counters per (model, service), a column at a time.

The metrics stage sees every ``generation.completed`` on the collector's
delivery thread, whose whole budget is ~11 us an event. Bucketing each event
in Python (a bisect, a division and a sum per histogram) cost ~1.5 us; here an
event costs a list comprehension per field (its four numbers wait in lists),
and the values are bucketed a few thousand at a time, or when ``/metrics`` is
scraped: sorted once, then one bisect per bucket bound. Stdlib only: numpy
folded at ~0.15 us an event against ~0.5 here, but took 12 MB of every
collector's memory (bench row 6: 62.9 MB peak with it, 50.5 without). The
exposition is the same as one ``observe`` per event: ``le`` buckets include
their bound, and sums add value after value in arrival order, so they do not
depend on how batches were cut or when scrapes came.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from functools import reduce
from operator import add
from typing import Iterator, Optional

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from emitters.events import GenerationCompleted

__all__ = ["Generations", "HISTOGRAMS", "FOLD_AT"]

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
_TTFT, _TPOT, _DURATION, _USAGE = HISTOGRAMS
_REQUESTS_HELP = "Generations completed, by finish reason."
_TOKENS_HELP = "Output tokens generated."

# Events a series holds before they are folded in: sorting and bisecting a few thousand values
# at a time keeps the Python work per event to a comprehension or two, while a series' waiting
# values stay under ~300 KB.
FOLD_AT = 2048


class _Histogram:
    """Cumulative bucket counts (values at most each bound, then all values) and the sum of one series."""

    __slots__ = ("bounds", "les", "cumulative", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
        self.cumulative = [0] * (len(bounds) + 1)
        self.sum: float = 0

    def add(self, values: list[float], total: Optional[int] = None) -> None:
        """``total``: the exact sum of integer values (token counts); other values are summed in order,
        one addition after another from the running sum on (not sum(): from Python 3.12 it compensates)."""
        if values:
            ordered = sorted(values)
            cumulative = self.cumulative
            for index, bound in enumerate(self.bounds):  # `le` buckets include their bound
                cumulative[index] += bisect_right(ordered, bound)
            cumulative[-1] += len(ordered)
            if total is None:
                self.sum = float(reduce(add, values, self.sum))
            else:
                self.sum += total

    def exposed(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``le`` buckets and the sum, as HistogramMetricFamily.add_metric takes them."""
        return list(zip(self.les, self.cumulative)), self.sum


class _Series:
    """One (model, service): its values waiting in lists, folded into histograms by :meth:`fold`."""

    __slots__ = ("duration_ms", "ttft_ms", "prompt", "output", "finish", "ttft", "tpot", "duration", "tokens_in", "tokens_out")  # fmt: skip

    def __init__(self) -> None:
        self.duration_ms: list[float] = []
        self.ttft_ms: list[Optional[float]] = []
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.finish: dict[str, int] = {}
        self.ttft = _Histogram(HISTOGRAMS[_TTFT][1])
        self.tpot = _Histogram(HISTOGRAMS[_TPOT][1])
        self.duration = _Histogram(HISTOGRAMS[_DURATION][1])
        self.tokens_in = _Histogram(HISTOGRAMS[_USAGE][1])
        self.tokens_out = _Histogram(HISTOGRAMS[_USAGE][1])

    def add(self, events: list[GenerationCompleted]) -> None:
        self.duration_ms += [event.duration_ms for event in events]
        self.ttft_ms += [event.ttft_ms for event in events]
        self.prompt += [event.prompt_tokens for event in events]
        self.output += [event.generation_tokens for event in events]
        reasons = [event.finish_reason for event in events]
        finish = self.finish
        for reason in set(reasons):  # a handful of distinct reasons: count each in C
            label = reason or "unknown"
            finish[label] = finish.get(label, 0) + reasons.count(reason)
        if len(self.duration_ms) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        if not self.duration_ms:
            return
        duration = [value / 1000.0 for value in self.duration_ms]
        ttft = [None if value is None else value / 1000.0 for value in self.ttft_ms]
        prompt, output = self.prompt, self.output
        self.duration_ms, self.ttft_ms, self.prompt, self.output = [], [], [], []
        self.duration.add(duration)
        self.ttft.add([value for value in ttft if value is not None])
        # After the first token: (duration - ttft) / (tokens - 1), for generations of 2+ tokens with a TTFT.
        decode = [
            (total - first if total > first else 0.0) / (tokens - 1.0)
            for total, first, tokens in zip(duration, ttft, output)
            if first is not None and tokens > 1
        ]
        self.tpot.add(decode)
        self.tokens_in.add(prompt, sum(prompt))
        self.tokens_out.add(output, sum(output))


class Generations:
    """Every series derived from ``generation.completed``; the caller holds the lock."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], _Series] = {}

    def observe(self, completed: list[GenerationCompleted]) -> None:
        models = [event.model for event in completed]
        services = [event.service for event in completed]
        count = len(completed)
        # Typically one engine's batch: one series, no partitioning.
        if models.count(models[0]) == count and services.count(services[0]) == count:
            self._get(models[0], services[0]).add(completed)
            return
        parts: defaultdict[tuple[str, str], list[GenerationCompleted]] = defaultdict(list)
        for key, event in zip(zip(models, services), completed):
            parts[key].append(event)
        for (model, service), part in parts.items():
            self._get(model, service).add(part)

    def _get(self, model: str, service: str) -> _Series:
        series = self._series.get((model, service))
        if series is None:
            series = self._series[model, service] = _Series()
        return series

    def collect(self) -> Iterator[Metric]:
        """The families, folding what waits first."""
        ordered = sorted(self._series.items())
        for _, series in ordered:
            series.fold()
        for name, attribute in ((_TTFT, "ttft"), (_TPOT, "tpot"), (_DURATION, "duration")):
            family = HistogramMetricFamily(name, HISTOGRAMS[name][0], labels=["model", "service"])
            for labels, series in ordered:
                histogram: _Histogram = getattr(series, attribute)
                if histogram.cumulative[-1]:  # no observation: no series (a model without TTFT)
                    family.add_metric(list(labels), *histogram.exposed())
            yield family
        usage = HistogramMetricFamily(_USAGE, HISTOGRAMS[_USAGE][0], labels=["model", "service", "token_type"])
        requests = CounterMetricFamily("mlx_requests", _REQUESTS_HELP, labels=["model", "service", "finish_reason"])
        generated = CounterMetricFamily("mlx_tokens_generated", _TOKENS_HELP, labels=["model", "service"])
        for (model, service), series in ordered:
            usage.add_metric([model, service, "input"], *series.tokens_in.exposed())
            usage.add_metric([model, service, "output"], *series.tokens_out.exposed())
            for reason, count in sorted(series.finish.items()):
                requests.add_metric([model, service, reason], count)
            generated.add_metric([model, service], series.tokens_out.sum)
        yield from (usage, requests, generated)
