"""Metric points aggregated per export interval, as serializable state. Pure: no I/O.

One :class:`MetricState` per *origin* (the collector instance whose events
were aggregated; ``mlx.collector.instance`` on the scope keeps each series
single-writer). Its ``current`` interval collects observations; at the
interval boundary :meth:`MetricState.roll` closes it, and a closed interval
waits in ``closed`` until it is exported. The whole state is one msgpack
value, so the sink can persist it after every batch (see
:mod:`collector.otlp.metric_store`).

DELTA: each closed interval holds the series observed in it, start = the
interval's start. CUMULATIVE: a closed interval holds every series seen since
``cumulative_start``, running totals.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable, Literal, Optional

import msgspec
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from collector.otlp.metrics import SPECS, HistogramSpec, Observation

__all__ = ["Temporality", "Exemplar", "Series", "Interval", "MetricState", "COLLECTOR_INSTANCE_KEY", "encode_state", "decode_state", "interval_request"]

Temporality = Literal["delta", "cumulative"]
COLLECTOR_INSTANCE_KEY = "mlx.collector.instance"
_TEMPORALITY = {
    "delta": metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA,
    "cumulative": metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
}
# Per series and interval: the slowest and the latest observation carry an exemplar.
_EXEMPLARS = 2


class Exemplar(msgspec.Struct, array_like=True):
    time_ns: int
    value: float
    trace_id: str
    span_id: str


class Series(msgspec.Struct, array_like=True):
    metric: str
    resource: tuple[str, str, int]
    attributes: tuple[tuple[str, str], ...]
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    buckets: list[int] = []
    exemplars: list[Exemplar] = []

    def record(self, observation: Observation) -> None:
        value = observation.value
        self.count += 1
        self.total += value
        spec = observation.spec
        if isinstance(spec, HistogramSpec):
            self.low = min(self.low, value)
            self.high = max(self.high, value)
            if not self.buckets:
                self.buckets = [0] * (len(spec.bounds) + 1)
            # Bucket i holds (bounds[i-1], bounds[i]]; the last one everything above.
            self.buckets[bisect_left(spec.bounds, value)] += 1
            if observation.event is not None:
                self._exemplar(observation)

    def _exemplar(self, observation: Observation) -> None:
        event = observation.event
        assert event is not None
        # The span derived from the event (contract decision 2) is the one to jump to.
        exemplar = Exemplar(event.ts, observation.value, event.trace_id or event.id, event.id[:16])
        slowest = self.exemplars[0] if self.exemplars else None  # the lists below keep the slowest first
        if slowest is None:
            self.exemplars = [exemplar]
        elif observation.value >= slowest.value:
            self.exemplars = [exemplar, slowest][:_EXEMPLARS]  # the new slowest, and the previous one
        else:
            self.exemplars = [slowest, exemplar][:_EXEMPLARS]

    def merge(self, other: "Series") -> None:
        self.count += other.count
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        if other.buckets:
            self.buckets = [a + b for a, b in zip(self.buckets or [0] * len(other.buckets), other.buckets)]
        self.exemplars = other.exemplars or self.exemplars


class Interval(msgspec.Struct):
    start_ns: int
    end_ns: int = 0  # 0 while open
    series: list[Series] = []


class MetricState(msgspec.Struct):
    """What one origin has aggregated and not yet exported."""

    origin: str
    temporality: Temporality
    current: Interval
    closed: list[Interval] = []
    cumulative: Optional[Interval] = None  # running totals, cumulative temporality only

    @classmethod
    def new(cls, origin: str, temporality: Temporality, now_ns: int) -> "MetricState":
        cumulative = Interval(now_ns) if temporality == "cumulative" else None
        return cls(origin, temporality, Interval(now_ns), [], cumulative)

    def observe(self, observations: list[Observation]) -> None:
        index = {(s.metric, s.resource, s.attributes): s for s in self.current.series}
        for observation in observations:
            key = (observation.spec.name, observation.resource, observation.attributes)
            series = index.get(key)
            if series is None:
                series = index[key] = Series(*key)
                self.current.series.append(series)
            series.record(observation)

    def roll(self, now_ns: int) -> None:
        """Close the current interval (when it holds anything) and open the next one."""
        interval = self.current
        interval.end_ns = max(now_ns, interval.start_ns + 1)
        if self.cumulative is not None and interval.series:
            totals = {(s.metric, s.resource, s.attributes): s for s in self.cumulative.series}
            for series in interval.series:
                total = totals.get((series.metric, series.resource, series.attributes))
                if total is None:
                    total = Series(series.metric, series.resource, series.attributes)
                    self.cumulative.series.append(total)
                total.merge(series)
            # A snapshot of the totals: they go on growing after this interval is queued.
            snapshot = Interval(self.cumulative.start_ns, interval.end_ns, self.cumulative.series)
            interval = decode_interval(_state_encoder.encode(snapshot))
        if interval.series:
            self.closed.append(interval)
        self.current = Interval(self.current.end_ns)

    @property
    def empty(self) -> bool:
        return not self.closed and not self.current.series


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(MetricState)
decode_interval = msgspec.msgpack.Decoder(Interval).decode


def encode_state(state: MetricState) -> bytes:
    return _state_encoder.encode(state)


def decode_state(data: bytes) -> MetricState:
    return _state_decoder.decode(data)


def interval_request(
    state: MetricState,
    interval: Interval,
    resource: Callable[[tuple[str, str, int]], Resource],
    scope_name: str,
    scope_version: str,
    schema_url: str = "",
) -> ExportMetricsServiceRequest:
    """One interval's points: one per series, grouped by resource, one ``Metric`` per name."""
    temporality = _TEMPORALITY[state.temporality]
    scope = InstrumentationScope(
        name=scope_name, version=scope_version, attributes=[_key_value(COLLECTOR_INSTANCE_KEY, state.origin)]
    )
    request = ExportMetricsServiceRequest()
    groups: dict[tuple[str, str, int], list[Series]] = {}
    for series in interval.series:
        groups.setdefault(series.resource, []).append(series)
    for resource_key, members in groups.items():
        resource_metrics = request.resource_metrics.add(schema_url=schema_url)
        resource_metrics.resource.CopyFrom(resource(resource_key))
        scope_metrics = resource_metrics.scope_metrics.add(schema_url=schema_url)
        scope_metrics.scope.CopyFrom(scope)
        metrics: dict[str, metrics_pb2.Metric] = {}
        for series in members:
            spec = SPECS[series.metric]
            metric = metrics.get(spec.name)
            if metric is None:
                metric = metrics[spec.name] = scope_metrics.metrics.add(
                    name=spec.name, unit=spec.unit, description=spec.description
                )
            attributes = [_key_value(key, value) for key, value in series.attributes]
            if isinstance(spec, HistogramSpec):
                metric.histogram.aggregation_temporality = temporality
                metric.histogram.data_points.add(
                    attributes=attributes,
                    start_time_unix_nano=interval.start_ns,
                    time_unix_nano=interval.end_ns,
                    count=series.count,
                    sum=series.total,
                    min=series.low,
                    max=series.high,
                    bucket_counts=series.buckets,
                    explicit_bounds=spec.bounds,
                    exemplars=[
                        metrics_pb2.Exemplar(
                            time_unix_nano=item.time_ns,
                            as_double=item.value,
                            trace_id=bytes.fromhex(item.trace_id),
                            span_id=bytes.fromhex(item.span_id),
                        )
                        for item in series.exemplars
                    ],
                )
            else:
                metric.sum.aggregation_temporality = temporality
                metric.sum.is_monotonic = True
                metric.sum.data_points.add(
                    attributes=attributes,
                    start_time_unix_nano=interval.start_ns,
                    time_unix_nano=interval.end_ns,
                    as_int=round(series.total),
                )
    return request


def _key_value(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))
