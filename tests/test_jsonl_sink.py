"""JSONL sink: daily and size rotation, retention, permissions, durability, failures."""

from __future__ import annotations

import datetime as dt
import errno
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.records import Record
from collector.sinks import Sink, SinkUnavailable
from collector.sinks import jsonl
from collector.sinks.jsonl import JsonlSink, RotatingJsonlWriter, encode_lines, segment_files
from emitters import events
from tests.support.event_payloads import payloads


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


class FakeClock:
    """A settable clock in unix seconds."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def envelope(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "id": secrets.token_hex(16),
        "ts": 1_700_000_000_000_000_000,
        "service": "engine",
        "host": "gpu-1",
        "pid": 4242,
        "trace_id": secrets.token_hex(16),
        "span_id": secrets.token_hex(8),
    }
    fields.update(overrides)
    return fields


def sample_events() -> list[events.Event]:
    return [
        events.ModelLoaded(**envelope(), model="tiny", model_path="/m/tiny", quantization="int4", load_ms=12.5),
        events.GenerationCompleted(
            **envelope(request_id="r-1"),
            model="tiny",
            prompt_tokens=7,
            generation_tokens=32,
            duration_ms=110.0,
            ttft_ms=9.5,
        ),
        events.TokenGenerated(**envelope(), model="tiny", request_id="r-1", token='say "hi"\n', index=0),
        events.CustomEvent(**envelope(attrs={"queue": "gpu", "n": 3, "ok": True}), type="job.created"),
        events.ErrorEvent(**envelope(), message="boom: ñ ✓", error_type="RuntimeError", fingerprint="abcdef12"),
    ]


def record_for(event: events.Event, seq: int) -> Record:
    stream = "errors" if events.is_error(event) else "events"
    return Record(stream=stream, stream_id=f"1700000000000-{seq}", event=event, raw=events.encode(event))


def read_lines(paths: list[Path]) -> list[bytes]:
    return [line for path in paths for line in path.read_bytes().splitlines()]


@pytest.fixture
def fail_writes_under(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, int], None]]:
    """Make os.write fail with ``errno`` for files under a directory (after a partial write)."""
    real_write = os.write

    def install(directory: Path, error: int) -> None:
        def faulty_write(fd: int, data: bytes) -> int:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.startswith(str(directory)):
                if len(data) > 1:
                    return real_write(fd, bytes(data[: len(data) // 2]))  # a torn write first
                raise OSError(error, os.strerror(error))
            return real_write(fd, data)

        monkeypatch.setattr(jsonl.os, "write", faulty_write)

    yield install
    monkeypatch.undo()


class TestRotatingJsonlWriter:
    def test_appends_lines_to_daily_file_named_by_utc_date(self, tmp_path: Path) -> None:
        """Lines land, newline-terminated and in order, in <stem>-YYYY-MM-DD.jsonl for the UTC date."""
        clock = FakeClock(utc("2024-05-01T23:30:00"))
        writer = RotatingJsonlWriter(tmp_path / "logs", "events", max_bytes=1 << 20, retention_days=7, clock=clock)
        writer.write_lines([b'{"a":1}', b'{"a":2}'])
        writer.write_lines([b'{"a":3}'])
        writer.close()
        path = tmp_path / "logs" / "events-2024-05-01.jsonl"
        assert path.read_bytes() == b'{"a":1}\n{"a":2}\n{"a":3}\n'

    def test_new_file_when_the_utc_day_changes(self, tmp_path: Path) -> None:
        """Crossing midnight UTC starts the next day's file; the old one is left complete."""
        clock = FakeClock(utc("2024-05-01T23:59:59"))
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=1 << 20, retention_days=7, clock=clock)
        writer.write_lines([b'{"day":1}'])
        clock.now = utc("2024-05-02T00:00:01")
        writer.write_lines([b'{"day":2}'])
        writer.close()
        assert (tmp_path / "events-2024-05-01.jsonl").read_bytes() == b'{"day":1}\n'
        assert (tmp_path / "events-2024-05-02.jsonl").read_bytes() == b'{"day":2}\n'

    def test_rotates_by_size_without_splitting_lines(self, tmp_path: Path) -> None:
        """Segments .1, .2, ... never exceed max_bytes, and together hold every line in order."""
        clock = FakeClock(utc("2024-05-01T12:00:00"))
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=100, retention_days=0, clock=clock)
        lines = [b'{"n":%03d,"pad":"xxxxxxxxxxxx"}' % n for n in range(20)]  # 29 bytes + newline
        writer.write_lines(lines[:7])
        writer.write_lines(lines[7:])
        writer.close()
        files = segment_files(tmp_path, "events")
        assert [p.name for p in files[:3]] == [
            "events-2024-05-01.jsonl",
            "events-2024-05-01.1.jsonl",
            "events-2024-05-01.2.jsonl",
        ]
        assert len(files) == 7  # three 30-byte lines per 100-byte segment
        assert all(p.stat().st_size <= 100 for p in files)
        assert read_lines(files) == lines

    def test_a_line_longer_than_max_bytes_is_written_alone(self, tmp_path: Path) -> None:
        """An oversized line is not dropped or split: it gets a segment to itself."""
        clock = FakeClock(utc("2024-05-01T12:00:00"))
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=50, retention_days=0, clock=clock)
        big = b'{"blob":"' + b"x" * 200 + b'"}'
        writer.write_lines([b'{"a":1}', big, b'{"a":2}'])
        writer.close()
        files = segment_files(tmp_path, "events")
        assert [p.read_bytes() for p in files] == [b'{"a":1}\n', big + b"\n", b'{"a":2}\n']

    def test_a_restarted_writer_continues_in_the_newest_segment(self, tmp_path: Path) -> None:
        """After a restart the writer appends to the day's last segment, not to the first one."""
        clock = FakeClock(utc("2024-05-01T12:00:00"))
        first = RotatingJsonlWriter(tmp_path, "events", max_bytes=40, retention_days=0, clock=clock)
        first.write_lines([b'{"n":"aaaaaaaaaaaaaaaaaaaaaaaaaaaa"}'] * 2)
        first.close()
        assert first.current_path is not None and first.current_path.name == "events-2024-05-01.1.jsonl"
        second = RotatingJsonlWriter(tmp_path, "events", max_bytes=1 << 20, retention_days=0, clock=clock)
        second.write_lines([b'{"n":"after restart"}'])
        second.close()
        assert second.current_path == first.current_path
        assert read_lines(segment_files(tmp_path, "events"))[-1] == b'{"n":"after restart"}'

    @pytest.mark.parametrize("umask", [0o077, 0o000, 0o022])
    def test_files_are_created_0640_whatever_the_umask(self, tmp_path: Path, umask: int) -> None:
        """New segments are rw-r----- even under a restrictive or permissive umask."""
        previous = os.umask(umask)
        try:
            writer = RotatingJsonlWriter(tmp_path / "d", "events", max_bytes=10, retention_days=0)
            writer.write_lines([b'{"a":1}', b'{"a":2}'])  # two segments
            writer.close()
        finally:
            os.umask(previous)
        files = segment_files(tmp_path / "d", "events")
        assert len(files) == 2
        assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}

    def test_retention_deletes_only_this_stems_expired_files(self, tmp_path: Path) -> None:
        """Files dated before today minus retention_days go; newer ones and other files stay."""
        for name in [
            "events-2024-04-20.jsonl",
            "events-2024-04-20.1.jsonl",
            "events-2024-04-23.jsonl",  # exactly 8 days old: beyond 7
            "events-2024-04-24.jsonl",  # 7 days old: kept
            "errors-2024-04-01.jsonl",  # another stem
            "events-notes.txt",
        ]:
            (tmp_path / name).write_text("{}\n")
        clock = FakeClock(utc("2024-05-01T08:00:00"))
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=1 << 20, retention_days=7, clock=clock)
        writer.write_lines([b"{}"])
        writer.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "errors-2024-04-01.jsonl",
            "events-2024-04-24.jsonl",
            "events-2024-05-01.jsonl",
            "events-notes.txt",
        ]
        assert writer.removed_files == 3

    @pytest.mark.parametrize("forever", [0, None])
    def test_retention_zero_or_none_keeps_every_file(self, tmp_path: Path, forever: int | None) -> None:
        """retention_days=0 (the config's "forever") or None deletes nothing, however old."""
        ancient = tmp_path / "events-2001-01-01.jsonl"
        ancient.write_text("{}\n")
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=1 << 20, retention_days=forever)
        writer.write_lines([b"{}"])
        writer.close()
        assert ancient.exists() and writer.removed_files == 0

    def test_retention_is_checked_periodically_not_on_every_write(self, tmp_path: Path) -> None:
        """An expired file appearing between checks survives until the next interval or day change."""
        clock = FakeClock(utc("2024-05-01T08:00:00"))
        writer = RotatingJsonlWriter(
            tmp_path, "events", max_bytes=1 << 20, retention_days=1, clock=clock, retention_check_interval=600
        )
        writer.write_lines([b"{}"])
        expired = tmp_path / "events-2024-04-01.jsonl"
        expired.write_text("{}\n")
        clock.now += 599
        writer.write_lines([b"{}"])
        assert expired.exists()
        clock.now += 1
        writer.write_lines([b"{}"])
        assert not expired.exists()
        expired.write_text("{}\n")
        clock.now = utc("2024-05-02T00:00:00")  # day change, well inside the interval
        writer.write_lines([b"{}"])
        writer.close()
        assert not expired.exists()

    def test_a_file_removed_under_the_writer_is_recreated(self, tmp_path: Path) -> None:
        """Deleting the current file (an operator cleaning up) does not send writes into the void."""
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=1 << 20, retention_days=0)
        writer.write_lines([b'{"a":1}'])
        assert writer.current_path is not None
        writer.current_path.unlink()
        writer.write_lines([b'{"a":2}'])
        writer.close()
        assert writer.current_path.read_bytes() == b'{"a":2}\n'

    def test_a_failed_write_is_cut_back_so_the_retry_leaves_no_torn_line(
        self, tmp_path: Path, fail_writes_under: Callable[[Path, int], None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENOSPC after a partial write raises, truncates the partial data, and a retry writes cleanly."""
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=1 << 20, retention_days=0)
        writer.write_lines([b'{"a":1}'])
        fail_writes_under(tmp_path, errno.ENOSPC)
        with pytest.raises(OSError) as failure:
            writer.write_lines([b'{"a":2,"pad":"' + b"y" * 64 + b'"}'])
        assert failure.value.errno == errno.ENOSPC
        monkeypatch.undo()
        writer.write_lines([b'{"a":3}'])
        writer.close()
        assert writer.current_path is not None
        assert writer.current_path.read_bytes() == b'{"a":1}\n{"a":3}\n'

    def test_rejects_a_line_with_a_newline(self, tmp_path: Path) -> None:
        """A newline inside a line would break the framing; nothing is written."""
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=100, retention_days=0)
        with pytest.raises(ValueError, match="newline"):
            writer.write_lines([b'{"a":1}', b'{"a":\n2}'])
        writer.close()
        assert segment_files(tmp_path, "events") == []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.lists(st.integers(1, 70), max_size=12), min_size=1, max_size=6), st.integers(8, 160))
    def test_blocks_rotate_exactly_like_lines_one_by_one(self, batches: list[list[int]], max_bytes: int) -> None:
        """A framed block lands in the same segments, cut at the same lines, as the per-line rule:
        rotate before a line that does not fit a non-empty segment."""
        clock = FakeClock(utc("2024-05-01T12:00:00"))
        expected: list[list[bytes]] = [[]]
        size, counter = 0, 0
        with tempfile.TemporaryDirectory() as directory:
            writer = RotatingJsonlWriter(directory, "events", max_bytes=max_bytes, retention_days=0, clock=clock)
            for lengths in batches:
                lines = []
                for length in lengths:
                    line = b"%d" % counter + b"x" * length
                    counter += 1
                    if size and size + len(line) + 1 > max_bytes:
                        expected.append([])
                        size = 0
                    expected[-1].append(line)
                    size += len(line) + 1
                    lines.append(line)
                writer.write_block(b"".join(line + b"\n" for line in lines))
            writer.close()
            got = [path.read_bytes().splitlines() for path in segment_files(directory, "events")]
        assert got == (expected if counter else [])

    def test_a_segment_rotated_to_takes_a_line_even_when_another_writer_filled_it(self, tmp_path: Path) -> None:
        """Two collectors sharing the directory: the one rotating into a segment the other has
        partly filled still puts its next line there, then rotates again for the rest."""
        clock = FakeClock(utc("2024-05-01T12:00:00"))
        first = RotatingJsonlWriter(tmp_path, "events", max_bytes=20, retention_days=0, clock=clock)
        first.write_block(b"a" * 9 + b"\n")
        second = RotatingJsonlWriter(tmp_path, "events", max_bytes=20, retention_days=0, clock=clock)
        second.write_block(b"b" * 9 + b"\n" + b"c" * 9 + b"\n")  # fills the first segment, opens .1
        first.write_block(b"d" * 14 + b"\n" + b"e" * 2 + b"\n")
        first.close()
        second.close()
        assert [path.read_bytes().splitlines() for path in segment_files(tmp_path, "events")] == [
            [b"a" * 9, b"b" * 9],
            [b"c" * 9, b"d" * 14],
            [b"e" * 2],
        ]

    def test_rejects_a_block_without_its_final_newline(self, tmp_path: Path) -> None:
        """A block is whole lines: one cut short would run into the next batch's first line."""
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=100, retention_days=0)
        with pytest.raises(ValueError, match="newline"):
            writer.write_block(b'{"a":1}\n{"a":2}')
        writer.close()
        assert segment_files(tmp_path, "events") == []

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"stem": "../evil", "max_bytes": 1, "retention_days": 1}, "stem"),
            ({"stem": "events", "max_bytes": 0, "retention_days": 1}, "max_bytes: must be > 0"),
            ({"stem": "events", "max_bytes": 1, "retention_days": -1}, "retention_days: must be >= 0"),
        ],
    )
    def test_bad_settings_are_rejected_naming_the_parameter(
        self, tmp_path: Path, kwargs: dict[str, object], message: str
    ) -> None:
        """Construction validates its arguments with a message naming the bad one."""
        stem = kwargs.pop("stem")
        with pytest.raises(ValueError, match=message):
            RotatingJsonlWriter(tmp_path, stem, **kwargs)  # type: ignore[arg-type]

    def test_write_after_close_is_an_error(self, tmp_path: Path) -> None:
        """A closed writer refuses writes instead of silently reopening."""
        writer = RotatingJsonlWriter(tmp_path, "events", max_bytes=100, retention_days=0)
        writer.close()
        with pytest.raises(RuntimeError, match="closed"):
            writer.write_lines([b"{}"])


class TestJsonlSink:
    def test_implements_the_sink_protocol(self, tmp_path: Path) -> None:
        """The daemon can use it wherever a Sink is expected."""
        sink = JsonlSink(tmp_path, max_bytes=1 << 20, retention_days=7)
        assert isinstance(sink, Sink)
        assert sink.name == "jsonl"
        sink.close()

    def test_lines_round_trip_through_decode_json_with_stream_id(self, tmp_path: Path) -> None:
        """Each line decodes to the original event, carries stream_id first, and errors get their own file."""
        clock = FakeClock(utc("2024-05-01T10:00:00"))
        sink = JsonlSink(tmp_path, max_bytes=1 << 20, retention_days=7, clock=clock)
        records = [record_for(event, seq) for seq, event in enumerate(sample_events())]
        sink.write(records)
        sink.close()
        written = {
            stream: read_lines(segment_files(tmp_path, stream)) for stream in ("events", "errors")
        }
        assert len(written["events"]) == 4 and len(written["errors"]) == 1
        by_id = {record.event.id: record for record in records}
        for stream, lines in written.items():
            for line in lines:
                assert line.startswith(b'{"stream_id":"1700000000000-')
                event = events.decode_json(line)
                record = by_id[event.id]
                assert record.stream == stream
                assert event == record.event
                assert msgspec.json.decode(line)["stream_id"] == record.stream_id

    def test_encode_lines_matches_a_dict_encoding(self) -> None:
        """The spliced encoding is exactly the event's JSON object plus stream_id."""
        for seq, event in enumerate(sample_events()):
            record = record_for(event, seq)
            expected = {"stream_id": record.stream_id, **msgspec.to_builtins(event)}
            assert msgspec.json.decode(encode_lines([record])[record.stream]) == expected

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(payloads(), st.text(max_size=12) | st.from_regex(r"\A[0-9]{1,13}-[0-9]{1,4}\Z"), st.booleans()),
            max_size=12,
        )
    )
    def test_files_are_byte_identical_to_the_per_record_splice(self, drawn: list[tuple[bytes, str, bool]]) -> None:
        """The batch encoded into one buffer per stream writes exactly what encoding each record
        alone and splicing its stream_id in did: varied events (NaN too), both streams, replayed
        records, ids that need JSON escaping."""
        batch = []
        for payload, stream_id, replayed in drawn:
            try:
                event = events.decode(payload)
            except events.ValidationError:
                continue
            stream = "errors" if events.is_error(event) else "events"
            batch.append(Record(stream, stream_id, event, payload, ("otlp",) if replayed else ()))
        json = msgspec.json.Encoder()
        expected = {
            stream: b"".join(
                b'{"stream_id":' + json.encode(r.stream_id) + b"," + json.encode(r.event)[1:] + b"\n"
                for r in batch
                if r.stream == stream
            )
            for stream in ("events", "errors")
        }
        assert encode_lines(batch) == expected
        with tempfile.TemporaryDirectory() as directory:
            sink = JsonlSink(directory, max_bytes=1 << 20, retention_days=0)
            sink.write(batch)
            sink.close()
            for stream in ("events", "errors"):
                assert b"".join(path.read_bytes() for path in segment_files(directory, stream)) == expected[stream]

    def test_disk_full_raises_sink_unavailable_and_the_retry_succeeds(
        self, tmp_path: Path, fail_writes_under: Callable[[Path, int], None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENOSPC becomes SinkUnavailable (the daemon backs off); once space is back nothing is torn."""
        sink = JsonlSink(tmp_path, max_bytes=1 << 20, retention_days=7)
        records = [record_for(event, seq) for seq, event in enumerate(sample_events())]
        fail_writes_under(tmp_path, errno.ENOSPC)
        with pytest.raises(SinkUnavailable, match="No space left on device"):
            sink.write(records)
        monkeypatch.undo()
        sink.write(records)
        sink.close()
        lines = read_lines(segment_files(tmp_path, "events") + segment_files(tmp_path, "errors"))
        assert sorted(events.decode_json(line).id for line in lines) == sorted(r.event.id for r in records)

    def test_unusable_directory_raises_sink_unavailable(self, tmp_path: Path) -> None:
        """A JSONL dir path that is a regular file (a real misconfiguration) is reported, not swallowed."""
        blocker = tmp_path / "logs"
        blocker.write_text("not a directory")
        sink = JsonlSink(blocker, max_bytes=1 << 20, retention_days=7)
        with pytest.raises(SinkUnavailable, match="jsonl: writing events"):
            sink.write([record_for(sample_events()[0], 0)])
        sink.close()

    def test_empty_batch_creates_no_files(self, tmp_path: Path) -> None:
        """An idle collector does not litter the directory with empty files."""
        sink = JsonlSink(tmp_path / "logs", max_bytes=1 << 20, retention_days=7)
        sink.write([])
        sink.flush()
        sink.close()
        assert not (tmp_path / "logs").exists()
