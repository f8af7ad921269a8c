"""Reading the JSONL archive the collector writes (``logs/events-YYYY-MM-DD.jsonl``).

Each line is one event's JSON plus the ``stream_id`` it had in Redis. Files are
named by UTC day, with size rotation adding a part number
(``events-2024-05-01.3.jsonl``). The operator tools read them to look further
back than the capped Redis streams reach.

Lines that do not parse (a torn last line after a crash, a hand edit) are
counted and skipped, never fatal: one bad line must not hide a day of events.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Iterable, Iterator, Literal, NamedTuple, Optional

import msgspec

from emitters.events import DecodeError, Event, decode_json

__all__ = ["ArchiveFile", "ArchivedEvent", "ArchiveStats", "archive_files", "read_archive"]

ArchiveStem = Literal["events", "errors"]
ARCHIVE_STEMS: tuple[ArchiveStem, ...] = ("events", "errors")

_FILE_RE = re.compile(r"^(events|errors)-(\d{4}-\d{2}-\d{2})(?:\.(\d+))?\.jsonl$")
_DAY_NS = 86_400 * 10**9


class ArchiveFile(NamedTuple):
    path: Path
    stream: ArchiveStem
    day: dt.date
    part: int


class ArchivedEvent(NamedTuple):
    stream: ArchiveStem
    stream_id: Optional[str]
    event: Event


class _LineHead(msgspec.Struct):
    """The few fields read before deciding whether a line is worth a full decode."""

    ts: int
    stream_id: Optional[str] = None


_head_decoder = msgspec.json.Decoder(_LineHead)


class ArchiveStats:
    """What a read saw: files opened, and lines skipped because they did not parse."""

    def __init__(self) -> None:
        self.files = 0
        self.bad_lines = 0


def _day_of(ts_ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ns / 1e9, tz=dt.timezone.utc).date()


def archive_files(
    directory: str | Path,
    *,
    since_ns: Optional[int] = None,
    until_ns: Optional[int] = None,
    streams: Iterable[ArchiveStem] = ARCHIVE_STEMS,
) -> list[ArchiveFile]:
    """Archive files that may hold events in ``[since_ns, until_ns]``, oldest first.

    A file is named after the day it was *written*; an event can land in the
    next day's file when it was delivered late, so the window is widened by a
    day on each side and the caller filters on the event's own timestamp.
    """
    wanted = set(streams)
    first = _day_of(since_ns - _DAY_NS) if since_ns is not None else None
    last = _day_of(until_ns + _DAY_NS) if until_ns is not None else None
    found: list[ArchiveFile] = []
    for path in Path(directory).iterdir():
        match = _FILE_RE.match(path.name)
        if match is None or match.group(1) not in wanted or not path.is_file():
            continue
        try:
            day = dt.date.fromisoformat(match.group(2))
        except ValueError:  # a name like events-2024-13-45.jsonl
            continue
        if (first is not None and day < first) or (last is not None and day > last):
            continue
        found.append(ArchiveFile(path, match.group(1), day, int(match.group(3) or 0)))  # type: ignore[arg-type]
    found.sort(key=lambda f: (f.day, f.part, f.stream))
    return found


def read_archive(
    directory: str | Path,
    *,
    since_ns: Optional[int] = None,
    until_ns: Optional[int] = None,
    streams: Iterable[ArchiveStem] = ARCHIVE_STEMS,
    contains: Optional[bytes] = None,
    stats: Optional[ArchiveStats] = None,
) -> Iterator[ArchivedEvent]:
    """Events from the archive whose ``ts`` is within the bounds (inclusive).

    ``contains`` skips lines without that byte string before decoding them, a
    cheap pre-filter when looking for one trace or request id in days of logs.
    """
    stats = stats if stats is not None else ArchiveStats()
    for file in archive_files(directory, since_ns=since_ns, until_ns=until_ns, streams=streams):
        stats.files += 1
        with file.path.open("rb") as handle:
            for line in handle:
                if contains is not None and contains not in line:
                    continue
                if not line.strip():
                    continue
                try:
                    head = _head_decoder.decode(line)
                    if (since_ns is not None and head.ts < since_ns) or (until_ns is not None and head.ts > until_ns):
                        continue
                    event = decode_json(line)
                except DecodeError:
                    stats.bad_lines += 1
                    continue
                yield ArchivedEvent(file.stream, head.stream_id, event)
