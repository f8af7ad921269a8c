"""SIGKILLing a real collector at a moment it holds entries read but not yet acked.

The moment is found from outside, as an operator would see it: the process is
frozen with SIGSTOP, its pending list in Redis is read, and it is either
killed there (the window of batches in flight is as full as asked) or let go
and frozen again a moment later.
"""

from __future__ import annotations

import random
import signal
import threading
import time

import redis

from tests.support.collector_process import CollectorProcess
from tests.support.stream_entries import GROUP, NAMES
from tests.support.waiting import wait_for


def consumer_pending(client: redis.Redis, consumer: str, stream: str = NAMES.events) -> int:
    """Entries delivered to ``consumer`` and not yet acked."""
    for entry in client.xinfo_consumers(stream, GROUP):
        if entry["name"] in (consumer, consumer.encode()):
            return int(entry["pending"])
    return 0


def unprocessed(client: redis.Redis, stream: str = NAMES.events) -> int:
    """Entries the group has not read yet plus those read but not acked (6.2 and 7.x: counted by ids)."""
    (group,) = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP.encode()]
    return len(client.xrange(stream, min="(" + group["last-delivered-id"].decode())) + int(group["pending"])


def lost_counters(client: redis.Redis) -> dict[str, int]:
    """Every non-zero ``lost:*`` counter of the accounting hash."""
    fields = client.hgetall(NAMES.accounting)
    return {key.decode(): int(value) for key, value in fields.items() if key.startswith(b"lost:") and int(value)}


def only_me_connected(client: redis.Redis) -> bool:
    """Whether every other connection to this (private) Redis is gone: a killed process's last
    commands, already in Redis's socket buffer, have been served by then."""
    me = client.client_id()
    return all(int(entry["id"]) == me for entry in client.client_list())


def kill_mid_flight(collector: CollectorProcess, client: redis.Redis, *, more_than: int, timeout: float = 60.0) -> int:
    """SIGKILL ``collector`` while it holds more than ``more_than`` entries read and not acked.

    Returns what it held when it died, counted once Redis has dropped its connections
    (``client`` must be the only other client of a private Redis).
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        collector.signal(signal.SIGSTOP)
        wait_for(collector.stopped, 10, f"SIGSTOP of {collector.name} taking effect")
        held = consumer_pending(client, collector.name)
        if held > more_than:
            break
        collector.signal(signal.SIGCONT)
        if time.monotonic() > deadline or not unprocessed(client):
            raise AssertionError(f"{collector.name} never held more than {more_than} entries while draining")
        assert not collector.exited(), collector.log_path.read_text()[-3000:]
        pause.wait(random.uniform(0.0, 0.01))  # off the batch rhythm, so the samples land all over a cycle
    collector.kill()
    wait_for(lambda: only_me_connected(client), 30, f"Redis dropping {collector.name}'s connections")
    return consumer_pending(client, collector.name)
