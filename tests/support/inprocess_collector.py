"""A real Collector in a thread for tests, its config, and the sinks tests hand it.

``running``/``make_config`` (the daemon tests: errors from ``run()`` reach the
test) and ``running_collector`` (the tool tests: returns once the heartbeat is
in Redis) both run the real daemon loop against a real redis-server.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import redis

from collector.config import CollectorConfig, Config, JsonlConfig, RedisConfig, load_config
from collector.daemon import Collector
from collector.records import Record
from collector.sinks import Sink, SinkRejected
from collector.sinks.jsonl import JsonlSink
from tests.support.stream_entries import NAMES
from tests.support.waiting import wait_for


def make_config(redis_url: str, tmp_path: Path, **collector: Any) -> Config:
    overrides = {
        "redis.url": redis_url,
        "jsonl.dir": str(tmp_path / "logs"),
        "collector.block_ms": 50,
        "collector.claim_idle": "1s",
        "collector.heartbeat_interval": "200ms",
        "collector.max_backoff": "200ms",
        "alerts.enabled": False,
    }
    overrides.update({f"collector.{name}": value for name, value in collector.items()})
    return load_config(overrides=overrides, environ={})


class Running:
    """A Collector on a thread; errors from run() are re-raised on stop()."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.collector.run()
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def stop(self, timeout: float = 30.0) -> None:
        self.collector.request_stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return after request_stop()"
        if self.error is not None:
            raise self.error


@contextmanager
def running(collector: Collector) -> Iterator[Running]:
    handle = Running(collector)
    handle.thread.start()
    try:
        yield handle
    finally:
        if handle.thread.is_alive():
            handle.stop()
        elif handle.error is not None:
            raise handle.error


class RecordingSink:
    """A real in-memory sink: keeps every record it accepted, in order."""

    name = "recording"

    def __init__(self) -> None:
        self.batches: list[list[Record]] = []
        self.closed = False

    def write(self, batch: Sequence[Record]) -> None:
        self.batches.append(list(batch))

    @property
    def records(self) -> list[Record]:
        return [record for batch in self.batches for record in batch]

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FaultySink(RecordingSink):
    """Raises the errors ``faults`` yields (None: accept) on successive writes: fault injection."""

    name = "faulty"

    def __init__(self, faults: Callable[[Sequence[Record]], Optional[Exception]]) -> None:
        super().__init__()
        self.faults = faults
        self.attempts = 0

    def write(self, batch: Sequence[Record]) -> None:
        self.attempts += 1
        fault = self.faults(batch)
        if fault is not None:
            raise fault
        super().write(batch)


def heartbeat(client: redis.Redis, collector: Collector) -> dict[str, str]:
    raw = client.hgetall(NAMES.heartbeat(collector.consumer))
    return {key.decode(): value.decode() for key, value in raw.items()}


def collector_config(redis_url: str, jsonl_dir: Path, **settings: Any) -> Config:
    options: dict[str, Any] = {"block_ms": 50, "heartbeat_interval": 0.2, "claim_idle": 60}
    options.update(settings)
    return Config(
        redis=RedisConfig(url=redis_url),
        collector=CollectorConfig(**options),
        jsonl=JsonlConfig(dir=str(jsonl_dir)),
    )


@contextmanager
def running_collector(
    redis_url: str, jsonl_dir: Path, *, sinks: Optional[Sequence[Sink]] = None, **settings: Any
) -> Iterator[Collector]:
    """A real Collector in a thread; returns once its heartbeat is in Redis."""
    config = collector_config(redis_url, jsonl_dir, **settings)
    collector = Collector(config, sinks=sinks)
    thread = threading.Thread(target=collector.run, name="test-collector", daemon=True)
    thread.start()
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: client.exists(collector.names.heartbeat(collector.consumer)), what="collector heartbeat")
        yield collector
    finally:
        collector.request_stop()
        thread.join(30)
        client.close()
        assert not thread.is_alive(), "collector did not stop"


class SwitchableRejectSink:
    """Fault injection: a JSONL sink that permanently rejects everything while ``rejecting`` is set.

    That is how a backend's 400 (e.g. a schema it did not accept yet) turns
    events into dead letters of category ``rejected``.
    """

    name = "switchable"

    def __init__(self, directory: Path) -> None:
        self.rejecting = threading.Event()
        self.inner = JsonlSink(directory, max_bytes=1 << 20, retention_days=None)

    def write(self, batch: Sequence[Any]) -> None:
        if self.rejecting.is_set():
            raise SinkRejected("400 backend refused the schema", batch)
        self.inner.write(batch)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()
