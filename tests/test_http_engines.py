"""Engine gauges of /metrics: the fleet's newest report per engine, in Redis (collectors) or in memory (ui).

Both boards are held to the same rule: newer wins by the event's ``ts``, an older
or equal report changes nothing, an engine silent for ENGINE_TTL_S drops out. The
exposition is judged by prometheus_client's parser.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from collector.http.embed import MetricsSink
from collector.http.engines import ENGINE_TTL_S, Board, EngineBoard, EngineFigures, LocalBoard, newest_reports
from collector.http.metrics import EventMetrics
from collector.records import Record
from collector.sinks import SinkUnavailable
from emitters.events import ClientReport, CustomEvent, Event, GenerationCompleted, RuntimeStatus
from emitters.streams import stream_names

KEY = stream_names().engines
GB = 1024**3
ENVELOPE = {"id": "0" * 32, "pid": 1}


def status(ts: int, *, service: str = "engine-a", host: str = "h1", **fields: Any) -> RuntimeStatus:
    fields = {"status": "busy", "models_loaded": 1, **fields}
    return RuntimeStatus(ts=ts, service=service, host=host, **ENVELOPE, **fields)


def client_report(ts: int, high_water: int, *, service: str = "engine-a", host: str = "h1") -> ClientReport:
    return ClientReport(ts=ts, service=service, host=host, buffer_high_water=high_water, **ENVELOPE)


def gauges(board: Board) -> dict[tuple[str, str, str], float]:
    """(metric, service, host) -> value, as a scrape renders and Prometheus's parser reads it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineFigures(board))
    return {
        (sample.name, sample.labels["service"], sample.labels["host"]): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }


@pytest.fixture(params=["redis", "memory"])
def board(request: pytest.FixtureRequest) -> Iterator[Board]:
    if request.param == "memory":
        yield LocalBoard()
        return
    client = request.getfixturevalue("redis_client")
    yield EngineBoard(client, KEY)


def now_ns() -> int:
    return time.time_ns()


class TestBoard:
    def test_the_newest_report_wins_whatever_order_it_arrives_in(self, board: Board) -> None:
        """A reclaimed or redelivered older report (another collector, later) never overwrites a newer one."""
        t = now_ns()
        board.publish(newest_reports([status(t, requests_running=5)]))
        board.publish(newest_reports([status(t - 1_000_000, requests_running=9)]))
        board.publish(newest_reports([status(t, requests_running=7)]))  # the same ts again: a redelivery
        assert gauges(board)[("mlx_requests_running", "engine-a", "h1")] == 5
        board.publish(newest_reports([status(t + 1, requests_running=0, active_tasks=4)]))
        assert gauges(board)[("mlx_requests_running", "engine-a", "h1")] == 0  # 0 is a value, not "absent"

    def test_a_report_replaces_its_engines_gauges_whole(self, board: Board) -> None:
        t = now_ns()
        board.publish(newest_reports([status(t, memory_gb=1.5, peak_memory_gb=2.0, requests_waiting=3)]))
        board.publish(newest_reports([status(t + 1, memory_gb=1.0)]))
        seen = gauges(board)
        assert seen[("mlx_memory_bytes", "engine-a", "h1")] == 1.0 * GB
        assert ("mlx_peak_memory_bytes", "engine-a", "h1") not in seen  # the newest report had none
        assert ("mlx_requests_waiting", "engine-a", "h1") not in seen
        assert seen[("mlx_runtime_status_timestamp_seconds", "engine-a", "h1")] == pytest.approx((t + 1) / 1e9)

    def test_engines_and_sources_are_kept_apart(self, board: Board) -> None:
        t = now_ns()
        board.publish(
            newest_reports(
                [
                    status(t, models_loaded=2),
                    status(t, service="engine-b", models_loaded=3),
                    status(t, host="h2", models_loaded=4),
                    client_report(t + 5, 11),
                    client_report(t + 3, 99),  # older in the same batch
                ]
            )
        )
        seen = gauges(board)
        assert seen[("mlx_models_loaded", "engine-a", "h1")] == 2
        assert seen[("mlx_models_loaded", "engine-b", "h1")] == 3
        assert seen[("mlx_models_loaded", "engine-a", "h2")] == 4
        assert seen[("telemetry_emitter_buffer_high_water", "engine-a", "h1")] == 11
        board.publish(newest_reports([status(t + 10, models_loaded=5)]))  # a runtime.status leaves the report alone
        assert gauges(board)[("telemetry_emitter_buffer_high_water", "engine-a", "h1")] == 11

    def test_a_silent_engine_drops_out(self, board: Board) -> None:
        t = now_ns()
        stale = t - int((ENGINE_TTL_S + 5) * 1e9)
        board.publish(newest_reports([status(stale, service="gone"), status(t, service="alive")]))
        seen = gauges(board)
        assert ("mlx_models_loaded", "alive", "h1") in seen
        assert not any(service == "gone" for _, service, _ in seen)

    def test_a_client_report_sent_as_a_custom_event_counts(self, board: Board) -> None:
        custom = CustomEvent(type="client.report", ts=now_ns(), service="engine-a", host="h1", attrs={"buffer_high_water": 6}, **ENVELOPE)
        board.publish(newest_reports([custom]))
        assert gauges(board)[("telemetry_emitter_buffer_high_water", "engine-a", "h1")] == 6


class TestRedisBoard:
    def test_stale_fields_are_deleted_and_the_hash_expires(self, redis_client: redis.Redis) -> None:
        board = EngineBoard(redis_client, KEY)
        t = now_ns()
        board.publish(newest_reports([status(t - int((ENGINE_TTL_S + 5) * 1e9), service="gone")]))
        board.publish(newest_reports([status(t, service="alive")]))
        assert redis_client.hlen(KEY) == 1
        assert 0 < redis_client.pttl(KEY) <= ENGINE_TTL_S * 1000

    def test_entries_it_cannot_read_are_skipped(self, redis_client: redis.Redis) -> None:
        board = EngineBoard(redis_client, KEY)
        board.publish(newest_reports([status(now_ns())]))
        redis_client.hset(KEY, "not msgpack", "garbage")
        redis_client.hset(KEY, msgspec.msgpack.encode(("runtime.status", "x", "y")), b"12x")
        assert {service for _, service, _ in gauges(board)} == {"engine-a"}

    def test_a_scrape_while_redis_is_away_gives_no_engine_series(self, redis_process: Any) -> None:
        client = redis_process.client()
        board = EngineBoard(client, KEY)
        board.publish(newest_reports([status(now_ns())]))
        redis_process.stop()
        try:
            assert gauges(board) == {}
        finally:
            redis_process.start()
            client.close()


class TestMetricsSink:
    def test_redis_away_is_unavailable_and_counts_nothing_until_the_retry(self, redis_process: Any) -> None:
        """The board is written first: a failed write leaves the in-memory aggregates untouched."""
        client = redis_process.client()
        metrics = EventMetrics()
        sink = MetricsSink(metrics, EngineBoard(client, KEY))
        batch = [record(status(now_ns())), record(completed())]
        redis_process.stop()
        try:
            with pytest.raises(SinkUnavailable, match="engines"):
                sink.write(batch)
            assert requests_total(metrics) == 0
        finally:
            redis_process.start()
        sink.write(batch)
        assert requests_total(metrics) == 1
        assert gauges(sink.board)[("mlx_models_loaded", "engine-a", "h1")] == 1
        sink.close()

    def test_a_batch_without_reports_does_not_touch_redis(self) -> None:
        unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
        sink = MetricsSink(EventMetrics(), EngineBoard(unreachable, KEY))
        sink.write([record(completed())])  # no runtime.status, no client.report: no Redis call


def completed() -> GenerationCompleted:
    return GenerationCompleted(ts=now_ns(), service="engine-a", host="h1", model="m", request_id="r", prompt_tokens=1, generation_tokens=2, duration_ms=3.0, **ENVELOPE)


def record(event: Event) -> Record:
    return Record("events", "1-0", event, msgspec.msgpack.encode(event))


def requests_total(metrics: EventMetrics) -> float:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "mlx_requests_total")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.integers(min_value=0, max_value=2**63 - 1),
            st.integers(min_value=0, max_value=2**31),
        ),
        max_size=20,
    )
)
def test_in_any_order_the_memory_board_ends_with_each_engines_newest(reports: list[tuple[str, int, int]]) -> None:
    """Whatever the batch cuts and order, each engine shows its newest report (first of equal ts wins)."""
    board = LocalBoard()
    base = now_ns()
    events = [status(base - ts % 10**9, service=service, models_loaded=n) for service, ts, n in reports]
    for cut in range(0, len(events), 3):
        board.publish(newest_reports(events[cut : cut + 3]))
    expected: dict[str, RuntimeStatus] = {}
    for event in events:
        if event.service not in expected or event.ts > expected[event.service].ts:
            expected[event.service] = event
    seen = gauges(board)
    assert {s: v for (name, s, _), v in seen.items() if name == "mlx_models_loaded"} == {
        s: float(e.models_loaded) for s, e in expected.items()
    }

