"""Entries written straight into the collector's streams, and what became of them.

Events as emitters encode them, added with XADD; the JSONL files, the pending
list and the dead letters they ended up in.
"""

from __future__ import annotations

import collections
import json
import secrets
import time
from pathlib import Path
from typing import Any, Sequence

import redis

from emitters.events import CustomEvent, ErrorEvent, encode
from emitters.streams import stream_names

NAMES = stream_names("telemetry")
GROUP = "telemetry-collectors"


def envelope(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": secrets.token_hex(16),
        "ts": time.time_ns(),
        "service": "test-svc",
        "host": "test-host",
        "pid": 4242,
        "trace_id": secrets.token_hex(16),
        "span_id": secrets.token_hex(8),
    }
    fields.update(overrides)
    return fields


def custom_event(n: int = 0, type_: str = "job.created") -> CustomEvent:
    return CustomEvent(type=type_, attrs={"n": n}, **envelope())


def error_event(message: str = "boom") -> ErrorEvent:
    return ErrorEvent(message=message, error_type="RuntimeError", **envelope())


def add_events(client: redis.Redis, events: Sequence[Any], stream: str = NAMES.events) -> list[bytes]:
    """XADD each event as one ``event`` field; returns the entry ids."""
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, {"event": encode(event)})
    return pipe.execute()


def add_old_events(client: redis.Redis, count: int, *, age_s: float) -> None:
    """Events with entry ids from ``age_s`` ago, as if they had waited in the stream that long."""
    old_ms = int((time.time() - age_s) * 1000)
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        pipe.xadd(NAMES.events, {"event": encode(custom_event(n))}, id=f"{old_ms + n}-0")
    pipe.execute()


def jsonl_ids(*directories: Path) -> collections.Counter[str]:
    """How often each event id appears in the events-/errors- JSONL files."""
    seen: collections.Counter[str] = collections.Counter()
    for directory in directories:
        for path in sorted([*directory.glob("events-*.jsonl"), *directory.glob("errors-*.jsonl")]):
            # A line the collector is still writing has no newline yet: count it next time.
            for line in path.read_bytes().split(b"\n")[:-1]:
                seen[json.loads(line)["id"]] += 1
    return seen


def pending_count(client: redis.Redis, stream: str = NAMES.events) -> int:
    try:
        return int(client.xpending(stream, GROUP)["pending"])
    except redis.ResponseError:  # no group yet
        return 0


def dead_letters(client: redis.Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in client.xrange(NAMES.dead)]
