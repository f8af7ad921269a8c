"""Sinks: where delivered events go. Every sink has the same small interface.

A sink's ``write(batch)`` returns only once the batch is *durably accepted*
(JSONL: written, flushed and fsynced; OTLP: exported with a success reply).
The daemon acks a batch in Redis only after every enabled sink accepted it.

Failures are reported with the exceptions below, never swallowed:

- :class:`SinkUnavailable`: transient (backend down, 503, timeout). The daemon
  stops reading (backpressure) and retries the same batch with capped,
  jittered backoff, honouring ``retry_after`` when the backend gave one.
- :class:`SinkRejected`: the backend permanently refused some records (e.g. a
  400). Those records go to the dead-letter stream with ``reason``; the rest of
  the batch counts as accepted.
- :class:`SinkAuthError`: credentials refused (401/403). The daemon pauses the
  pipeline with a clear error in the log and in health, keeps the entries
  pending and retries slowly instead of spinning.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from collector.records import Record

__all__ = ["Sink", "SinkError", "SinkUnavailable", "SinkRejected", "SinkAuthError", "Record"]


class SinkError(Exception):
    """Base of the failures a sink reports to the daemon."""


class SinkUnavailable(SinkError):
    """Transient failure: retry the same batch later."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkRejected(SinkError):
    """Permanent rejection of ``records``: dead-letter them with ``reason``."""

    def __init__(self, reason: str, records: Sequence[Record]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.records = list(records)


class SinkAuthError(SinkError):
    """The backend refused our credentials; retrying fast will not help."""


@runtime_checkable
class Sink(Protocol):
    """The interface every sink module implements."""

    name: str

    def write(self, batch: Sequence[Record]) -> None:
        """Durably accept ``batch`` or raise a :class:`SinkError`."""

    def flush(self) -> None:
        """Push out anything buffered (called on shutdown and periodically)."""

    def close(self) -> None:
        """Flush and release resources; the sink is not used afterwards."""
