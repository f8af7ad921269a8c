"""`telemetry-collector dlq`: dead letters made by a real collector; list, show, replay, purge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import redis

from collector.daemon import Collector
from tests.support.inprocess_collector import SwitchableRejectSink, running_collector
from tests.support.tool_events import archived_ids, emitters
from tests.support.tool_runs import cli
from tests.support.waiting import wait_for


class Letters(NamedTuple):
    """Dead-letter ids by how they died, and the running collector that made them."""

    collector: Collector
    sink: SwitchableRejectSink
    jsonl_dir: Path
    by_category: dict[str, list[str]]
    rejected_events: list[str]  # original event ids of the rejected letters, oldest first


@pytest.fixture
def letters(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Letters]:
    """A running collector dead-letters garbage, a field-less entry, an oversized event and two rejected ones."""
    sink = SwitchableRejectSink(tmp_path)
    with running_collector(redis_url, tmp_path, sinks=[sink], max_event_size=1024) as collector:
        redis_client.xadd("telemetry:events", {"event": b"\xc1 not msgpack"})
        redis_client.xadd("telemetry:events", {"payload": b"x", "source": b"legacy-agent"})
        with emitters(redis_url, "api") as (api,):
            api.event("request.received", blob="z" * 1500)
        wait_for(lambda: collector.counters.dead_lettered == 3, what="three dead letters")
        sink.rejecting.set()
        with emitters(redis_url, "engine") as (engine,):
            engine.generation_started("tiny", "r-1")
            engine.error("model crashed", error_type="RuntimeError", request_id="r-1")
        wait_for(lambda: collector.counters.dead_lettered == 5, what="two rejected")
        sink.rejecting.clear()  # the backend is fixed; replays can now be delivered
        by_category: dict[str, list[str]] = {}
        rejected_events: list[str] = []
        for entry_id, fields in redis_client.xrange("telemetry:dead"):
            category = fields[b"reason"].decode().split(":")[0]
            by_category.setdefault(category, []).append(entry_id.decode())
        rows = json.loads(cli("dlq", "list", "--redis-url", redis_url, "--json", "--reason", "rejected*").stdout)
        rejected_events = [row["event"]["id"] for row in rows]
        yield Letters(collector, sink, tmp_path, by_category, rejected_events)


def _list(redis_url: str, *args: str) -> list[dict]:
    result = cli("dlq", "list", "--redis-url", redis_url, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class TestListAndShow:
    """Inspecting dead letters."""

    def test_list_shows_every_letter_with_its_reason(self, redis_url: str, letters: Letters) -> None:
        """Every dead letter is listed oldest first with category, origin and whether it decodes."""
        rows = _list(redis_url)
        assert [row["category"] for row in rows] == ["decode_error", "missing_field", "too_large", "rejected", "rejected"]
        assert [row["dlq_id"] for row in rows] == sum(
            (letters.by_category[c] for c in ("decode_error", "missing_field", "too_large")), []
        ) + letters.by_category["rejected"]
        too_large = rows[2]
        assert too_large["truncated"] is True and too_large["size"] > 1024 and too_large["event"] is None
        # The collector handles errors first, so the two rejections may be in either order.
        rejected = sorted(rows[3:], key=lambda row: row["stream"])
        assert {row["reason"] for row in rejected} == {"rejected: switchable: 400 backend refused the schema"}
        assert rejected[0]["stream"] == "telemetry:errors" and rejected[0]["event"]["message"] == "model crashed"
        assert rejected[1]["stream"] == "telemetry:events" and rejected[1]["event"]["type"] == "generation.started"
        assert all(row["consumer"] == letters.collector.consumer and row["dead_at"] for row in rows)

    def test_list_filter_limit_and_text(self, redis_url: str, letters: Letters) -> None:
        """--reason and --limit narrow the list; the table has one line per letter plus a count."""
        assert [row["category"] for row in _list(redis_url, "--reason", "too_large*")] == ["too_large"]
        assert len(_list(redis_url, "--limit", "2")) == 2
        text = cli("dlq", "list", "--redis-url", redis_url).stdout.splitlines()
        assert len(text) == 1 + 5 + 1 and text[-1] == "5 dead letter(s) in telemetry:dead"
        assert sorted(line.split()[0] for line in text[4:6]) == sorted(letters.by_category["rejected"])
        assert any("engine generation.started" in line for line in text[4:6])
        assert "(undecodable)" in text[1] and "decode_error" in text[1]

    def test_show_gives_the_whole_letter(self, redis_url: str, letters: Letters) -> None:
        """show: the original fields of a field-less entry, the decoded event of a rejected one."""
        (missing,) = letters.by_category["missing_field"]
        data = json.loads(cli("dlq", "show", missing, "--redis-url", redis_url, "--json").stdout)
        assert data["fields"] == {"payload": "x", "source": "legacy-agent"} and data["payload_b64"] is None
        rejected = next(row["dlq_id"] for row in _list(redis_url, "--reason", "rejected*") if row["event"]["type"] != "error")
        text = cli("dlq", "show", rejected, "--redis-url", redis_url).stdout
        assert "reason:     rejected: switchable: 400 backend refused the schema" in text
        assert '"type": "generation.started"' in text and '"request_id": "r-1"' in text
        garbage = letters.by_category["decode_error"][0]
        assert "payload does not decode" in cli("dlq", "show", garbage, "--redis-url", redis_url).stdout

    def test_show_unknown_and_malformed_ids(self, redis_url: str, letters: Letters) -> None:
        """An id not in the DLQ is exit 1; one that is not a stream id is a usage error, exit 2; one line each."""
        missing = cli("dlq", "show", "1-1", "--redis-url", redis_url)
        assert missing.exit_code == 1 and missing.stderr.count("\n") == 1
        malformed = cli("dlq", "show", "yesterday", "--redis-url", redis_url)
        assert malformed.exit_code == 2 and malformed.stderr.count("\n") == 1 and "not a stream id" in malformed.stderr


class TestReplay:
    """Putting dead letters back on their streams."""

    def test_replayed_rejection_is_delivered_by_the_running_collector(self, redis_url: str, letters: Letters) -> None:
        """After the backend is fixed, replaying the rejected letters delivers them; they leave the DLQ."""
        rejected = letters.by_category["rejected"]
        assert not set(letters.rejected_events) & set(archived_ids(letters.jsonl_dir) + archived_ids(letters.jsonl_dir, "errors"))
        result = cli("dlq", "replay", *rejected, "--redis-url", redis_url, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert [r["dlq_id"] for r in report["replayed"]] == rejected and report["refused"] == []
        assert sorted(r["stream"] for r in report["replayed"]) == ["telemetry:errors", "telemetry:events"]
        wait_for(
            lambda: set(letters.rejected_events) <= set(archived_ids(letters.jsonl_dir) + archived_ids(letters.jsonl_dir, "errors")),
            what="replayed events in the archive",
        )
        assert {row["category"] for row in _list(redis_url)} == {"decode_error", "missing_field", "too_large"}
        again = cli("dlq", "replay", rejected[0], "--redis-url", redis_url)
        assert again.exit_code == 1 and "no such dead letter" in again.stderr

    def test_refusals_are_explained(self, redis_url: str, letters: Letters) -> None:
        """Truncated, payload-less and still-undecodable letters are refused with a reason and stay put; exit 1."""
        ids = [letters.by_category[c][0] for c in ("too_large", "missing_field", "decode_error")]
        result = cli("dlq", "replay", *ids, "--redis-url", redis_url, "--json")
        assert result.exit_code == 1
        refused = {r["dlq_id"]: r["reason"] for r in json.loads(result.stdout)["refused"]}
        assert "truncated" in refused[ids[0]] and "corrupt" in refused[ids[0]]
        assert "no 'event' payload" in refused[ids[1]] and "payload, source" in refused[ids[1]]
        assert "still does not decode" in refused[ids[2]] and "--force" in refused[ids[2]]
        assert len(_list(redis_url)) == 5
        text = cli("dlq", "replay", ids[0], "--redis-url", redis_url)
        assert text.exit_code == 1 and "0 replayed, 1 refused" in text.stdout
        assert text.stderr.startswith(f"warning: not replayed {ids[0]}: its payload was truncated")

    def test_force_replays_an_undecodable_payload_which_dies_again(self, redis_url: str, letters: Letters) -> None:
        """--force puts even garbage back; the collector dead-letters it again (not lost, not looping silently)."""
        garbage = letters.by_category["decode_error"][0]
        assert cli("dlq", "replay", garbage, "--force", "--redis-url", redis_url).exit_code == 0
        wait_for(lambda: letters.collector.counters.dead_lettered == 6, what="garbage dead-lettered again")
        categories = [row["category"] for row in _list(redis_url)]
        assert categories.count("decode_error") == 1 and garbage not in [row["dlq_id"] for row in _list(redis_url)]

    def test_replay_all_by_reason(self, redis_url: str, letters: Letters) -> None:
        """--all --reason replays just the matching letters."""
        result = cli("dlq", "replay", "--all", "--reason", "rejected*", "--redis-url", redis_url, "--json")
        assert result.exit_code == 0 and len(json.loads(result.stdout)["replayed"]) == 2
        assert len(_list(redis_url)) == 3

    @pytest.mark.parametrize(
        "args",
        [[], ["1-0", "--all"], ["1-0", "--reason", "x*"]],
        ids=["neither", "both", "reason-without-all"],
    )
    def test_bad_replay_arguments(self, redis_url: str, args: list[str]) -> None:
        """IDs and --all are exclusive, one is required, --reason needs --all: one line, exit 2."""
        result = cli("dlq", "replay", *args, "--redis-url", redis_url)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1


class TestPurge:
    """Deleting dead letters."""

    def test_purge_asks_first(self, redis_url: str, letters: Letters) -> None:
        """Without --yes a 'no' keeps everything (exit 1); a 'yes' deletes them all."""
        declined = cli("dlq", "purge", "--redis-url", redis_url, input="n\n")
        assert declined.exit_code == 1 and "Delete 5 dead letter(s) from telemetry:dead?" in declined.stderr
        assert len(_list(redis_url)) == 5
        accepted = cli("dlq", "purge", "--redis-url", redis_url, input="y\n")
        assert accepted.exit_code == 0 and "purged 5 dead letter(s)" in accepted.stdout
        assert _list(redis_url) == []

    def test_purge_given_ids_with_yes(self, redis_url: str, letters: Letters) -> None:
        """purge ID... --yes deletes only those; unknown ids are reported, not fatal."""
        rejected = letters.by_category["rejected"]
        result = cli("dlq", "purge", *rejected, "1-1", "--yes", "--json", "--redis-url", redis_url)
        assert result.exit_code == 0
        assert json.loads(result.stdout) == {"purged": 2, "missing": ["1-1"]}
        assert "rejected" not in {row["category"] for row in _list(redis_url)}
