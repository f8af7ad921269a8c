"""Events for the operator-tool tests: real Emitters, and what reached the archive or the streams."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import redis

from emitters import Emitter
from emitters.events import decode

SECOND = 1_000_000_000


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
