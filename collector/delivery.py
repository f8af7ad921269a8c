"""Delivery: batches handed to every sink, a bounded number at once, acked in read order.

The loop submits each batch it reads; every sink writes on its own worker
thread (several for a sink whose writes may overlap, e.g. OTLP exports; one
for the JSONL files, whose lines stay in order). While sinks write, fsync or
wait on a backend, the loop reads and decodes the next batch. At most
``limit`` batches are in flight: read, not yet acked. That bounds memory and
what a crash can deliver twice.

The oldest batch is finished first: once every sink accepted it (a sink that
failed for now is retried, alone, with capped jittered backoff, as the
sink's errors ask), the alert stage sees it, client reports are counted, its
dead letters are written. Its ``XACK`` then rides with the loop's next read,
ahead of the ``XREADGROUP`` in one round trip (:class:`OwedAcks`), so Redis
applies the acks before it hands out more entries. Nothing is acked before
every sink accepted it, so a crash anywhere means redelivery, never loss.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import redis
import structlog

from collector.clientreports import record_client_reports
from collector.config import CollectorConfig
from collector.deadletter import DeadLetter, dead_letter_fields
from collector.keepalive import KeepAlive
from collector.pacing import Backoff, Counters
from collector.reading import Batch
from collector.records import Record
from collector.sinks import Sink, SinkAuthError, SinkRejected, SinkUnavailable
from emitters.streams import PAYLOAD_FIELD, StreamNames

if TYPE_CHECKING:
    from collector.alerts.stage import AlertStage

__all__ = ["Delivery", "OwedAcks", "SinkTrouble"]

log = structlog.get_logger("collector.daemon")

_PAYLOAD_KEY = PAYLOAD_FIELD.encode()
# Dead-letter XADDs go out in pipelines of at most this many bytes.
_DEAD_PIPELINE_BYTES = 8 * 1024 * 1024


class SinkTrouble:
    """How the daemon hears of sinks failing and recovering (it owns the status)."""

    def __init__(self, failing: Callable[[str], None], recovered: Callable[[], None], pause: Callable[[float], None]) -> None:
        self.failing = failing  # "backpressure" or "paused_auth"
        self.recovered = recovered
        self.pause = pause  # waits, keeping the heartbeat; raises to abandon the batch when stopping


class OwedAcks:
    """Acks of delivered batches, sent in front of the next read (or on their own by :meth:`flush`)."""

    def __init__(self, client: redis.Redis, group: str, counters: Counters) -> None:
        self._redis = client
        self.group = group
        self.counters = counters
        self._batches: list[Batch] = []

    def owe(self, batch: Batch) -> None:
        self._batches.append(batch)

    def entries(self) -> int:
        return sum(batch.size() for batch in self._batches)

    def queue(self, pipe: Any) -> int:
        """Add the XACKs to ``pipe``; how many commands were added (their replies come first)."""
        commands = 0
        for batch in self._batches:
            for key, ids in batch.ack.items():
                if ids:
                    pipe.xack(key, self.group, *ids)
                    commands += 1
        return commands

    def sent(self, replies: Sequence[int]) -> None:
        self.counters.acked += sum(replies)
        self._batches = []

    def flush(self) -> None:
        if self._batches:
            pipe = self._redis.pipeline(transaction=False)
            self.queue(pipe)
            self.sent(pipe.execute())


class Delivery:
    """The window of batches in flight between the loop's reads and its acks."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        client: redis.Redis,
        names: StreamNames,
        group: str,
        consumer: str,
        settings: CollectorConfig,
        counters: Counters,
        keepalive: KeepAlive,
        trouble: SinkTrouble,
        alert_engine: Optional["AlertStage"] = None,
    ) -> None:
        self.sinks = list(sinks)
        self.limit = settings.batches_in_flight
        self._redis = client
        self.names = names
        self.group = group
        self.consumer = consumer
        self.settings = settings
        self.counters = counters
        self._keepalive = keepalive
        self._trouble = trouble
        self.alert_engine = alert_engine
        self.window: deque[Batch] = deque()
        self.acks = OwedAcks(client, group, counters)
        self._writers = [
            ThreadPoolExecutor(
                max_workers=self.limit if getattr(sink, "concurrent_writes", False) else 1,
                thread_name_prefix=f"sink-{sink.name}",
            )
            for sink in self.sinks
        ]

    @property
    def room(self) -> bool:
        return len(self.window) < self.limit

    def entries(self) -> int:
        """Entries read and not yet acked."""
        return sum(batch.size() for batch in self.window) + self.acks.entries()

    def submit(self, batch: Batch) -> None:
        """Start every sink's write of ``batch`` and return at once."""
        if batch.records:
            for index in range(len(self.sinks)):
                batch.writes[index] = self._write(index, batch.records)
        self.window.append(batch)

    def finish_oldest(self) -> None:
        """Deliver the oldest batch in flight: sinks, alerts, dead letters; its acks are then owed."""
        batch = self.window[0]
        if not batch.delivered:
            if batch.records:
                self._await_sinks(batch)
                if self.alert_engine is not None:
                    self.alert_engine.write(batch.records)
                self.counters.client_dropped += record_client_reports(self._redis, self.names, batch.records)
            batch.delivered = True
            self.counters.written += len(batch.records) - batch.rejected
        if batch.dead:
            self._write_dead_letters(batch)
        self.acks.owe(batch)
        self.window.popleft()

    def close(self, deadline: Optional[float]) -> None:
        """Stop the writers, letting writes already running end by ``deadline`` (monotonic)."""
        running = [future for batch in self.window for future in batch.writes.values()]
        for writer in self._writers:
            writer.shutdown(wait=False, cancel_futures=True)
        if running:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            wait_for_futures(running, timeout=timeout)

    # -- sinks ------------------------------------------------------------------------------------

    def _write(self, index: int, records: list[Record]) -> Future[None]:
        sink = self.sinks[index]
        return self._writers[index].submit(sink.write, _for_sink(sink, records))

    def _await_sinks(self, batch: Batch) -> None:
        """Every sink accepts the records or we wait and retry just the ones that did not."""
        for index, sink in enumerate(self.sinks):
            if index in batch.accepted:
                continue
            backoff = Backoff(0.1, self.settings.max_backoff)
            while True:
                write = batch.writes.pop(index, None) or self._write(index, batch.records)
                try:
                    with self._keepalive.blocked(sink.name):
                        write.result()
                except SinkUnavailable as exc:
                    delay = max(backoff.next(), exc.retry_after or 0.0)
                    log.warning("sink_unavailable", sink=sink.name, error=str(exc), retry_in_s=round(delay, 2))
                    self._trouble.failing("backpressure")
                except SinkAuthError as exc:
                    delay = self.settings.auth_retry_interval
                    log.error(
                        "sink_auth_failed",
                        sink=sink.name,
                        error=str(exc),
                        retry_in_s=delay,
                        action="fix the sink's credentials; entries stay pending in Redis meanwhile",
                    )
                    self._trouble.failing("paused_auth")
                except SinkRejected as exc:
                    for record in exc.records:
                        batch.rejections.setdefault((record.stream, record.stream_id), (record, []))[1].append(f"{sink.name}: {exc.reason}")
                    batch.rejected = len(batch.rejections)
                    log.warning("sink_rejected", sink=sink.name, reason=exc.reason, records=len(exc.records))
                    break
                else:
                    break
                self.counters.sink_failures += 1
                self._trouble.pause(delay)
            batch.accepted.add(index)
        batch.dead.extend(self._rejected_letter(record, reasons) for record, reasons in batch.rejections.values())
        batch.rejections = {}
        self._trouble.recovered()

    def _rejected_letter(self, record: Record, reasons: list[str]) -> DeadLetter:
        key = self.names.errors if record.stream == "errors" else self.names.events
        refused = {reason.split(":", 1)[0] for reason in reasons}
        accepted = tuple(sink.name for sink in self.sinks if sink.name not in refused)
        fields = [_PAYLOAD_KEY, record.raw]
        return DeadLetter(key, record.stream_id.encode(), "rejected", "; ".join(reasons), fields, accepted)

    # -- Redis ------------------------------------------------------------------------------------

    def _write_dead_letters(self, batch: Batch) -> None:
        now_ms = int(time.time() * 1000)
        maxlen = self.settings.dead_maxlen or None
        pipe = self._redis.pipeline(transaction=False)
        size = 0
        for letter in batch.dead:
            fields = dead_letter_fields(
                letter, consumer=self.consumer, max_bytes=self.settings.max_event_size, now_ms=now_ms
            )
            pipe.xadd(self.names.dead, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            size += sum(len(value) for value in fields.values())
            if size >= _DEAD_PIPELINE_BYTES:
                pipe.execute()
                size = 0
        pipe.execute()
        categories: dict[str, int] = {}
        for letter in batch.dead:
            categories[letter.category] = categories.get(letter.category, 0) + 1
        first = batch.dead[0]
        log.warning(
            "dead_lettered",
            count=len(batch.dead),
            categories=categories,
            first_stream=first.stream,
            first_id=first.entry_id.decode(errors="replace"),
            first_reason=first.reason[:500],
            dead_stream=self.names.dead,
        )
        self.counters.dead_lettered += len(batch.dead)
        batch.dead = []


def _for_sink(sink: Sink, records: list[Record]) -> list[Record]:
    """The records ``sink`` has not accepted before (replayed dead letters name the ones that had)."""
    if not any(record.skip for record in records):
        return records
    return [record for record in records if sink.name not in record.skip]
