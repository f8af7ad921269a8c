"""Nothing lost without a count: poison entries and Redis refusing writes (issue #16, findings 3 and 4).

Real redis-server, real ``telemetry-collector run`` processes, real faults.
Every scenario ends with the books balanced: each entry written is in the
JSONL files, in the dead letters, or counted lost, exactly once.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Sequence
from pathlib import Path

import pytest
from msgspec.structs import replace
import redis

from collector.embedded import RedisProcess
from emitters import Emitter
from emitters.events import encode
from tests.support.loss_entries import deeply_nested
from collector.daemon import Collector
from collector.records import Record
from collector.refusals import refusal
from tests.support.stream_entries import GROUP, NAMES, add_events, custom_event, dead_letters, jsonl_ids, pending_count
from tests.support.inprocess_collector import FaultySink, heartbeat, make_config, running
from tests.support.collector_process import CollectorProcess, collectors, launch  # noqa: F401  (fixture)
from collector.sinks.jsonl import JsonlSink
from tests.support.inprocess_collector import SwitchableRejectSink, running_collector
from tests.support.tool_runs import cli
from tests.support.waiting import wait_for


def _health(url: str) -> tuple[int, dict]:
    result = cli("health", "--redis-url", url, "--json", "--heartbeat-max-age", "3s", "--max-dead", "1")
    return result.exit_code, json.loads(result.stdout)


class TestPoisonEntry:
    def test_deeply_nested_entry_is_dead_lettered_alone_and_neighbours_delivered(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """A 500,000-deep unknown field once crash-looped the daemon (RecursionError):
        now that entry alone is a dead letter and its ten neighbours reach the files."""
        before = [custom_event(n) for n in range(5)]
        after = [custom_event(n) for n in range(5, 10)]
        pipe = redis_client.pipeline(transaction=False)
        for event in before:
            pipe.xadd(NAMES.events, {"event": encode(event)})
        pipe.xadd(NAMES.events, {"event": deeply_nested(custom_event(99))})
        for event in after:
            pipe.xadd(NAMES.events, {"event": encode(event)})
        pipe.execute()
        emitted = 11

        collector = launch(collectors, tmp_path, redis_url)
        collector.wait_ready()
        wait_for(lambda: len(jsonl_ids(collector.jsonl_dir)) == 10 and dead_letters(redis_client), 30, "delivery")
        wait_for(lambda: pending_count(redis_client) == 0, 30, "acks")

        assert not collector.exited(), collector.log_path.read_text()[-3000:]
        files = jsonl_ids(collector.jsonl_dir)
        assert set(files) == {event.id for event in before + after}
        (letter,) = dead_letters(redis_client)
        assert letter[b"reason"].startswith(b"decode_error: nesting deeper")
        assert len(files) + len(dead_letters(redis_client)) + 0 == emitted


class TestRedisRefusesWrites:
    @pytest.mark.parametrize("refusal", ["OOM", "READONLY"])
    def test_refusal_keeps_the_batch_pending_shows_in_health_and_never_exits(
        self, refusal: str, redis_process: RedisProcess, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """OOM (maxmemory, noeviction) or READONLY (a replica): the collector keeps the batch,
        backs off, says why in the log and in ``health`` (degraded), and delivers it all once
        Redis accepts writes again."""
        client = redis_process.client()
        client.xgroup_create(NAMES.events, GROUP, id="0", mkstream=True)
        client.xgroup_create(NAMES.errors, GROUP, id="0", mkstream=True)
        valid = [custom_event(n) for n in range(10)]
        pipe = client.pipeline(transaction=False)
        for event in valid:
            pipe.xadd(NAMES.events, {"event": encode(event)})
        pipe.xadd(NAMES.events, {"garbage": b"\x00"})  # needs a dead letter: an XADD
        pipe.execute()
        emitted = 11
        if refusal == "OOM":
            client.config_set("maxmemory", 1)
        else:  # a replica of a primary that is not there: every write is READONLY
            client.execute_command("REPLICAOF", "127.0.0.1", "1")

        collector = launch(collectors, tmp_path, redis_process.url)
        collector.wait_ready()
        wait_for(lambda: collector.logged("redis_refused_write"), 30, "the refusal in the log")
        (logged,) = collector.logged("redis_refused_write")
        assert logged["refusal"] == refusal and "action" in logged
        code, report = wait_for(lambda: (h := _health(redis_process.url))[0] == 1 and h, 30, "degraded health")
        assert any(refusal in reason for reason in report["reasons"]), report["reasons"]
        collector.signal(0)
        assert not collector.exited()
        assert not dead_letters(client)
        assert pending_count(client) == (11 if refusal == "OOM" else 0)  # READONLY: XREADGROUP itself refused

        if refusal == "OOM":
            client.config_set("maxmemory", 0)
        else:
            client.execute_command("REPLICAOF", "NO", "ONE")
        wait_for(lambda: pending_count(client) == 0 and dead_letters(client), 30, "delivery after the refusal")
        wait_for(lambda: collector.logged("redis_accepting_writes"), 30, "recovery in the log")
        wait_for(lambda: _health(redis_process.url)[0] == 0, 30, "healthy again")
        assert not collector.exited()
        files = jsonl_ids(collector.jsonl_dir)
        assert set(files) == {event.id for event in valid} and max(files.values()) == 1
        assert len(files) + len(dead_letters(client)) == emitted
        client.close()


class TestDataPolicy:
    def test_out_of_range_values_are_dead_lettered_by_the_collector_and_counted_by_the_emitter(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Finding 7: NaN/inf attrs and ts 0, 2**64-1, year 2200 or in seconds used to be written
        (NaN as null). Now the collector dead-letters each with the reason, the valid neighbours
        reach the files, and an emitter counts the same events as invalid instead of sending them."""
        now = time.time_ns()
        refused = {
            "nan": replace(custom_event(1), attrs={"x": float("nan")}),
            "inf": replace(custom_event(2), attrs={"x": float("-inf")}),
            "ts 0": replace(custom_event(3), ts=0),
            "ts 2**64-1": replace(custom_event(4), ts=2**64 - 1),
            "year 2200": replace(custom_event(5), ts=7_258_118_400 * 10**9),
            "seconds": replace(custom_event(6), ts=now // 10**9),
        }
        valid = [custom_event(n) for n in range(10, 14)]
        pipe = redis_client.pipeline(transaction=False)
        for event in [valid[0], *refused.values(), *valid[1:]]:
            pipe.xadd(NAMES.events, {"event": encode(event)})
        pipe.execute()

        collector = launch(collectors, tmp_path, redis_url)
        collector.wait_ready()
        wait_for(lambda: pending_count(redis_client) == 0 and len(dead_letters(redis_client)) == 6, 30, "delivery")
        files = jsonl_ids(collector.jsonl_dir)
        assert set(files) == {event.id for event in valid}
        reasons = sorted(letter[b"reason"].decode() for letter in dead_letters(redis_client))
        assert all(reason.startswith("out_of_range: ") for reason in reasons), reasons
        assert sum("not a finite number - at `$.attrs.x`" in reason for reason in reasons) == 2
        assert sum("at `$.ts`" in reason for reason in reasons) == 4
        assert len(files) + len(dead_letters(redis_client)) == len(valid) + len(refused)

        emitter = Emitter("policy-test", redis_url, hash_secret="t")
        emitter.event("job.created", x=float("nan"))
        emitter.event("job.created", x=float("inf"))
        emitter.event("job.created", ts=now // 10**9)
        emitter.event("job.created", ts=7_258_118_400 * 10**9)
        emitter.event("job.created", x=1.5)
        assert emitter.flush(10)
        stats = emitter.stats()
        emitter.close()
        assert stats["sent"] == 1 and stats["dropped"]["invalid"] == 4


class TestSlowExport:
    def test_heartbeat_stays_fresh_and_says_backpressure_while_a_sink_call_hangs(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Finding 7: an export hanging for 3 s (10 heartbeat intervals) once left the heartbeat
        stale, so `health` said "no heartbeat"; now it keeps beating and reports backpressure."""
        add_events(redis_client, [custom_event(n) for n in range(5)])
        writing, release = threading.Event(), threading.Event()

        def hang(batch: Sequence[Record]) -> None:
            writing.set()
            release.wait(3)

        sink = FaultySink(hang)  # type: ignore[arg-type]
        collector = Collector(make_config(redis_url, tmp_path, heartbeat_interval="300ms"), sinks=[sink])
        with running(collector):
            writing.wait(10)
            first = float(wait_for(lambda: heartbeat(redis_client, collector).get("last_seen"), 10, "a heartbeat"))
            beat = wait_for(
                lambda: (b := heartbeat(redis_client, collector)) and float(b["last_seen"]) > first + 0.5 and b, 10,
                "a heartbeat during the hang",
            )
            assert beat["status"] == "backpressure" and not release.is_set()
            code, report = _health(redis_url)
            assert code == 1 and any("backpressure" in reason for reason in report["reasons"]), report["reasons"]
            release.set()
            wait_for(lambda: pending_count(redis_client) == 0, 10, "acked after the hang")
            wait_for(lambda: heartbeat(redis_client, collector)["status"] == "running", 10, "running again")


class TestReplayToTheOtherSinks:
    def test_rejected_letter_records_who_accepted_and_replay_goes_to_the_others_only(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Finding 7: events an OTLP-like backend rejected sat in JSONL and in the dead letters, and
        a replay would have duplicated them in JSONL. Now the letter names the sinks that accepted
        it, and the replayed entry reaches only the one that had refused."""
        files = JsonlSink(tmp_path / "files", max_bytes=1 << 20, retention_days=None)
        backend = SwitchableRejectSink(tmp_path / "backend")
        backend.rejecting.set()
        with running_collector(redis_url, tmp_path, sinks=[files, backend]) as collector:
            events = [custom_event(n) for n in range(3)]
            add_events(redis_client, events)
            wait_for(lambda: len(dead_letters(redis_client)) == 3 and pending_count(redis_client) == 0, 20, "rejected")
            assert {letter[b"accepted_by"] for letter in dead_letters(redis_client)} == {b"jsonl"}
            assert collector.counters.written == 0
            backend.rejecting.clear()
            result = cli("dlq", "replay", "--all", "--redis-url", redis_url, "--json")
            assert result.exit_code == 0 and len(json.loads(result.stdout)["replayed"]) == 3
            wait_for(lambda: len(jsonl_ids(tmp_path / "backend")) == 3 and pending_count(redis_client) == 0, 20, "replay")
        ids = {event.id for event in events}
        assert jsonl_ids(tmp_path / "files") == {event_id: 1 for event_id in ids}  # not duplicated by the replay
        assert jsonl_ids(tmp_path / "backend") == {event_id: 1 for event_id in ids}
        assert not dead_letters(redis_client)


class TestRefusalKinds:
    @pytest.mark.parametrize(
        ("error", "code"),
        [
            (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "OOM"),
            (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), "READONLY"),
            (redis.exceptions.NoPermissionError("this user has no permissions to run the 'xadd' command"), "NOPERM"),
            (redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's unable to"), "MISCONF"),
            (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
            (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None),
            (redis.ResponseError("NOGROUP No such key 'telemetry:events'"), None),
        ],
    )
    def test_refusals_are_told_apart_from_other_errors(self, error: redis.ResponseError, code: str) -> None:
        """The four refusals the issue names (and NOREPLICAS) wait; any other error reply is not one."""
        assert refusal(error) == code
