"""The generation series of ``/metrics``: histograms and counters per (model, service), a column at a time.

The metrics stage sees every ``generation.completed`` on the collector's
delivery thread, whose whole budget is ~11 us an event. Bucketing each event
in Python (a bisect, a division and a sum per histogram) cost ~1.5 us; here an
event costs a list comprehension per field (its four numbers wait in lists),
and numpy buckets the values a few thousand at a time, or when ``/metrics`` is
scraped. The exposition is the same as one ``observe`` per event: ``le``
buckets include their bound (``searchsorted`` left, as ``bisect_left``), and
sums add value after value in arrival order (``cumsum``), so they do not
depend on how batches were cut or when scrapes came.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from typing import Iterator, Optional

import numpy as np
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

# Events a series holds before numpy folds them in: numpy's cost per call (~1 us, ~30 calls a
# fold) spread thin, while a series' waiting values stay under ~300 KB.
FOLD_AT = 2048


def _floats(values: list[float]) -> np.ndarray:
    """The values as float64: struct packs a list several times faster than np.array converts it."""
    return np.frombuffer(struct.pack(f"{len(values)}d", *values))


def _counts(values: list[int]) -> np.ndarray:
    """Token counts as int64, or as float64 past its range (which buckets them the same)."""
    try:
        return np.frombuffer(struct.pack(f"{len(values)}q", *values), dtype=np.int64)
    except struct.error:
        return np.array(values, dtype=np.float64)


def _optional_floats(values: list[Optional[float]]) -> np.ndarray:
    """Idem, None as NaN (the contract rejects NaN, so NaN means absent)."""
    try:
        return _floats(values)  # type: ignore[arg-type]
    except struct.error:  # some None among them: the slower conversion maps it to NaN
        return np.array(values, dtype=np.float64)


class _Histogram:
    """Bucket counts (the last one +Inf) and the sum of one series."""

    __slots__ = ("bounds", "les", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.array(bounds, dtype=np.float64)
        self.les = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.sum: float = 0

    def add(self, values: np.ndarray, total: Optional[int] = None) -> None:
        """``total``: the exact sum of integer values (token counts); other values are summed in order."""
        if values.size:
            self.counts += np.bincount(np.searchsorted(self.bounds, values), minlength=self.counts.size)
            if total is None:  # one addition after another, from the running sum on
                self.sum = float(np.cumsum(np.concatenate(([self.sum], values)))[-1])
            else:
                self.sum += total

    def exposed(self) -> tuple[list[tuple[str, float]], float]:
        """Cumulative ``le`` buckets and the sum, as HistogramMetricFamily.add_metric takes them."""
        return list(zip(self.les, np.cumsum(self.counts).tolist())), self.sum


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
        duration = _floats(self.duration_ms) / 1000.0
        ttft = _optional_floats(self.ttft_ms) / 1000.0
        prompt, output = _counts(self.prompt), _counts(self.output)
        prompt_total, output_total = sum(self.prompt), sum(self.output)
        self.duration_ms, self.ttft_ms, self.prompt, self.output = [], [], [], []
        timed = ~np.isnan(ttft)
        self.duration.add(duration)
        self.ttft.add(ttft[timed])
        # After the first token: (duration - ttft) / (tokens - 1), for generations of 2+ tokens with a TTFT.
        after_first = timed & (output > 1)
        decode_s = np.where(duration > ttft, duration - ttft, 0.0)[after_first]
        self.tpot.add(decode_s / (output[after_first] - 1.0))
        self.tokens_in.add(prompt, prompt_total)
        self.tokens_out.add(output, output_total)


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
                if histogram.counts.any():  # no observation: no series (a model without TTFT)
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
