"""Alert delivery: the daemon log at once, every other channel on its own worker.

The ``{prefix}:alerts`` stream entry is written by the state transition
itself (see :mod:`collector.alerts.state`); the channels (JSONL, OTLP,
webhook, see :mod:`collector.alerts.channels`) go through here. The log line
is written at once; every other channel has a worker thread with a bounded
queue (sentry-python's transport worker): publishing never blocks, a full
queue drops and counts, a failed send is retried with capped, jittered
backoff (honouring ``Retry-After``) and then dropped and counted. A dead
webhook therefore delays nothing but its own queue.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import Counter
from typing import Any, Mapping, Optional, Protocol, Sequence

from collector.alerts.records import AlertRecord

__all__ = ["DeliveryFailed", "Channel", "ChannelWorker", "Delivery", "log_alert"]


class DeliveryFailed(Exception):
    """A channel could not deliver; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(Protocol):
    """Where alert records go besides the stream."""

    name: str

    def send(self, records: Sequence[AlertRecord]) -> None:
        """Deliver ``records`` or raise :class:`DeliveryFailed`."""

    def close(self) -> None:
        """Release resources; not used afterwards."""


def log_alert(log: Any, record: AlertRecord) -> None:
    """Firing at warning (error for a critical alert), resolved at info."""
    fields = {
        "rule": record.rule,
        "kind": record.kind,
        "status": record.status,
        "labels": record.labels,
        "value": record.value,
        "threshold": record.threshold,
        "starts_at": record.starts_at,
        "fingerprint": record.fingerprint,
    }
    if record.status == "resolved":
        log.info("alert_resolved", summary=record.summary, ends_at=record.ends_at, **fields)
    elif record.labels.get("severity") == "critical":
        log.error("alert_firing", summary=record.summary, **fields)
    else:
        log.warning("alert_firing", summary=record.summary, **fields)



# --- the worker --------------------------------------------------------------------------------


_STOP = object()


class ChannelWorker:
    """One channel's thread and bounded queue; losses are counted by reason.

    Reasons: ``queue_full`` (published faster than delivered), ``failed``
    (retries used up), ``rejected`` (the receiver refused for good) and
    ``shutdown`` (still queued or in retry when :meth:`close`'s deadline came).
    """

    def __init__(
        self,
        channel: Channel,
        *,
        queue_size: int,
        retries: int,
        log: Any,
        max_batch: int = 100,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.channel = channel
        self.retries = retries
        self.max_batch = max_batch
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sent = 0
        self.attempts = 0
        self.lost: Counter[str] = Counter()
        self._log = log
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._closing = threading.Event()  # cuts backoff waits short
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name=f"alerts-{channel.name}", daemon=True)
        self._thread.start()

    def put(self, record: AlertRecord) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.lost["queue_full"] += 1

    def queued(self) -> int:
        return self._queue.qsize()

    def _take(self) -> Optional[list[AlertRecord]]:
        """The next batch, or None once told to stop and nothing is left."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put_nowait(_STOP)  # seen again after this batch
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if time.monotonic() > self._deadline:
                self.lost["shutdown"] += len(batch)
                continue
            self._deliver(batch)

    def _deliver(self, batch: list[AlertRecord]) -> None:
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                self.channel.send(batch)
            except DeliveryFailed as exc:
                if not exc.retryable:
                    self.lost["rejected"] += len(batch)
                    self._log.error("alert_delivery_rejected", channel=self.channel.name, alerts=len(batch), error=str(exc))
                    return
                final = attempt == self.retries
                self._log.warning(
                    "alert_delivery_failed",
                    channel=self.channel.name,
                    alerts=len(batch),
                    attempt=attempt + 1,
                    error=str(exc),
                    retrying=not final and not self._closing.is_set(),
                )
                if final:
                    self.lost["failed"] += len(batch)
                    return
                if self._closing.is_set():
                    self.lost["shutdown"] += len(batch)
                    return
                delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                if self._closing.wait(delay):
                    self.lost["shutdown"] += len(batch)
                    return
            else:
                self.sent += len(batch)
                return

    def close(self, timeout: float) -> None:
        """Deliver what is queued (one attempt each) until ``timeout``, then count the rest as lost."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, self._deadline - time.monotonic()))
        if self._thread.is_alive():
            self.lost["shutdown"] += self._queue.qsize()
        self.channel.close()

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "queued": self.queued(), "attempts": self.attempts, "lost": dict(self.lost)}


class Delivery:
    """Logs each notification and hands it to every channel's worker."""

    def __init__(
        self,
        channels: Sequence[Channel],
        *,
        log: Any,
        queue_size: int = 1000,
        retries: Optional[Mapping[str, int]] = None,
    ) -> None:
        self._log = log
        self.workers = [
            ChannelWorker(channel, queue_size=queue_size, retries=(retries or {}).get(channel.name, 5), log=log)
            for channel in channels
        ]

    def publish(self, records: Sequence[AlertRecord]) -> None:
        """Never blocks: the log line now, the channels in their own time."""
        for record in records:
            log_alert(self._log, record)
            for worker in self.workers:
                worker.put(record)

    def close(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.close(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, dict[str, Any]]:
        return {worker.channel.name: worker.stats() for worker in self.workers}
