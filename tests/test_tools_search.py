"""`telemetry-collector search`: time ranges, filters, order, limit, archive, dedup."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from collector.tools.reading import StoredEvent
from collector.tools.search import select_rows
from emitters.events import CustomEvent, decode
from tests.support.tool_events import SECOND, archived_ids, emitters, tags_by_id
from tests.support.tool_runs import cli, json_lines
from tests.support.inprocess_collector import running_collector
from tests.support.waiting import wait_for

MINUTE = 60 * SECOND
TRACE = "ab" * 16
ALL_RECENT = ["d1", "c1", "x1", "e2", "e1", "a1"]  # newest first, all within the last hour


def _iso(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.timezone.utc).isoformat()


class Prepared(NamedTuple):
    now: int
    names: dict[str, str]  # event id -> the tag it was emitted with

    def of(self, rows: list[dict]) -> list[str]:
        return [self.names[row["id"]] for row in rows]


@pytest.fixture
def prepared(redis_url: str, redis_client: redis.Redis) -> Prepared:
    """A known set of events from three services at known times, each tagged with a short name."""
    now = time.time_ns()
    with emitters(redis_url, "api", "engine", "worker") as (api, engine, worker):
        # Ids given per event rather than by a scope: a scope would add its own span.ended event.
        ids = {"trace_id": TRACE, "job_id": "j1"}
        api.event("request.received", tag="a1", ts=now - 50 * MINUTE, route="/v1/generate", request_id="r1", **ids)
        engine.generation_started("tiny", "r1", tag="e1", ts=now - 49 * MINUTE, prompt_tokens=7, **ids)
        engine.generation_completed("tiny", "r1", 7, 20, 812.5, tag="e2", ts=now - 48 * MINUTE, **ids)
        api.error(ValueError("bad input"), tag="x1", ts=now - 30 * MINUTE, request_id="r2")
        worker.event("job.progress_updated", tag="w1", ts=now - 120 * MINUTE, severity="warn", job_id="j2", done=3)
        engine.error("model stalled", error_type="TimeoutError", severity="critical", tag="c1", ts=now - 10 * MINUTE)
        api.event("cache.miss", tag="d1", ts=now - 5 * MINUTE, severity="debug", key="k1")
    return Prepared(now, tags_by_id(redis_client))


def _search(prepared: Prepared, redis_url: str, *args: str) -> list[str]:
    result = cli("search", "--redis-url", redis_url, "--json", *args)
    assert result.exit_code == 0, result.output
    return prepared.of(json_lines(result.stdout))


class TestSearchFilters:
    """Each filter, on a prepared stream, gives exactly the expected events."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["--since", "1h"], ALL_RECENT),
            (["--since", "3h"], ["d1", "c1", "x1", "e2", "e1", "a1", "w1"]),
            (["--since", "1h", "--service", "api"], ["d1", "x1", "a1"]),
            (["--since", "1h", "--service", "eng*"], ["c1", "e2", "e1"]),
            (["--since", "1h", "--service", "api", "--service", "worker"], ["d1", "x1", "a1"]),
            (["--since", "1h", "--type", "generation.*"], ["e2", "e1"]),
            (["--since", "3h", "--severity", "warn"], ["c1", "x1", "w1"]),
            (["--since", "3h", "--severity", "CRITICAL"], ["c1"]),
            (["--since", "1h", "--trace", TRACE], ["e2", "e1", "a1"]),
            (["--since", "1h", "--trace", TRACE[:8]], ["e2", "e1", "a1"]),
            (["--since", "1h", "--request", "r1"], ["e2", "e1", "a1"]),
            (["--since", "3h", "--job", "j2"], ["w1"]),
            (["--since", "1h", "--request", "r1", "--service", "engine"], ["e2", "e1"]),
            (["--since", "1h", "--request", "nope"], []),
        ],
    )
    def test_filter(self, redis_url: str, prepared: Prepared, args: list[str], expected: list[str]) -> None:
        """The rows (by event id) are exactly those the filter selects, newest first."""
        assert _search(prepared, redis_url, *args) == expected

    def test_until_and_iso_times(self, redis_url: str, prepared: Prepared) -> None:
        """--until bounds the range; absolute ISO-8601 times (with a zone or as UTC) work too."""
        now = prepared.now
        assert _search(prepared, redis_url, "--since", "3h", "--until", "40m") == ["e2", "e1", "a1", "w1"]
        window = ["--since", _iso(now - 55 * MINUTE), "--until", _iso(now - 45 * MINUTE)]
        assert _search(prepared, redis_url, *window) == ["e2", "e1", "a1"]
        naive_utc = dt.datetime.fromtimestamp((now - 31 * MINUTE) / 1e9, tz=dt.timezone.utc).replace(tzinfo=None)
        assert _search(prepared, redis_url, "--since", naive_utc.isoformat(), "--until", "now") == ["d1", "c1", "x1"]

    def test_order_and_limit(self, redis_url: str, prepared: Prepared) -> None:
        """--oldest-first reverses the order; --limit keeps the first N of that order and says more matched."""
        assert _search(prepared, redis_url, "--since", "1h", "--oldest-first") == ALL_RECENT[::-1]
        result = cli("search", "--redis-url", redis_url, "--json", "--since", "1h", "--limit", "2")
        assert prepared.of(json_lines(result.stdout)) == ["d1", "c1"]
        assert "more match" in result.stderr
        assert _search(prepared, redis_url, "--since", "1h", "--limit", "2", "--oldest-first") == ["a1", "e1"]

    def test_json_carries_the_same_data_as_the_lines(self, redis_url: str, prepared: Prepared) -> None:
        """--json rows are the wire fields plus where each event was found; the text lines show the same events."""
        rows = json_lines(cli("search", "--redis-url", redis_url, "--json", "--since", "1h").stdout)
        by_name = dict(zip(prepared.of(rows), rows))
        assert by_name["x1"]["stream"] == "errors" and by_name["x1"]["error_type"] == "ValueError"
        assert by_name["e2"]["stream"] == "events" and by_name["e2"]["generation_tokens"] == 20
        assert by_name["a1"]["attrs"] == {"route": "/v1/generate", "tag": "a1"}
        assert all(row["stream_id"] for row in rows)
        text = cli("search", "--redis-url", redis_url, "--since", "1h").stdout.splitlines()
        assert len(text) == len(rows)
        for line, row in zip(text, rows):
            assert row["service"] in line and row["type"] in line and row.get("trace_id", "")[:8] in line
        assert "ValueError: bad input" in text[2] and "ERROR" in text[2]

    def test_undecodable_entries_are_skipped_and_reported(self, redis_url: str, redis_client: redis.Redis, prepared: Prepared) -> None:
        """A garbage entry in a stream does not break the search; it is counted on stderr."""
        redis_client.xadd("telemetry:events", {"event": b"\xc1 not msgpack"})
        redis_client.xadd("telemetry:events", {"other": b"field"})
        result = cli("search", "--redis-url", redis_url, "--json", "--since", "1h")
        assert result.exit_code == 0
        assert prepared.of(json_lines(result.stdout)) == ALL_RECENT
        assert "skipped 2 stream entries" in result.stderr

    def test_stream_prefix(self, redis_url: str, redis_client: redis.Redis, prepared: Prepared) -> None:
        """--stream-prefix reads another deployment's streams and only those."""
        with emitters(redis_url, "api", stream_prefix="staging") as (api,):
            api.event("request.received", tag="s1")
        staging = tags_by_id(redis_client, "staging")
        rows = json_lines(cli("search", "--redis-url", redis_url, "--json", "--stream-prefix", "staging").stdout)
        assert [staging[row["id"]] for row in rows] == ["s1"]
        assert "s1" not in _search(prepared, redis_url, "--since", "3h")


class TestSearchArchive:
    """--archive adds the collector's JSONL files: older events, each event once."""

    def test_archive_reaches_past_the_trimmed_stream_without_duplicates(
        self, redis_url: str, redis_client: redis.Redis, prepared: Prepared, tmp_path: Path
    ) -> None:
        """Events trimmed from the stream are found in the archive; those in both appear once."""
        with running_collector(redis_url, tmp_path):
            wait_for(lambda: len(archived_ids(tmp_path)) + len(archived_ids(tmp_path, "errors")) == 7, what="archive")
        for key in ("telemetry:events", "telemetry:errors"):  # as if trimmed, all but d1
            for entry_id, fields in redis_client.xrange(key):
                if prepared.names[decode(fields[b"event"]).id] != "d1":
                    redis_client.xdel(key, entry_id)
        assert _search(prepared, redis_url, "--since", "3h") == ["d1"]
        assert _search(prepared, redis_url, "--since", "3h", "--archive", str(tmp_path)) == [
            "d1", "c1", "x1", "e2", "e1", "a1", "w1",
        ]  # fmt: skip
        assert _search(prepared, redis_url, "--since", "1h", "--archive", str(tmp_path), "--severity", "error") == ["c1", "x1"]
        rows = json_lines(cli("search", "--redis-url", redis_url, "--json", "--archive", str(tmp_path), "--type", "error").stdout)
        assert {row["stream"] for row in rows} == {"errors"} and all(row["stream_id"] for row in rows)

    def test_missing_archive_directory_is_a_usage_error(self, redis_url: str, tmp_path: Path) -> None:
        """A --archive that is not a directory is a one-line error, exit 2."""
        result = cli("search", "--redis-url", redis_url, "--archive", str(tmp_path / "nope"))
        assert result.exit_code == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "--archive" in result.stderr


def _row(ts: int, name: str) -> StoredEvent:
    event = CustomEvent(
        type="t.x", id=name.encode().hex().rjust(32, "0"), ts=ts, service="s", host="h", pid=1, trace_id="0" * 32, span_id="0" * 16
    )
    return StoredEvent("events", None, event)


class TestSelectRows:
    """The bounded newest/oldest-N selection with dedup by event id."""

    def test_duplicates_count_once_in_any_position(self) -> None:
        """Twins of kept and of ranked-out events never show up twice nor evict a distinct event."""
        rows = [_row(ts, name) for ts, name in [(5, "e"), (1, "a"), (3, "c"), (5, "e"), (2, "b"), (1, "a"), (4, "d"), (3, "c")]]
        newest, more = select_rows(rows, limit=3, newest_first=True)
        assert [r.event.ts for r in newest] == [5, 4, 3] and more
        oldest, more = select_rows(rows, limit=3, newest_first=False)
        assert [r.event.ts for r in oldest] == [1, 2, 3] and more
        everything, more = select_rows(rows, limit=0, newest_first=True)
        assert [r.event.ts for r in everything] == [5, 4, 3, 2, 1] and not more
        exact, more = select_rows(rows, limit=5, newest_first=True)
        assert len(exact) == 5 and not more
