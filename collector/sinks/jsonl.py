"""JSONL sink: one JSON object per line, daily files, size rotation, retention.

Layout under the directory, dates in UTC at write time::

    events-2024-05-01.jsonl      first segment of the day
    events-2024-05-01.1.jsonl    next segment once the first reached max_bytes
    events-2024-05-01.2.jsonl    ...

Segments are never renamed: a new one is opened when the current one is full,
so a reader following a file is never surprised by a rename, and a restart
continues in the newest segment of the day. :func:`segment_files` lists them
in write order.

Every :meth:`RotatingJsonlWriter.write_block` (and ``write_lines``) call ends
with flush + fsync (that is what lets the daemon XACK), and a failed write is
cut back so the retry of the same batch does not append after a torn line.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import msgspec
import structlog

from collector.records import Record
from collector.sinks import SinkUnavailable

__all__ = ["RotatingJsonlWriter", "JsonlSink", "encode_lines", "segment_files"]

log = structlog.get_logger("collector.sinks.jsonl")

FILE_MODE = 0o640
DIR_MODE = 0o750
DEFAULT_RETENTION_CHECK_INTERVAL = 3600.0

Clock = Callable[[], float]

_DATE = r"(\d{4}-\d{2}-\d{2})"


class Segment(NamedTuple):
    date: str
    index: int
    path: Path


def _segment_pattern(stem: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(stem)}-{_DATE}(?:\.(\d+))?\.jsonl$")


def _segments(directory: Path, stem: str) -> list[Segment]:
    pattern = _segment_pattern(stem)
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = pattern.match(name)
        if match:
            found.append(Segment(match[1], int(match[2] or 0), directory / name))
    return sorted(found)


def segment_files(directory: str | os.PathLike[str], stem: str) -> list[Path]:
    """The ``stem`` files in ``directory`` in the order they were written."""
    return [segment.path for segment in _segments(Path(directory), stem)]


def _segment_path(directory: Path, stem: str, date: str, index: int) -> Path:
    suffix = f".{index}" if index else ""
    return directory / f"{stem}-{date}{suffix}.jsonl"


def _utc_date(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%Y-%m-%d")


class RotatingJsonlWriter:
    """Append lines to ``<stem>-YYYY-MM-DD[.N].jsonl`` with fsync per call.

    ``max_bytes`` caps a segment (a single longer line still gets written, alone
    in its segment); ``retention_days`` keeps the files of today and of that many
    previous days (0 or ``None`` keeps everything). Retention runs on the first write, when
    the day changes and every ``retention_check_interval`` seconds, not on every
    write. Thread-safe; ``clock`` (unix seconds) is injectable.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        stem: str,
        *,
        max_bytes: int,
        retention_days: int | None,
        clock: Clock = time.time,
        retention_check_interval: float = DEFAULT_RETENTION_CHECK_INTERVAL,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", stem):
            raise ValueError(f"stem: must be letters, digits, '_', '.' or '-', got {stem!r}")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: must be > 0, got {max_bytes}")
        if retention_days is not None and retention_days < 0:
            raise ValueError(f"retention_days: must be >= 0 (0 keeps every file), got {retention_days}")
        if retention_check_interval <= 0:
            raise ValueError(f"retention_check_interval: must be > 0, got {retention_check_interval}")
        self.directory = Path(directory)
        self.stem = stem
        self.max_bytes = max_bytes
        self.retention_days = retention_days
        self.retention_check_interval = retention_check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._date: str | None = None
        self._index = 0
        self._next_retention_check = float("-inf")
        self._closed = False
        self.removed_files = 0
        self.retention_failures = 0

    @property
    def current_path(self) -> Path | None:
        """The segment that the last write went to."""
        return self._path

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Append ``lines`` (each one JSON document, without its newline) durably.

        Raises ``OSError`` (disk full, permission denied, ...) after cutting a
        partial write back, so that the retry does not append to a torn line,
        and ``ValueError`` for a line with a newline in it, which would break
        the one-object-per-line framing.
        """
        if not lines:
            return
        for line in lines:
            if b"\n" in line:
                raise ValueError("a JSONL line must not contain a newline")
        self.write_block(b"\n".join(lines) + b"\n")

    def write_block(self, block: bytes | bytearray) -> None:
        """Append ``block``, whole lines each ending with its newline, durably.

        The same contract as :meth:`write_lines` for lines already framed (a
        batch encoded into one buffer): a segment is cut only between lines.
        """
        if not block:
            return
        if block[-1] != 0x0A:
            raise ValueError("a JSONL block must end with a newline")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.stem} writer is closed")
            now = self._clock()
            self._open_for(_utc_date(now))
            if now >= self._next_retention_check:
                self._apply_retention(now)
            fd = self._ensure_current()
            size = os.fstat(fd).st_size
            view = memoryview(block)
            start, end = 0, len(block)
            rotated = False  # a segment just rotated to takes at least one line, however full
            while True:
                room = self.max_bytes - size
                if end - start <= room:
                    cut = end
                else:  # the lines that still fit; none when even the first one does not
                    cut = block.rfind(b"\n", start, start + max(room, 0)) + 1
                    if cut <= start and (rotated or not size):
                        cut = block.index(b"\n", start) + 1
                if cut > start:
                    self._append(fd, view[start:cut])
                    size += cut - start
                    start = cut
                if start == end:
                    return
                fd = self._next_segment()
                size = os.fstat(fd).st_size
                rotated = True

    def _append(self, fd: int, data: memoryview) -> None:
        start = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError:
            self._cut_back(fd, start, written)
            raise

    @staticmethod
    def _cut_back(fd: int, start: int, written: int) -> None:
        # Only when nobody else appended meanwhile (another process sharing the dir).
        try:
            if written and os.fstat(fd).st_size == start + written:
                os.ftruncate(fd, start)
        except OSError:
            pass  # the original error is the one worth reporting

    def _open_for(self, date: str) -> None:
        if date == self._date:
            return
        self._close_fd()
        existing = [s.index for s in _segments(self.directory, self.stem) if s.date == date]
        self._index = max(existing, default=0)
        self._date = date
        self._next_retention_check = float("-inf")  # a new day: old files may have expired

    def _ensure_current(self) -> int:
        """The open fd of the current segment, reopened if the file vanished under us."""
        assert self._date is not None
        path = _segment_path(self.directory, self.stem, self._date, self._index)
        if self._fd is not None and self._path == path:
            try:
                if os.stat(path).st_ino == os.fstat(self._fd).st_ino:
                    return self._fd
            except FileNotFoundError:
                pass  # deleted or moved away by an operator: writing on would lose data
            self._close_fd()
        self._fd = self._open(path)
        self._path = path
        return self._fd

    def _next_segment(self) -> int:
        self._close_fd()
        self._index += 1
        return self._ensure_current()

    def _open(self, path: Path) -> int:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            return os.open(path, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # the umask must not decide who may read telemetry
            self._fsync_directory()
        except OSError:
            os.close(fd)
            raise
        return fd

    def _fsync_directory(self) -> None:
        dir_fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _apply_retention(self, now: float) -> None:
        self._next_retention_check = now + self.retention_check_interval
        if not self.retention_days:
            return
        oldest_kept = _utc_date(now - self.retention_days * 86400)
        for segment in _segments(self.directory, self.stem):
            if segment.date >= oldest_kept:
                continue
            try:
                if stat.S_ISREG(os.lstat(segment.path).st_mode):
                    segment.path.unlink()
                    self.removed_files += 1
            except FileNotFoundError:
                continue  # another collector sharing the directory got there first
            except OSError as exc:
                # An old file we may not delete must not stop new data from being written.
                self.retention_failures += 1
                log.warning("jsonl_retention_failed", path=str(segment.path), error=str(exc))

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close_fd()


_json = msgspec.json.Encoder()
_encode_into = _json.encode_into
_COMMA = ord(",")


def encode_lines(batch: Iterable[Record]) -> dict[str, bytearray]:
    """The JSONL lines of ``batch`` per stream, each event one object with ``stream_id`` first.

    Every line is encoded straight into its stream's buffer: ``{"stream_id":``,
    the id, then the event's own object with its opening brace overwritten by
    the comma that joins the two. The writer then takes each buffer whole. The
    framing holds because msgspec escapes control characters inside strings:
    the newline after each object is the only one in its line.
    """
    events, errors = bytearray(), bytearray()
    for record in batch:
        out = errors if record.stream == "errors" else events
        out += b'{"stream_id":'
        _encode_into(record.stream_id, out, -1)
        brace = len(out)
        _encode_into(record.event, out, -1)
        out[brace] = _COMMA
        out += b"\n"
    return {"events": events, "errors": errors}


class JsonlSink:
    """``events-…`` and ``errors-…`` files under ``directory``; durable on return."""

    name = "jsonl"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        retention_days: int | None,
        clock: Clock = time.time,
    ) -> None:
        self.directory = Path(directory)
        self._writers = {
            stream: RotatingJsonlWriter(
                directory, stream, max_bytes=max_bytes, retention_days=retention_days, clock=clock
            )
            for stream in ("events", "errors")
        }

    def write(self, batch: Sequence[Record]) -> None:
        for stream, block in encode_lines(batch).items():
            try:
                self._writers[stream].write_block(block)
            except OSError as exc:
                raise SinkUnavailable(
                    f"jsonl: writing {stream} under {self.directory} failed: "
                    f"{exc.strerror or exc}"
                ) from exc

    def flush(self) -> None:
        """Nothing is buffered: every write is fsynced before it returns."""

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
