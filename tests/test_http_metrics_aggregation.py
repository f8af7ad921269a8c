"""The event series of /metrics against their per-event definitions, through a real Prometheus parser.

The aggregation buckets generations a column at a time; these tests hold it to
what one observation per event gives, exactly (buckets, counts and sums to the
last bit), whatever the batch cuts and however scrapes fall between batches.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from collector.http.generations import FOLD_AT, HISTOGRAMS
from collector.http.metrics import EventMetrics
from emitters.events import ErrorEvent, Event, GenerationCompleted, GenerationStarted

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ENVELOPE = {"id": "0" * 32, "ts": 1_700_000_000_000_000_000, "host": "h", "pid": 1}
TTFT, TPOT, DURATION, USAGE = HISTOGRAMS
MS_BOUNDS = [bound * 1000.0 for name in (TTFT, DURATION) for bound in HISTOGRAMS[name][1]]
TOKEN_BOUNDS = [int(bound) + delta for bound in HISTOGRAMS[USAGE][1] for delta in (-1, 0, 1)]
HUGE_TOKENS = [2**63, 2**64 - 1]  # past int64: msgpack carries them, the collector must not choke


class Exposition:
    """EventMetrics registered as /metrics registers it; each scrape renders and parses the text."""

    def __init__(self) -> None:
        self.metrics = EventMetrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.metrics)

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def samples(self) -> Samples:
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(self.text())
            for sample in family.samples
        }


def expected(events: Sequence[Event]) -> Samples:
    """The per-event definitions: ``le`` counts by comparison, sums added one event at a time."""
    values: dict[tuple[str, tuple[str, ...]], list[float]] = {}
    samples: Samples = {}

    def observe(name: str, labels: tuple[str, ...], value: float) -> None:
        values.setdefault((name, labels), []).append(value)

    def count(name: str, labels: dict[str, str], amount: float = 1) -> None:
        key = (name, frozenset(labels.items()))
        samples[key] = samples.get(key, 0) + amount

    for event in events:
        if isinstance(event, GenerationCompleted):
            series = (event.model, event.service)
            duration_s = event.duration_ms / 1000.0
            observe(DURATION, series, duration_s)
            if event.ttft_ms is not None:
                ttft_s = event.ttft_ms / 1000.0
                observe(TTFT, series, ttft_s)
                if event.generation_tokens > 1:
                    observe(TPOT, series, max(duration_s - ttft_s, 0.0) / (event.generation_tokens - 1))
            observe(USAGE, (*series, "input"), event.prompt_tokens)
            observe(USAGE, (*series, "output"), event.generation_tokens)
            labels = {"model": event.model, "service": event.service}
            count("mlx_requests_total", {**labels, "finish_reason": event.finish_reason or "unknown"})
            count("mlx_tokens_generated_total", labels, event.generation_tokens)
        if isinstance(event, ErrorEvent):
            count("mlx_errors_total", {"service": event.service, "error_type": event.error_type})
        elif event.severity in ("error", "critical"):
            count("mlx_errors_total", {"service": event.service, "error_type": event.type})
    for (name, labels), observed in values.items():
        names = ("model", "service", "token_type")[: len(labels)]
        label_set = dict(zip(names, labels))
        for bound in (*HISTOGRAMS[name][1], float("inf")):
            le = floatToGoString(bound)
            samples[(f"{name}_bucket", frozenset({**label_set, "le": le}.items()))] = sum(v <= bound for v in observed)
        total: float = 0  # token counts add up exactly, as ints
        for value in observed:
            total += value
        samples[(f"{name}_count", frozenset(label_set.items()))] = len(observed)
        samples[(f"{name}_sum", frozenset(label_set.items()))] = total
    return {key: float(value) for key, value in samples.items()}  # the text carries floats


def completed(
    model: str,
    service: str,
    duration_ms: float,
    ttft_ms: Optional[float],
    tokens: tuple[int, int],
    finish_reason: Optional[str],
    severity: str = "info",
) -> GenerationCompleted:
    return GenerationCompleted(
        **ENVELOPE, service=service, severity=severity, model=model, request_id="r", prompt_tokens=tokens[0],
        generation_tokens=tokens[1], duration_ms=duration_ms, ttft_ms=ttft_ms, finish_reason=finish_reason,
    )  # fmt: skip


def random_generation(rng: random.Random) -> GenerationCompleted:
    ttft_ms = rng.choice([None, rng.lognormvariate(4, 2)])
    tokens = (rng.randint(0, 5000), rng.randint(0, 900))
    service = rng.choice(["engine-a", "engine-b", "engine-c"])
    reason = rng.choice(["stop", "length"])
    return completed(rng.choice(["llama", "qwen"]), service, rng.lognormvariate(6, 2), ttft_ms, tokens, reason)


milliseconds = st.one_of(st.sampled_from(MS_BOUNDS), st.floats(0, 1e6, allow_nan=False, allow_infinity=False))
token_counts = st.one_of(st.sampled_from(TOKEN_BOUNDS), st.integers(0, 2**40), st.sampled_from(HUGE_TOKENS))
generations = st.builds(
    completed,
    model=st.sampled_from(["llama", "qwen"]),
    service=st.sampled_from(["engine-a", "engine-b"]),
    duration_ms=milliseconds,
    ttft_ms=st.none() | milliseconds,
    tokens=st.tuples(token_counts, token_counts),
    finish_reason=st.sampled_from([None, "stop", "length", "unknown"]),
    severity=st.sampled_from(["info"] * 9 + ["error"]),
)
others = st.one_of(
    st.builds(
        lambda service: ErrorEvent(**ENVELOPE, service=service, message="m", error_type="ValueError"),
        st.sampled_from(["engine-a", "engine-b"]),
    ),
    st.just(GenerationStarted(**ENVELOPE, service="engine-a", model="llama", request_id="r")),
)


class TestEventMetrics:
    @settings(max_examples=150, deadline=None)
    @given(
        events=st.lists(st.one_of(generations, generations, others), max_size=60),
        cuts=st.lists(st.integers(1, 25), max_size=8),
        scrape_after=st.sets(st.integers(0, 8)),
    )
    def test_series_match_one_observation_per_event(
        self, events: list[Event], cuts: list[int], scrape_after: set[int]
    ) -> None:
        """Buckets, counts and sums equal the per-event definitions exactly, however batches are cut and scraped."""
        exposition = Exposition()
        start = 0
        for index, size in enumerate([*cuts, len(events)]):
            exposition.metrics.observe(events[start : start + size])
            start += size
            if index in scrape_after:
                exposition.samples()
        assert exposition.samples() == expected(events)

    def test_folding_thousands_at_a_time_changes_no_byte(self) -> None:
        """Past the fold size, in batches of any size with scrapes between: the text of one event at a time."""
        rng = random.Random(15)
        events = [random_generation(rng) for _ in range(3 * FOLD_AT)]
        one_by_one, batched = Exposition(), Exposition()
        for event in events:
            one_by_one.metrics.observe([event])
        start = 0
        while start < len(events):
            size = rng.choice([1, 50, 500, FOLD_AT + 1])
            batched.metrics.observe(events[start : start + size])
            start += size
            if rng.random() < 0.3:
                batched.text()
        assert batched.text() == one_by_one.text()
        assert batched.samples() == expected(events)

    def test_a_model_without_ttft_has_no_ttft_series(self) -> None:
        """No observation, no series: a family never shows a zero histogram for a model that reports no TTFT."""
        exposition = Exposition()
        exposition.metrics.observe([completed("big", "engine-b", 90.0, None, (5, 4), None)])
        samples = exposition.samples()
        labels = frozenset({"model": "big", "service": "engine-b"}.items())
        assert (f"{TTFT}_count", labels) not in samples
        assert (f"{TPOT}_count", labels) not in samples
        assert samples[(f"{DURATION}_count", labels)] == 1
        assert samples[("mlx_requests_total", labels | {("finish_reason", "unknown")})] == 1
