"""`telemetry-collector errors`: grouping by fingerprint, rates, new kinds, filters, archive history."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from emitters.events import decode
from tests.support.tool_events import SECOND, archived_ids, emitters
from tests.support.tool_runs import cli
from tests.support.inprocess_collector import running_collector
from tests.support.waiting import wait_for

HOUR = 3600 * SECOND


@pytest.fixture
def now(redis_url: str) -> int:
    """Errors over two days: a timeout kind seen before the window, and kinds new in it."""
    now = time.time_ns()
    with emitters(redis_url, "api", "engine", "worker") as (api, engine, worker):
        api.error("timeout after 31s on worker 7", error_type="TimeoutError", ts=now - 30 * HOUR)
        api.error("timeout after 2s on worker 12", error_type="TimeoutError", ts=now - 5 * HOUR)
        engine.error("timeout after 9s on worker 3", error_type="TimeoutError", ts=now - 4 * HOUR, severity="critical")
        api.error("timeout after 1s on worker 1", error_type="TimeoutError", ts=now - 1 * HOUR)
        # A custom failure event without a fingerprint: grouped by its type and message template.
        worker.event("job.failed", severity="error", message="job 17 failed: disk full", ts=now - 3 * HOUR)
        worker.event("job.failed", severity="error", message="job 18 failed: disk full", ts=now - 2 * HOUR)
        try:
            raise ValueError("bad shape (3, 4)")
        except ValueError as exc:
            engine.error(exc, ts=now - 2 * HOUR)
        api.event("request.received", ts=now - HOUR)  # not an error: never counted
    return now


def _report(redis_url: str, *args: str) -> dict:
    result = cli("errors", "--redis-url", redis_url, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _summary(report: dict) -> list[tuple[str, int, bool, list[str]]]:
    return [(g["error_type"], g["count"], g["new"], g["services"]) for g in report["groups"]]


class TestErrorsReport:
    """The grouped report over a window."""

    def test_groups_counts_rates_and_new_kinds(self, redis_url: str, now: int) -> None:
        """Kinds sorted by count; the timeout kind was seen before the window, so it is not new."""
        report = _report(redis_url)
        assert _summary(report) == [
            ("TimeoutError", 3, False, ["api", "engine"]),
            ("job.failed", 2, True, ["worker"]),
            ("ValueError", 1, True, ["engine"]),
        ]
        timeout = report["groups"][0]
        assert timeout["rate_per_hour"] == pytest.approx(3 / 24, abs=1e-3)
        assert timeout["severity"] == "critical"
        assert timeout["sample_message"] == "timeout after 1s on worker 1"
        assert timeout["first_seen"] < timeout["last_seen"]
        assert report["kinds"] == 3 and report["occurrences"] == 6

    def test_window_and_filters(self, redis_url: str, now: int) -> None:
        """A wider window makes the timeout new; filters narrow the counted occurrences, not the history."""
        assert _summary(_report(redis_url, "--since", "2d"))[0] == ("TimeoutError", 4, True, ["api", "engine"])
        assert _summary(_report(redis_url, "--service", "engine")) == [  # a tie: the latest first
            ("ValueError", 1, True, ["engine"]),
            ("TimeoutError", 1, False, ["engine"]),
        ]
        assert _summary(_report(redis_url, "--severity", "critical")) == [("TimeoutError", 1, False, ["engine"])]
        assert _summary(_report(redis_url, "--since", "90m")) == [("TimeoutError", 1, False, ["api"])]
        assert _summary(_report(redis_url, "--type", "job.*")) == [("job.failed", 2, True, ["worker"])]

    def test_text_table_matches_json(self, redis_url: str, now: int) -> None:
        """Every JSON group is a line of the table with the same count, fingerprint and new flag."""
        groups = _report(redis_url)["groups"]
        result = cli("errors", "--redis-url", redis_url)
        lines = result.stdout.splitlines()
        assert "3 kinds, 6 occurrences, 2 new" in lines[0]
        rows = lines[2:]
        assert len(rows) == len(groups)
        for line, group in zip(rows, groups):
            assert line.split()[0] == str(group["count"])
            assert group["fingerprint"][:16] in line
            assert (" new " in line) == group["new"]
            assert group["sample_message"] in line

    def test_limit(self, redis_url: str, now: int) -> None:
        """--limit keeps the most frequent kinds and says how many there were."""
        result = cli("errors", "--redis-url", redis_url, "--json", "--limit", "1")
        assert [g["error_type"] for g in json.loads(result.stdout)["groups"]] == ["TimeoutError"]
        assert "showing 1 of 3 kinds" in result.stderr

    def test_archive_history_decides_new(
        self, redis_url: str, redis_client: redis.Redis, now: int, tmp_path: Path
    ) -> None:
        """An occurrence only in the archive (trimmed from the stream) still makes a kind not new, within --history."""
        with running_collector(redis_url, tmp_path):
            wait_for(lambda: len(archived_ids(tmp_path, "errors")) == 7, what="errors archived")
        for entry_id, fields in redis_client.xrange("telemetry:errors"):
            if decode(fields[b"event"]).ts < now - 24 * HOUR:
                redis_client.xdel("telemetry:errors", entry_id)
        assert _summary(_report(redis_url))[0] == ("TimeoutError", 3, True, ["api", "engine"])
        assert _summary(_report(redis_url, "--archive", str(tmp_path)))[0] == ("TimeoutError", 3, False, ["api", "engine"])
        # The archived occurrence (30 h ago) is more than --history 1h before the 24 h window.
        archived_only_recently = _report(redis_url, "--archive", str(tmp_path), "--history", "1h")
        assert _summary(archived_only_recently)[0][2] is True

    def test_empty_window(self, redis_url: str) -> None:
        """No errors: an empty report, exit 0."""
        result = cli("errors", "--redis-url", redis_url)
        assert result.exit_code == 0 and "0 kinds, 0 occurrences" in result.stdout
        assert _report(redis_url)["groups"] == []
