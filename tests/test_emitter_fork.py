"""Fork under load: no process hangs, and every event of every process arrives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import redis

from emitters import Emitter
from emitters.streams import stream_names
from tests.support.emitter_streams import host_events

NAMES = stream_names("telemetry")
CHILD_EVENTS = 2_000


class TestForkUnderLoad:
    def test_twenty_children_forked_four_ways_deliver_everything(self, redis_url: str, redis_client: redis.Redis) -> None:
        """A parent emitting at full rate forks 20 children (os.fork, multiprocessing Process and
        Pool, gunicorn-style pre-fork); none calls flush(). Nothing hangs (bounded by the timeout),
        every child's events arrive exactly once, and the parent's are all sent or counted."""
        result = subprocess.run(
            [sys.executable, "-m", "tests.support.emitter_fork_scenario", redis_url, str(CHILD_EVENTS)],
            capture_output=True, text=True, timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["codes"] == [0] * 15  # the pool's five workers are checked by their events
        events = host_events(redis_client, NAMES.events)
        children = Counter(e.attrs["who"] for e in events if e.type == "child.tick")
        assert children == report["expected"] and len(children) == 25  # pre-fork workers emit from 2 threads
        assert len({(e.attrs["who"], e.attrs["n"]) for e in events if e.type == "child.tick"}) == sum(children.values())
        parent = [e.attrs["n"] for e in events if e.type == "parent.tick"]
        stats = report["stats"]
        assert len(parent) == len(set(parent)) == stats["sent"]
        assert stats["sent"] + stats["dropped"]["buffer_full"] == report["emitted"]
        assert sum(stats["dropped"].values()) == stats["dropped"]["buffer_full"]


class TestChildExit:
    def test_a_child_that_exits_hard_counts_its_unsent_events_as_fork_exit(self, redis_url: str) -> None:
        """A child ending while Redis cannot take its events counts them as fork_exit, not silently."""
        em = Emitter("engine-1", "redis://127.0.0.1:1/0", socket_timeout=0.2, max_backoff=0.05, exit_timeout=0.2, hash_secret="s")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                for _ in range(5):
                    em.event("child.tick")
                em._hooks.close_at_exit()  # what atexit or multiprocessing's finalizer runs
                os.write(write, json.dumps(em.stats()["dropped"]).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        dropped = json.loads(os.read(read, 4096))
        os.close(read)
        assert dropped["fork_exit"] == 5 and sum(dropped.values()) == 5
        em.close(0.1)
