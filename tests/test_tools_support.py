"""Helpers shared by the operator-tool tests (tests/test_tools_*.py); no tests of its own.

Everything here drives real parts: the CLI through click's runner or a real
process, events written by the real Emitter, dead letters made by a real
Collector.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import redis
from click.testing import CliRunner, Result

from collector.cli import main
from collector.config import CollectorConfig, Config, JsonlConfig, RedisConfig
from collector.daemon import Collector
from collector.sinks import Sink, SinkRejected
from collector.sinks.jsonl import JsonlSink
from emitters import Emitter
from emitters.events import decode

REPO = Path(__file__).resolve().parent.parent
SECOND = 1_000_000_000


def cli(*args: str, input: Optional[str] = None, env: Optional[dict[str, str]] = None) -> Result:
    """Run ``telemetry-collector ARGS`` in-process (through the lazy group, like the console script)."""
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy; generous, since the test machine is shared."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.02)


def make_emitter(redis_url: str, service: str, **options: Any) -> Emitter:
    return Emitter(service, redis_url, strict=True, hash_secret="tools-test", flush_interval=0.005, **options)


@contextmanager
def emitters(redis_url: str, *services: str, **options: Any) -> Iterator[list[Emitter]]:
    """Emitters for ``services``; everything they emitted is in Redis when the block ends."""
    made = [make_emitter(redis_url, service, **options) for service in services]
    try:
        yield made
        for emitter in made:
            assert emitter.flush(10.0), f"{emitter.service} could not flush: {emitter.stats()}"
    finally:
        for emitter in made:
            emitter.close()


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


def archived_ids(directory: Path, stem: str = "events") -> list[str]:
    ids: list[str] = []
    for path in sorted(directory.glob(f"{stem}-*.jsonl")):
        ids.extend(json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip())
    return ids


def tags_by_id(client: redis.Redis, prefix: str = "telemetry") -> dict[str, str]:
    """event id -> the ``tag`` it was emitted with (in attrs, or in an error's context), both streams."""
    tags: dict[str, str] = {}
    for key in (f"{prefix}:events", f"{prefix}:errors"):
        for _, fields in client.xrange(key):
            event = decode(fields[b"event"])
            context = getattr(event, "context", None) or {}
            tag = event.attrs.get("tag", context.get("tag"))
            if tag is not None:
                tags[event.id] = str(tag)
    return tags


def tool_process(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.Popen[str]:
    """``telemetry-collector ARGS`` as a real process (stdout/stderr piped, text)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", "from collector.cli import main; main()", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def blocked_in_xread(client: redis.Redis, name: str) -> bool:
    """Whether a client named ``name`` is waiting in a blocking XREAD."""
    return any(c.get("name") == name and c.get("cmd") == "xread" for c in client.client_list())


def group_pending(client: redis.Redis, key: str) -> dict[str, int]:
    """Pending count per consumer group of ``key``."""
    return {g["name"].decode(): g["pending"] for g in client.xinfo_groups(key)}
