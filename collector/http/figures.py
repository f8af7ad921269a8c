"""The pipeline's own figures for ``/metrics``: collectors, streams, groups, Redis.

Read at scrape time: the daemon's counters when the server runs inside a
collector, the collectors' heartbeat hashes when it runs as ``ui``; streams
and consumer groups from ``XINFO`` (the ``health`` tool's snapshot).

Counters are per collector (label ``consumer``), so ``sum`` adds collectors
up; stream and group figures are the same seen from any collector, so
aggregate those with ``max without (instance)``.
"""

from __future__ import annotations

from typing import Iterator, Mapping, NamedTuple, Optional, Protocol

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.tools.health_snapshot import Snapshot, take_snapshot
from collector.tools.options import Target

__all__ = ["Daemon", "CollectorFigures", "PipelineFigures", "PAUSED_STATUSES"]

# Collector statuses in which the sinks accept nothing: not ready.
PAUSED_STATUSES = ("backpressure", "paused_auth")


class Daemon(Protocol):
    """What the server reads of a :class:`collector.daemon.Collector` it runs in."""

    consumer: str
    status: str

    @property
    def counters(self) -> object: ...


class CollectorFigures(NamedTuple):
    consumer: str
    status: str
    counters: Mapping[str, int]
    heartbeat_age_s: Optional[float]


def daemon_figures(daemon: Daemon) -> CollectorFigures:
    return CollectorFigures(daemon.consumer, daemon.status, daemon.counters.as_dict(), None)  # type: ignore[attr-defined]


class PipelineFigures:
    """A prometheus_client custom collector over one Redis (and the daemon, if any)."""

    def __init__(self, target: Target, client: redis.Redis, maxlens: Mapping[str, int], daemon: Optional[Daemon]) -> None:
        self.target = target
        self.client = client
        self.maxlens = dict(maxlens)
        self.daemon = daemon

    def snapshot(self) -> Optional[Snapshot]:
        """None when Redis does not answer."""
        try:
            return take_snapshot(self.client, self.target, self.maxlens)
        except (redis.ConnectionError, redis.TimeoutError):
            return None

    def collectors(self, snapshot: Optional[Snapshot]) -> list[CollectorFigures]:
        if self.daemon is not None:
            return [daemon_figures(self.daemon)]
        if snapshot is None:
            return []
        return [
            CollectorFigures(beat.consumer, beat.status, _heartbeat_counters(beat), beat.age_s)
            for beat in snapshot.collectors
        ]

    def describe(self) -> Iterator[Metric]:
        return iter(())  # no scrape at registration

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        up = GaugeMetricFamily("telemetry_redis_up", "Whether Redis answered this scrape.")
        up.add_metric([], 0 if snapshot is None else 1)
        yield up
        yield from _collector_families(self.collectors(snapshot))
        if snapshot is not None:
            yield from _stream_families(snapshot)


def _heartbeat_counters(beat: object) -> dict[str, int]:
    return {name: getattr(beat, name) for name in ("read", "written", "acked", "dead_lettered", "claimed")}


def _collector_families(collectors: list[CollectorFigures]) -> Iterator[Metric]:
    counters: dict[str, CounterMetricFamily] = {}
    status = GaugeMetricFamily("telemetry_collector_status", "1 for the collector's current status.", labels=["consumer", "status"])
    age = GaugeMetricFamily(
        "telemetry_collector_heartbeat_age_seconds", "Seconds since the collector's last heartbeat.", labels=["consumer"]
    )
    for figures in collectors:
        for name, value in figures.counters.items():
            family = counters.get(name)
            if family is None:
                family = counters[name] = CounterMetricFamily(
                    f"telemetry_collector_{name}", f"Collector counter {name} since it started.", labels=["consumer"]
                )
            family.add_metric([figures.consumer], value)
        status.add_metric([figures.consumer, figures.status], 1)
        if figures.heartbeat_age_s is not None:
            age.add_metric([figures.consumer], figures.heartbeat_age_s)
    yield from counters.values()
    yield status
    yield age


def _stream_families(snapshot: Snapshot) -> Iterator[Metric]:
    memory = GaugeMetricFamily("telemetry_redis_memory_bytes", "Memory Redis uses (INFO used_memory).")
    if snapshot.used_memory is not None:
        memory.add_metric([], snapshot.used_memory)
    yield memory
    length = GaugeMetricFamily("telemetry_stream_length", "Entries in the stream.", labels=["stream"])
    lag = GaugeMetricFamily("telemetry_group_lag", "Entries not yet delivered to the group.", labels=["stream", "group"])
    pending = GaugeMetricFamily("telemetry_group_pending", "Entries delivered, not yet acked.", labels=["stream", "group"])
    consumers = GaugeMetricFamily("telemetry_group_consumers", "Consumers in the group.", labels=["stream", "group"])
    for stream in snapshot.streams:
        length.add_metric([stream.kind], stream.length)
        for group in stream.groups:
            lag.add_metric([stream.kind, group.name], group.lag)
            pending.add_metric([stream.kind, group.name], group.pending)
            consumers.add_metric([stream.kind, group.name], len(group.consumers))
    yield from (length, lag, pending, consumers)
