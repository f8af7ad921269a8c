"""Reading what emitters wrote to Redis, in tests."""

from __future__ import annotations

import time
from typing import Any, Callable

import redis

from emitters import decode
from emitters.streams import PAYLOAD_FIELD

# Events an emitter writes about itself rather than for its host.
OWN_TYPES = frozenset({"client.report", "span.ended"})


def read_stream(client: redis.Redis, stream: str) -> list[Any]:
    """Every event in ``stream``, decoded and validated, oldest first."""
    return [decode(fields[PAYLOAD_FIELD.encode()]) for _, fields in client.xrange(stream)]


def host_events(client: redis.Redis, stream: str) -> list[Any]:
    """The host's events in ``stream``: without client reports and ended spans."""
    return [event for event in read_stream(client, stream) if event.type not in OWN_TYPES]


def of_type(client: redis.Redis, stream: str, event_type: str) -> list[Any]:
    return [event for event in read_stream(client, stream) if event.type == event_type]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value
