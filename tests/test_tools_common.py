"""Shared pieces of the operator tools: argument errors, time parsing, formatting, the archive reader."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
import pytest
import redis

from collector.archive import ArchiveStats, archive_files, read_archive
from collector.cli import COMMANDS
from collector.tools.formatting import event_line, format_age, format_relative
from collector.tools.reading import StoredEvent
from collector.tools.times import parse_time
from emitters.events import ErrorEvent, TokenGenerated
from tests.support.tool_runs import cli, json_lines
from tests.support.tool_events import emitters

NOW = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z
SECOND = 10**9


class TestBadArguments:
    """Bad arguments never reach Redis: one line on stderr, exit status 2."""

    @pytest.mark.parametrize(
        ("args", "names"),
        [
            (["search", "--since", "yesterday"], "--since"),
            (["search", "--since", "2024-13-45T00:00:00"], "--since"),
            (["search", "--until", "1 fortnight"], "--until"),
            (["search", "--since", "1h", "--until", "2h"], "--since"),
            (["search", "--severity", "loud"], "--severity"),
            (["search", "--limit", "-1"], "--limit"),
            (["search", "--bogus"], "--bogus"),
            (["tail", "--severity", "verbose"], "--severity"),
            (["tail", "--timeout", "soon"], "--timeout"),
            (["timeline"], "ID"),
            (["timeline", "r-1", "--gap", "long"], "--gap"),
            (["timeline", "r-1", "--kind", "span"], "--kind"),
            (["errors", "--since", "last week"], "--since"),
            (["errors", "--history", "-1d"], "--history"),
            (["health", "--timeout", "fast"], "--timeout"),
            (["health", "--timeout", "0"], "--timeout"),
            (["health", "--backlog-ratio", "2"], "--backlog-ratio"),
            (["dlq", "frobnicate"], "frobnicate"),
            (["dlq", "show"], "ID"),
            (["dlq", "list", "--limit", "many"], "--limit"),
        ],
    )
    def test_one_line_exit_2(self, args: list[str], names: str) -> None:
        """The error is one line naming the bad argument (and where help is), and the exit status is 2."""
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("Error: ") and names in lines[0] and "--help" in lines[0]

    def test_every_tool_has_help(self) -> None:
        """Each tool command loads through the lazy group and documents itself."""
        for name in ("tail", "search", "timeline", "errors", "health", "dlq"):
            assert COMMANDS[name] == f"collector.tools.{name}:{name}"
            result = cli(name, "--help")
            assert result.exit_code == 0 and ("--redis-url" in result.stdout or name == "dlq")
        assert {"list", "show", "replay", "purge"} <= set(cli("dlq", "--help").stdout.split())

    def test_redis_url_and_prefix_from_the_environment(self, redis_url: str, redis_client: redis.Redis) -> None:
        """TELEMETRY_REDIS_URL and TELEMETRY_STREAM_PREFIX stand in for the flags."""
        with emitters(redis_url, "api", stream_prefix="blue") as (api,):
            api.event("request.received")
        result = cli("search", "--json", env={"TELEMETRY_REDIS_URL": redis_url, "TELEMETRY_STREAM_PREFIX": "blue"})
        assert result.exit_code == 0 and [row["type"] for row in json_lines(result.stdout)] == ["request.received"]


class TestParseTime:
    """--since/--until values."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("now", NOW),
            ("90s", NOW - 90 * SECOND),
            ("1h", NOW - 3600 * SECOND),
            ("1.5h", NOW - 5400 * SECOND),
            ("7d", NOW - 7 * 86400 * SECOND),
            ("30", NOW - 30 * SECOND),
            ("2024-05-01T11:00:00Z", NOW - 3600 * SECOND),
            ("2024-05-01T13:00:00+02:00", NOW - 3600 * SECOND),
            ("2024-05-01T11:30", NOW - 1800 * SECOND),  # no zone: UTC
            ("2024-05-01", NOW - 12 * 3600 * SECOND),
            ("2024-05-01T11:59:59.250Z", NOW - 750_000_000),
        ],
    )
    def test_accepted_forms(self, text: str, expected: int) -> None:
        """Durations count back from now; ISO-8601 times are absolute, UTC when no zone is given."""
        assert parse_time(text, NOW) == expected

    @pytest.mark.parametrize("text", ["yesterday", "", "1w", "-5m", "2024-02-30", "12:00"])
    def test_rejected_forms(self, text: str) -> None:
        """Anything else is refused with the accepted forms in the message."""
        with pytest.raises(ValueError, match="expected a duration ago .* or an ISO-8601 time"):
            parse_time(text, NOW)


def _event(**fields: object) -> ErrorEvent:
    base = dict(id="1" * 32, ts=NOW, service="api", host="h", pid=1, trace_id="ab" * 16, span_id="c" * 16)
    return ErrorEvent(**{**base, **fields})  # type: ignore[arg-type]


class TestFormatting:
    """One readable line per event."""

    def test_multi_line_error_stays_on_one_line(self) -> None:
        """Messages with newlines, and stacks, never break the one-line form; ids and the error come first."""
        event = _event(message="first line\nsecond line", error_type="ValueError", stack="Traceback\n  ...", request_id="r 1")
        line = click.unstyle(event_line(StoredEvent("errors", "1-0", event)))
        assert "\n" not in line
        assert line.startswith("2024-05-01T12:00:00.000Z ERROR api")
        assert 'req="r 1"' in line and "trace=abababab" in line
        assert "ValueError: first line second line" in line and "Traceback" not in line

    def test_values_that_need_quotes(self) -> None:
        """Empty and space-carrying strings are quoted so the line splits unambiguously."""
        token = TokenGenerated(
            id="1" * 32, ts=NOW, service="engine", host="h", pid=1, trace_id="ab" * 16, span_id="c" * 16,
            model="m", request_id="r", token="", index=0, attrs={"note": "two words", "n": 1.5},
        )  # fmt: skip
        line = click.unstyle(event_line(StoredEvent("live", None, token)))
        assert 'token="" index=0' in line and 'note="two words" n=1.5' in line

    def test_durations(self) -> None:
        """Relative offsets and ages read naturally at every scale."""
        assert [format_relative(n) for n in (0, 12_300_000, 2_512_000_000, 182_100_000_000)] == [
            "+0.0ms", "+12.3ms", "+2.512s", "+3m02.1s",
        ]  # fmt: skip
        assert [format_age(s) for s in (0.25, 12.5, 245, 3 * 3600 + 720, 2 * 86400 + 4 * 3600)] == [
            "250ms", "12.5s", "4m05s", "3h12m", "2d04h",
        ]  # fmt: skip


def _line(ts: int, event_id: str, stream_id: str = "1-0", **extra: object) -> str:
    event = {
        "stream_id": stream_id, "type": "job.created", "id": event_id, "ts": ts, "service": "svc", "host": "h",
        "pid": 1, "trace_id": "ab" * 16, "span_id": "c" * 16, **extra,
    }  # fmt: skip
    return json.dumps(event)


class TestArchiveReader:
    """Reading the collector's JSONL files."""

    def test_days_parts_and_bad_lines(self, tmp_path: Path) -> None:
        """Files are read day by day and part by part; torn or foreign lines are counted, not fatal."""
        day = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
        ts = int(day.timestamp()) * SECOND
        (tmp_path / "events-2024-05-01.jsonl").write_text(
            _line(ts + 1, "a" * 32, "5-0") + "\n" + "not json\n" + f'{{"ts": {ts + 5}}}\n\n'
        )
        (tmp_path / "events-2024-05-01.1.jsonl").write_text(_line(ts + 2, "b" * 32) + "\n" + _line(ts + 3, "c" * 32)[:40])
        (tmp_path / "errors-2024-05-01.jsonl").write_text(_line(ts + 4, "d" * 32, severity="error") + "\n")
        (tmp_path / "events-2024-04-20.jsonl").write_text(_line(ts - 11 * 86400 * SECOND, "e" * 32) + "\n")
        (tmp_path / "alerts-2024-05-01.jsonl").write_text("{}\n")
        (tmp_path / "events-2024-13-01.jsonl").write_text("{}\n")
        stats = ArchiveStats()
        found = list(read_archive(tmp_path, since_ns=ts - 86400 * SECOND, stats=stats))
        assert [(row.stream, row.event.id[0], row.stream_id) for row in found] == [
            ("errors", "d", "1-0"), ("events", "a", "5-0"), ("events", "b", "1-0"),
        ]  # fmt: skip
        assert stats.files == 3 and stats.bad_lines == 3

    def test_file_window_is_widened_by_a_day(self, tmp_path: Path) -> None:
        """An event delivered after midnight sits in the next day's file; that file is still read."""
        for name in ("events-2024-04-29.jsonl", "events-2024-04-30.jsonl", "events-2024-05-02.jsonl", "events-2024-05-03.jsonl"):
            (tmp_path / name).write_text("")
        since = int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp()) * SECOND
        names = [f.path.name for f in archive_files(tmp_path, since_ns=since, until_ns=since + 3600 * SECOND)]
        assert names == ["events-2024-04-30.jsonl", "events-2024-05-02.jsonl"]
