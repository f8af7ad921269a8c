"""Nothing lost without a count: poison entries and Redis refusing writes (issue #16, findings 3 and 4).

Real redis-server, real ``telemetry-collector run`` processes, real faults.
Every scenario ends with the books balanced: each entry written is in the
JSONL files, in the dead letters, or counted lost, exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from collector.embedded import RedisProcess
from emitters.events import encode
from tests.support.loss_entries import deeply_nested
from tests.test_daemon import GROUP, NAMES, custom_event, dead_letters, jsonl_ids, pending_count
from tests.support.collector_process import CollectorProcess, collectors, launch  # noqa: F401  (fixture)
from tests.test_tools_support import cli, wait_for


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
