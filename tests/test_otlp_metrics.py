"""GenAI metrics from events: names, units, bucket boundaries, values, temporality."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from collector.otlp.intervals import COLLECTOR_INSTANCE_KEY, MetricState, decode_state, encode_state, interval_request
from collector.otlp.metrics import is_metric_event, observations
from collector.otlp.options import TranslateOptions
from collector.otlp.resources import Resources
from collector.otlp.spans import StartTimes
from emitters.events import (
    CustomEvent,
    ErrorEvent,
    Event,
    GenerationCompleted,
    GenerationStarted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
)
from tests.otlp_backend import attributes
from tests.support.otlp_events import Workload

DELTA = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
GEN_ATTRS = {"gen_ai.operation.name": "text_completion", "gen_ai.system": "mlx", "gen_ai.request.model": "m"}
TS = 1_700_000_000_123_456_789


def envelope(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        id="4bf92f3577b34da6a3ce929d0e0e4736", ts=TS, service="engine", host="gpu-1", pid=4242,
        trace_id="0af7651916cd43dd8448eb211c80319c", span_id="b7ad6b7169203331",
    )
    fields.update(overrides)
    return fields


def metrics_request(
    events: list[Event], options: TranslateOptions, *, start_ns: int, end_ns: int, collector_instance: str,
    temporality: str = "delta",
) -> Any:
    """The request for one interval [start_ns, end_ns] holding ``events``; None when nothing to report."""
    state = MetricState.new(collector_instance, temporality, start_ns)  # type: ignore[arg-type]
    starts = StartTimes()
    for event in events:
        starts.note(event)
    state.observe([item for event in events for item in observations(event, options, starts)])
    state.roll(end_ns)
    if not state.closed:
        return None
    return interval_request(state, state.closed[0], Resources(options).message, options.scope_name, options.scope_version)


def completed(**overrides: Any) -> GenerationCompleted:
    fields = envelope(
        model="m", request_id="r", prompt_tokens=100, generation_tokens=11, duration_ms=1200.0, ttft_ms=200.0
    )
    fields.update(overrides)
    return GenerationCompleted(**fields)


def export(events: list[Event], **options: Any) -> dict[str, Any]:
    """Metric name -> Metric, for a single-resource request."""
    request = metrics_request(
        events, TranslateOptions(**options), start_ns=1_000, end_ns=2_000, collector_instance="collector-a"
    )
    assert request is not None
    (resource_metrics,) = request.resource_metrics
    (scope_metrics,) = resource_metrics.scope_metrics
    return {metric.name: metric for metric in scope_metrics.metrics}


def points_by_attributes(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    data = metric.histogram if metric.HasField("histogram") else metric.sum
    return {tuple(sorted(attributes(point.attributes).items())): point for point in data.data_points}


class TestHistograms:
    def test_request_duration(self) -> None:
        """gen_ai.server.request.duration: seconds, semconv buckets, one observation per generation."""
        metric = export([completed(duration_ms=1200.0), completed(duration_ms=30.0)])["gen_ai.server.request.duration"]
        assert metric.unit == "s"
        assert metric.histogram.aggregation_temporality == DELTA
        (point,) = metric.histogram.data_points
        assert list(point.explicit_bounds) == [
            0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
        ]
        assert attributes(point.attributes) == GEN_ATTRS
        assert point.count == 2
        assert point.sum == pytest.approx(1.23)
        assert (point.min, point.max) == (pytest.approx(0.03), pytest.approx(1.2))
        assert len(point.bucket_counts) == 15
        assert point.bucket_counts[2] == 1  # 0.03 s in (0.02, 0.04]
        assert point.bucket_counts[7] == 1  # 1.2 s in (0.64, 1.28]
        assert (point.start_time_unix_nano, point.time_unix_nano) == (1_000, 2_000)

    def test_time_to_first_token(self) -> None:
        """gen_ai.server.time_to_first_token from ttft_ms, in seconds, with its own buckets."""
        metric = export([completed(ttft_ms=250.0)])["gen_ai.server.time_to_first_token"]
        (point,) = metric.histogram.data_points
        assert metric.unit == "s"
        assert list(point.explicit_bounds) == [
            0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0
        ]
        assert point.sum == pytest.approx(0.25)
        assert point.bucket_counts[8] == 1  # exactly on a bound: counted in the bucket it closes

    def test_time_per_output_token(self) -> None:
        """(duration - ttft) / (output tokens - 1), per the convention's definition."""
        metric = export([completed(duration_ms=1200.0, ttft_ms=200.0, generation_tokens=11)])[
            "gen_ai.server.time_per_output_token"
        ]
        (point,) = metric.histogram.data_points
        assert metric.unit == "s"
        assert point.sum == pytest.approx(0.1)
        assert list(point.explicit_bounds) == [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]

    def test_no_ttft_no_latency_split(self) -> None:
        """Without ttft_ms neither TTFT nor time per output token can be known: none are recorded."""
        metrics = export([completed(ttft_ms=None)])
        assert "gen_ai.server.time_to_first_token" not in metrics
        assert "gen_ai.server.time_per_output_token" not in metrics
        assert "gen_ai.server.request.duration" in metrics

    def test_single_token_has_no_time_per_output_token(self) -> None:
        """One output token has no decode phase after the first token."""
        assert "gen_ai.server.time_per_output_token" not in export([completed(generation_tokens=1)])

    def test_token_usage_by_type(self) -> None:
        """gen_ai.client.token.usage: {token}, input and output as gen_ai.token.type points."""
        metric = export([completed(prompt_tokens=100, generation_tokens=11)], client_token_usage=True)[
            "gen_ai.client.token.usage"
        ]
        assert metric.unit == "{token}"
        points = points_by_attributes(metric)
        input_key = tuple(sorted({**GEN_ATTRS, "gen_ai.token.type": "input"}.items()))
        output_key = tuple(sorted({**GEN_ATTRS, "gen_ai.token.type": "output"}.items()))
        assert set(points) == {input_key, output_key}
        assert points[input_key].sum == 100
        assert points[output_key].sum == 11
        assert list(points[input_key].explicit_bounds)[:3] == [1, 4, 16]
        assert list(points[input_key].explicit_bounds)[-1] == 67108864

    def test_operation_and_model_split_series(self) -> None:
        """Different models or operations are different attribute sets (separate points)."""
        events = [completed(), completed(model="other"), completed(attrs={"gen_ai.operation.name": "chat"})]
        points = points_by_attributes(export(events)["gen_ai.server.request.duration"])
        assert sorted(
            (dict(key)["gen_ai.operation.name"], dict(key)["gen_ai.request.model"], point.count)
            for key, point in points.items()
        ) == [("chat", "m", 1), ("text_completion", "m", 1), ("text_completion", "other", 1)]


class TestCounters:
    def test_tokens_generated(self) -> None:
        """mlx.tokens.generated sums output tokens per model, as a monotonic DELTA sum."""
        metric = export([completed(generation_tokens=5), completed(generation_tokens=7)])["mlx.tokens.generated"]
        assert metric.unit == "{token}"
        assert metric.sum.is_monotonic
        assert metric.sum.aggregation_temporality == DELTA
        (point,) = metric.sum.data_points
        assert point.as_int == 12
        assert attributes(point.attributes) == {"gen_ai.request.model": "m"}

    def test_model_lifecycle_counters(self) -> None:
        """Loads, unloads and invalidations are counted per model."""
        events = [
            ModelLoaded(**envelope(model="a", model_path="/a")),
            ModelLoaded(**envelope(model="a", model_path="/a")),
            ModelLoaded(**envelope(model="b", model_path="/b")),
            ModelUnloaded(**envelope(model="a")),
            ModelInvalidated(**envelope(model="b", reason="changed")),
        ]
        metrics = export(events)
        loaded = {dict(key)["gen_ai.request.model"]: point.as_int for key, point in points_by_attributes(metrics["mlx.models.loaded"]).items()}
        assert loaded == {"a": 2, "b": 1}
        assert metrics["mlx.models.loaded"].unit == "{model}"
        assert metrics["mlx.models.unloaded"].sum.data_points[0].as_int == 1
        assert metrics["mlx.models.invalidated"].sum.data_points[0].as_int == 1

    def test_errors_by_type(self) -> None:
        """mlx.errors counts every error by error.type; generation errors only those tied to a generation."""
        events = [
            ErrorEvent(**envelope(message="x", error_type="TimeoutError", request_id="r1", model="m")),
            ErrorEvent(**envelope(message="x", error_type="TimeoutError")),
            ErrorEvent(**envelope(message="x", error_type="ValueError", request_id="r2")),
            CustomEvent(**envelope(type="connector.processing_failed", severity="critical")),
            CustomEvent(**envelope(type="job.created", severity="warn")),
        ]
        metrics = export(events)
        errors = {dict(key)["error.type"]: point.as_int for key, point in points_by_attributes(metrics["mlx.errors"]).items()}
        assert errors == {"TimeoutError": 2, "ValueError": 1, "connector.processing_failed": 1}
        assert metrics["mlx.errors"].unit == "{error}"
        generation = {key: point.as_int for key, point in points_by_attributes(metrics["mlx.generation.errors"]).items()}
        assert generation == {
            (("error.type", "TimeoutError"), ("gen_ai.request.model", "m")): 1,
            (("error.type", "ValueError"),): 1,
        }


class TestRequest:
    def test_resource_and_scope(self) -> None:
        """Points are grouped by emitting process; the scope names this collector instance."""
        events = [completed(), completed(service="router", pid=9)]
        request = metrics_request(
            events, TranslateOptions(deployment_environment="prod"), start_ns=5, end_ns=9, collector_instance="c-1"
        )
        assert request is not None
        resources = {attributes(group.resource.attributes)["service.name"]: group for group in request.resource_metrics}
        assert set(resources) == {"engine", "router"}
        router = attributes(resources["router"].resource.attributes)
        assert {key: router[key] for key in ("service.name", "host.name", "process.pid", "deployment.environment.name", "deployment.environment")} == {
            "service.name": "router",
            "host.name": "gpu-1",
            "process.pid": 9,
            "deployment.environment.name": "prod",
            "deployment.environment": "prod",
        }
        scope = resources["router"].scope_metrics[0].scope
        assert scope.name == "mlx-telemetry"
        assert attributes(scope.attributes) == {COLLECTOR_INSTANCE_KEY: "c-1"}

    def test_nothing_to_report(self) -> None:
        """A batch without metric-bearing events produces no request."""
        events = [GenerationStarted(**envelope(model="m", request_id="r")), CustomEvent(**envelope(type="job.created"))]
        assert not any(is_metric_event(event) for event in events)
        assert metrics_request(events, TranslateOptions(), start_ns=0, end_ns=1, collector_instance="c") is None

    def test_one_metric_per_name(self) -> None:
        """Each metric name appears once per scope; attribute sets are its points."""
        request = metrics_request(
            [completed(), completed(model="other")], TranslateOptions(), start_ns=0, end_ns=1, collector_instance="c"
        )
        assert request is not None
        names = [metric.name for metric in request.resource_metrics[0].scope_metrics[0].metrics]
        assert len(names) == len(set(names))
        duration = next(m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "gen_ai.server.request.duration")
        assert len(duration.histogram.data_points) == 2


class TestIntervals:
    def test_failed_generation_has_a_duration_point_with_error_type(self) -> None:
        """A failed generation is in gen_ai.server.request.duration with error.type; successes without."""
        workload = Workload()
        with workload.scope("POST /v1/completions"):
            workload.generation("ok")
            workload.generation("bad", fail="MemoryError")
        metric = export(workload.events)["gen_ai.server.request.duration"]
        points = {dict(key).get("error.type"): point.count for key, point in points_by_attributes(metric).items()}
        assert points == {None: 1, "MemoryError": 1}

    def test_exemplars_point_at_the_generation_span(self) -> None:
        """Histogram points carry exemplars with the derived span's trace and span id (decision 2)."""
        events = [completed(id="a" * 32, duration_ms=100.0), completed(id="b" * 32, duration_ms=900.0)]
        (point,) = export(events)["gen_ai.server.request.duration"].histogram.data_points
        by_span = {exemplar.span_id.hex(): exemplar for exemplar in point.exemplars}
        assert set(by_span) == {"a" * 16, "b" * 16}
        assert by_span["b" * 16].trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
        assert by_span["b" * 16].as_double == 0.9

    def test_cumulative_points_keep_running_totals(self) -> None:
        """CUMULATIVE: each interval reports totals since the start, with the same start time."""
        options = TranslateOptions()
        state = MetricState.new("c", "cumulative", 100)
        for end in (200, 300):
            state.observe(list(observations(completed(), options, StartTimes())))
            state.roll(end)
        requests = [interval_request(state, interval, Resources(options).message, "s", "v") for interval in state.closed]
        counts = []
        for request in requests:
            metric = next(m for m in request.resource_metrics[0].scope_metrics[0].metrics if m.name == "gen_ai.server.request.duration")
            assert metric.histogram.aggregation_temporality == CUMULATIVE
            (point,) = metric.histogram.data_points
            counts.append((point.start_time_unix_nano, point.time_unix_nano, point.count))
        assert counts == [(100, 200, 1), (100, 300, 2)]

    def test_state_survives_serialization(self) -> None:
        """The aggregation persisted to Redis decodes to the same state (crash recovery relies on it)."""
        state = MetricState.new("c", "delta", 100)
        state.observe(list(observations(completed(), TranslateOptions(), StartTimes())))
        assert decode_state(encode_state(state)) == state

    def test_client_report_counts_drops_by_reason(self) -> None:
        """client.report -> mlx.emitter.dropped by mlx.drop.reason, under the emitting service's resource."""
        workload = Workload(service="api")
        workload.outside()
        metric = export(workload.events)["mlx.emitter.dropped"]
        drops = {dict(key)["mlx.drop.reason"]: point.as_int for key, point in points_by_attributes(metric).items()}
        assert drops == {"buffer_full": 3, "invalid": 1}
