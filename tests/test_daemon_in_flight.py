"""Batches in flight: the window between the daemon's reads and its acks (collector/delivery.py).

A real Collector on a thread against a real redis-server; sinks that hold
their writes until the test lets them go show what is in flight at a time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import pytest
import redis

from collector.daemon import Collector
from collector.records import Record
from collector.sinks import SinkUnavailable
from collector.sinks.jsonl import JsonlSink
from tests.otlp_backend import TOKEN, OtlpBackend, otlp_backend  # noqa: F401 (fixture)
from tests.support.inprocess_collector import RecordingSink, make_config, running
from tests.support.otlp_collector import collector_thread, otlp_collector_config, wait_until
from tests.support.stream_entries import add_events, custom_event, jsonl_ids, pending_count
from tests.support.waiting import wait_for

BATCH = 20


class HeldSink(RecordingSink):
    """Holds every write until ``release`` is set; counts the writes running at once."""

    name = "held"

    def __init__(self, *, concurrent: bool) -> None:
        super().__init__()
        self.concurrent_writes = concurrent
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def write(self, batch: Sequence[Record]) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(30)
            with self._lock:
                super().write(batch)
        finally:
            with self._lock:
                self.running -= 1


def _backlog(client: redis.Redis, batches: int) -> list[str]:
    events = [custom_event(n) for n in range(batches * BATCH)]
    add_events(client, events)
    return [event.id for event in events]


def test_a_concurrent_sink_writes_up_to_the_window_and_nothing_more_is_read(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Three batches at once, not a fourth: read-but-unacked entries stay within the window."""
    ids = _backlog(redis_client, 8)
    sink = HeldSink(concurrent=True)
    collector = Collector(make_config(redis_url, tmp_path, batch_size=BATCH, batches_in_flight=3), sinks=[sink])
    with running(collector):
        wait_for(lambda: sink.running == 3, what="three writes at once")
        wait_for(lambda: pending_count(redis_client) == 3 * BATCH, what="three batches read")
        threading.Event().wait(0.3)  # room for a wrong fourth read to show
        assert pending_count(redis_client) == 3 * BATCH and collector.counters.acked == 0
        assert collector.counters.read == 3 * BATCH
        sink.release.set()
        wait_for(lambda: collector.counters.acked == len(ids), what="everything acked")
    assert sink.most_at_once == 3
    assert sorted(record.event.id for record in sink.records) == sorted(ids)
    assert pending_count(redis_client) == 0


def test_a_sequential_sink_gets_one_batch_at_a_time_while_the_next_is_read(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """JSONL-like sinks keep their order; the window still reads the next batch meanwhile."""
    ids = _backlog(redis_client, 6)
    sink = HeldSink(concurrent=False)
    collector = Collector(make_config(redis_url, tmp_path, batch_size=BATCH, batches_in_flight=2), sinks=[sink])
    with running(collector):
        wait_for(lambda: sink.running == 1, what="the first write")
        wait_for(lambda: pending_count(redis_client) == 2 * BATCH, what="the next batch read ahead")
        sink.release.set()
        wait_for(lambda: collector.counters.acked == len(ids), what="everything acked")
    assert sink.most_at_once == 1
    assert [record.event.id for record in sink.records] == ids  # in stream order


def test_a_failed_batch_is_retried_alone_and_acks_stay_correct(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The first batch fails twice while later ones succeed: each record reaches the sink once."""
    ids = _backlog(redis_client, 6)
    first_attempts = 0

    class FirstBatchFlaky(RecordingSink):
        name = "flaky"
        concurrent_writes = True

        def write(self, batch: Sequence[Record]) -> None:
            nonlocal first_attempts
            if batch[0].event.id == ids[0]:
                first_attempts += 1
                if first_attempts <= 2:
                    raise SinkUnavailable("backend busy")
            super().write(batch)

    sink = FirstBatchFlaky()
    jsonl = JsonlSink(tmp_path / "jsonl", max_bytes=1 << 20, retention_days=None)
    config = make_config(redis_url, tmp_path, batch_size=BATCH, batches_in_flight=3)
    collector = Collector(config, sinks=[jsonl, sink])
    with running(collector):
        wait_for(lambda: collector.counters.acked == len(ids), what="everything acked")
    assert first_attempts == 3
    assert sorted(record.event.id for record in sink.records) == sorted(ids)
    assert jsonl_ids(tmp_path / "jsonl") == {event_id: 1 for event_id in ids}  # the healthy sink: once each
    assert pending_count(redis_client) == 0 and collector.counters.written == len(ids)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_otlp_exports_the_batches_in_flight_at_once(
    redis_url: str, redis_client: redis.Redis, otlp_backend: OtlpBackend, protocol: str
) -> None:
    """A slow backend: three log exports are under way at once, every record arrives once, all acked."""
    ids = _backlog(redis_client, 6)
    otlp_backend.fail("slow", delay=0.4, signals=("logs",))
    config = otlp_collector_config(
        redis_url, otlp_backend.endpoint(protocol), **{
            "otlp.protocol": protocol, "otlp.signals": ["logs"], "otlp.token": TOKEN,
            "collector.batch_size": BATCH, "collector.batches_in_flight": 3,
        },
    )  # fmt: skip
    with collector_thread(config) as collector:
        wait_until(lambda: collector.counters.acked == len(ids), what="everything acked")
    assert otlp_backend.most_at_once == 3
    assert sorted(otlp_backend.event_ids()) == sorted(ids)
    assert pending_count(redis_client) == 0


def test_a_deadline_exit_still_sends_the_acks_owed_for_delivered_batches(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Stopping while a later batch keeps failing: the delivered batch is acked, the failing one stays pending.

    The delivered batch's XACK waits to ride with the next read, which never comes; without
    the flush at shutdown it would be delivered a second time after the restart.
    """
    add_events(redis_client, [custom_event(n) for n in range(BATCH + 5)])  # a full batch, then 5

    class FailsTheShortBatch(RecordingSink):
        name = "short-fails"

        def write(self, batch: Sequence[Record]) -> None:
            if len(batch) < BATCH:
                raise SinkUnavailable("backend busy")
            super().write(batch)

    sink = FailsTheShortBatch()
    config = make_config(redis_url, tmp_path, batch_size=BATCH, batches_in_flight=2, shutdown_timeout="1s")
    collector = Collector(config, sinks=[sink])
    with running(collector) as handle:
        wait_for(lambda: collector.counters.sink_failures >= 2, what="the short batch failing")
        assert len(sink.records) == BATCH and collector.counters.acked == 0  # its ack is owed, not sent
        handle.stop()
    assert collector.counters.acked == BATCH
    assert pending_count(redis_client) == 5
