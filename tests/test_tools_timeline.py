"""`telemetry-collector timeline ID`: one request's story across services, gaps flagged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from emitters.events import decode

from tests.support.tool_events import SECOND, archived_ids, emitters, tags_by_id
from tests.support.tool_runs import cli
from tests.support.inprocess_collector import running_collector
from tests.support.waiting import wait_for

MS = 1_000_000
TRACE = "cd" * 16


class Story(NamedTuple):
    start: int
    names: dict[str, str]  # event id -> tag


@pytest.fixture
def story(redis_url: str, redis_client: redis.Redis) -> Story:
    """Request r-42 goes api -> engine -> api, with a 2.5 s stall inside the engine; plus noise."""
    start = time.time_ns() - 60 * SECOND
    # Ids given per event rather than by a scope: a scope would add its own span.ended event.
    ids = {"trace_id": TRACE, "job_id": "job-7"}
    with emitters(redis_url, "api", "engine") as (api, engine):
        # The engine ships first, so the streams hold the story out of order.
        engine.generation_started("tiny", "r-42", tag="started", ts=start + 12 * MS, **ids)
        engine.generation_completed("tiny", "r-42", 5, 9, 2500.0, tag="completed", ts=start + 2512 * MS, **ids)
        assert engine.flush(10)
        api.event("request.received", tag="received", ts=start, request_id="r-42", **ids)
        api.error("upstream closed", error_type="ConnectionError", tag="failed", ts=start + 2600 * MS, request_id="r-42", **ids)
        api.event("request.received", tag="other", ts=start + 100 * MS, request_id="r-43")
    return Story(start, tags_by_id(redis_client))


def _timeline(redis_url: str, *args: str) -> dict:
    result = cli("timeline", "--redis-url", redis_url, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class TestTimeline:
    """Timelines of a request that spans two services."""

    def test_both_services_in_order_with_handoffs_and_the_gap(self, redis_url: str, story: Story) -> None:
        """Events come in time order with relative offsets; handoffs and the injected gap are marked."""
        data = _timeline(redis_url, "r-42")
        events = data["events"]
        assert [story.names[e["id"]] for e in events] == ["received", "started", "completed", "failed"]
        assert [e["service"] for e in events] == ["api", "engine", "engine", "api"]
        assert [e["offset_ms"] for e in events] == [0.0, 12.0, 2512.0, 2600.0]
        assert [e["handoff_from"] for e in events] == [None, "api", None, "engine"]
        assert [e["gap"] for e in events] == [False, False, True, False]
        assert data["services"] == ["api", "engine"] and data["gaps"] == 1 and data["matched_by"] == ["request"]
        assert data["duration_ms"] == 2600.0

    def test_text_shows_offsets_handoffs_and_the_gap_where_they_happen(self, redis_url: str, story: Story) -> None:
        """The readable form marks the handoff before the engine's first line and the gap before the stalled one."""
        result = cli("timeline", "--redis-url", redis_url, "r-42")
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert "request r-42" in lines[0] and "api -> engine" in lines[0] and "1 gap(s) over 1s" in lines[0]
        body = [line.strip() for line in lines[1:]]
        assert body[0].startswith("+0.0ms") and "request.received" in body[0]
        assert body[1] == ">> handoff api -> engine"
        assert body[2].startswith("+12.0ms") and "generation.started" in body[2]
        assert body[3] == "!! gap of 2.500s (over 1s)"
        assert body[4].startswith("+2.512s") and "generation.completed" in body[4]
        assert body[5] == ">> handoff engine -> api"
        assert body[6].startswith("+2.600s") and "ConnectionError: upstream closed" in body[6]
        assert len(body) == 7

    def test_gap_threshold_and_id_kinds(self, redis_url: str, story: Story) -> None:
        """--gap moves the threshold; the same story is found by trace (also by a short prefix) and job id."""
        assert _timeline(redis_url, "r-42", "--gap", "3s")["gaps"] == 0
        assert _timeline(redis_url, "r-42", "--gap", "50ms")["gaps"] == 2
        for wanted, kind in ((TRACE, "trace"), (TRACE[:8].upper(), "trace"), ("job-7", "job"), ("r-42", "request")):
            data = _timeline(redis_url, wanted, "--kind", kind)
            assert len(data["events"]) == 4 and data["matched_by"] == [kind]
        assert [story.names[e["id"]] for e in _timeline(redis_url, "r-43")["events"]] == ["other"]

    def test_unknown_id_exits_1_with_one_line(self, redis_url: str, story: Story) -> None:
        """An id no event carries is a one-line error, exit status 1 (the request id is not a job id)."""
        for args in (["nope"], ["r-42", "--kind", "job"]):
            result = cli("timeline", "--redis-url", redis_url, *args)
            assert result.exit_code == 1
            assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1

    def test_archive_and_stream_merge_into_one_story(
        self, redis_url: str, redis_client: redis.Redis, story: Story, tmp_path: Path
    ) -> None:
        """With the first half of the story only in the archive, --archive restores it, each event once."""
        with running_collector(redis_url, tmp_path):
            wait_for(lambda: len(archived_ids(tmp_path)) + len(archived_ids(tmp_path, "errors")) == 5, what="archive")
        for entry_id, fields in redis_client.xrange("telemetry:events"):
            if story.names[decode(fields[b"event"]).id] in ("received", "started"):
                redis_client.xdel("telemetry:events", entry_id)
        assert [story.names[e["id"]] for e in _timeline(redis_url, "r-42")["events"]] == ["completed", "failed"]
        merged = _timeline(redis_url, "r-42", "--archive", str(tmp_path))
        assert [story.names[e["id"]] for e in merged["events"]] == ["received", "started", "completed", "failed"]
        assert merged["gaps"] == 1
