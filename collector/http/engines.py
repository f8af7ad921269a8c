"""The per-engine gauges of ``/metrics``, shared by every collector through one Redis hash.

The consumer group hands each ``runtime.status`` and ``client.report`` to one
collector, so a gauge kept in a collector's memory is the last value *that*
collector happened to see: two collectors would show two "current" values for
one engine, and neither need be current. Instead each collector's metrics stage
writes the newest report per engine and source into ``{prefix}:engines``,
through a script that replaces a report only with a newer one (by the event's
``ts``), and every ``/metrics`` (each collector's and ``ui``'s) reads the hash
at scrape time. So any collector shows the same engine figures (aggregate with
``max without (instance)``), and a redelivered or reclaimed older report never
overwrites a newer one.

``ui`` follows every entry of the streams itself, so its board is the same
rule kept in memory (:class:`LocalBoard`), and it needs no write access.

A report replaces its engine's gauges of that source whole: a value the newest
report lacks is no series, not a stale one. Engines silent for
:data:`ENGINE_TTL_S` drop out (the hash expires with the last of them).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Protocol, Sequence

import msgspec
import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from collector.http.metrics import CLIENT_REPORT, event_field
from emitters.events import ClientReport, CustomEvent, Event, RuntimeStatus

__all__ = ["ENGINE_TTL_S", "GAUGES", "EngineReport", "Board", "EngineBoard", "LocalBoard", "EngineFigures", "newest_reports"]

# An engine that reported nothing for this long is gone (or cut off): its gauges would only mislead.
ENGINE_TTL_S = 600.0
GB = 1024**3
_TS_DIGITS = 20  # event ts in ns, zero-padded: Lua compares the prefixes as strings, exactly

_ENGINE = ("service", "host")
GAUGES: dict[str, str] = {
    "mlx_requests_running": "Requests in progress (runtime.status requests_running, else active_tasks).",
    "mlx_requests_waiting": "Requests queued (runtime.status requests_waiting).",
    "mlx_memory_bytes": "Memory in use (runtime.status memory_gb).",
    "mlx_peak_memory_bytes": "Peak memory (runtime.status peak_memory_gb).",
    "mlx_models_loaded": "Models loaded (runtime.status models_loaded).",
    "mlx_runtime_status_timestamp_seconds": "When the engine last reported its runtime.status.",
    "telemetry_emitter_buffer_high_water": "Most events an emitter held in its buffer in its last report interval.",
}

# KEYS: the hash. ARGV: ttl ms, the cut-off ts prefix (older reports are dropped), then field, value pairs.
# A value starts with its report's ts (_TS_DIGITS digits): newer wins, an equal one (a redelivery) changes nothing.
_NEWEST = """
for i = 3, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if not old or string.sub(old, 1, %(digits)d) < string.sub(ARGV[i + 1], 1, %(digits)d) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i + 1], 1, %(digits)d) < ARGV[2] then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 0
""" % {"digits": _TS_DIGITS}


class EngineReport(NamedTuple):
    """The gauges one report gave for one engine (service, host)."""

    source: str  # the event type: runtime.status or client.report
    service: str
    host: str
    ts: int  # ns
    gauges: dict[str, float]


# The event types a report can come from (a client.report may travel as a custom event).
_REPORTING = frozenset({RuntimeStatus, ClientReport, CustomEvent})


def _runtime_gauges(event: RuntimeStatus) -> dict[str, float]:
    running = event.requests_running if event.requests_running is not None else event.active_tasks
    values = {
        "mlx_requests_running": running,
        "mlx_requests_waiting": event.requests_waiting,
        "mlx_memory_bytes": None if event.memory_gb is None else event.memory_gb * GB,
        "mlx_peak_memory_bytes": None if event.peak_memory_gb is None else event.peak_memory_gb * GB,
        "mlx_models_loaded": event.models_loaded,
        "mlx_runtime_status_timestamp_seconds": event.ts / 1e9,
    }
    return {name: value for name, value in values.items() if value is not None}


def _report(event: Event) -> Optional[EngineReport]:
    if type(event) is RuntimeStatus:
        return EngineReport(event.type, event.service, event.host, event.ts, _runtime_gauges(event))
    if type(event) is ClientReport or (type(event) is CustomEvent and event.type == CLIENT_REPORT):
        high_water = event_field(event, "buffer_high_water")
        if isinstance(high_water, int) and not isinstance(high_water, bool):
            gauges = {"telemetry_emitter_buffer_high_water": float(high_water)}
            return EngineReport(CLIENT_REPORT, event.service, event.host, event.ts, gauges)
    return None


def newest_reports(events: Sequence[Event]) -> list[EngineReport]:
    """The newest report per engine and source among ``events``."""
    if _REPORTING.isdisjoint(map(type, events)):
        return []  # the typical batch: one pass in C
    newest: dict[tuple[str, str, str], EngineReport] = {}
    _keep_newest(newest, filter(None, map(_report, events)))
    return list(newest.values())


def _keep_newest(table: dict[tuple[str, str, str], EngineReport], reports: Iterable[EngineReport]) -> None:
    for report in reports:
        key = (report.source, report.service, report.host)
        held = table.get(key)
        if held is None or report.ts > held.ts:
            table[key] = report


def _cutoff_ns() -> int:
    return time.time_ns() - int(ENGINE_TTL_S * 1e9)


class Board(Protocol):
    """Where the newest report per engine and source is kept."""

    def publish(self, reports: list[EngineReport]) -> None: ...

    def read(self) -> list[EngineReport]: ...


class EngineBoard:
    """``{prefix}:engines``: the newest report per engine and source; written by collectors, read by scrapes."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self._newest = client.register_script(_NEWEST)

    def publish(self, reports: list[EngineReport]) -> None:
        """Keep each report unless a newer one of its engine is there. Raises redis errors."""
        if not reports:
            return
        args: list[Any] = [int(ENGINE_TTL_S * 1000), f"{max(_cutoff_ns(), 0):0{_TS_DIGITS}d}"]
        for report in reports:
            args.append(msgspec.msgpack.encode((report.source, report.service, report.host)))
            args.append(f"{report.ts:0{_TS_DIGITS}d}".encode() + msgspec.msgpack.encode(report.gauges))
        self._newest(keys=[self.key], args=args)

    def read(self) -> list[EngineReport]:
        """The live reports, oldest engines dropped. Raises redis errors; skips what it cannot decode."""
        cutoff = _cutoff_ns()
        reports = []
        for field, value in self.client.hgetall(self.key).items():
            try:
                source, service, host = msgspec.msgpack.decode(field, type=tuple[str, str, str])
                ts = int(value[:_TS_DIGITS])
                gauges = msgspec.msgpack.decode(value[_TS_DIGITS:], type=dict[str, float])
            except (msgspec.DecodeError, ValueError):
                continue
            if ts >= cutoff:
                reports.append(EngineReport(source, service, host, ts, gauges))
        return reports


class LocalBoard:
    """The same rule in memory, for a process that observes every entry (``ui``); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, str, str], EngineReport] = {}

    def publish(self, reports: list[EngineReport]) -> None:
        with self._lock:
            _keep_newest(self._reports, reports)
            cutoff = _cutoff_ns()
            for key in [key for key, report in self._reports.items() if report.ts < cutoff]:
                del self._reports[key]

    def read(self) -> list[EngineReport]:
        cutoff = _cutoff_ns()
        with self._lock:
            return [report for report in self._reports.values() if report.ts >= cutoff]


class EngineFigures:
    """A prometheus_client custom collector: the board's gauges at scrape time (none while Redis is away)."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def describe(self) -> Iterator[Metric]:
        return iter(())  # registering must not read Redis

    def collect(self) -> Iterator[Metric]:
        try:
            reports = self.board.read()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            reports = []  # telemetry_redis_up says why
        families = {name: GaugeMetricFamily(name, text, labels=_ENGINE) for name, text in GAUGES.items()}
        for report in sorted(reports, key=lambda r: (r.service, r.host, r.source)):
            for name, value in report.gauges.items():
                family = families.get(name)
                if family is not None:
                    family.add_metric([report.service, report.host], value)
        yield from families.values()
