"""A process that emits at full rate and forks children the ways servers do (run as a script).

``python -m tests.support.emitter_fork_scenario REDIS_URL CHILD_EVENTS`` prints one JSON
line: what the parent emitted and how its emitter accounted for it, and each
child's tag with the number of events it emitted. No child calls ``flush()``
or ``close()``: each just returns or exits, as a real worker does.

Children, five of each: ``os.fork`` while the parent's worker is sending;
``multiprocessing`` fork ``Process``; a fork ``Pool``'s workers (closed and
joined); and gunicorn-style pre-fork workers, forked before the load starts,
that serve from two threads and leave through ``sys.exit``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time

from emitters import Emitter

EMITTER: Emitter
CHILD_EVENTS = 0
PER_KIND = 5


def emit_as(tag: str, count: int) -> None:
    for index in range(count):
        EMITTER.event("child.tick", attrs={"who": tag, "n": index})


def pool_task(k: int) -> int:
    emit_as(f"pool-{k}", CHILD_EVENTS)
    return os.getpid()


def prefork_worker(k: int) -> None:
    threads = [threading.Thread(target=emit_as, args=(f"prefork-{k}-{t}", CHILD_EVENTS // 2)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sys.exit(0)  # through the stack to interpreter exit, as gunicorn's workers leave


def fork_child(tag: str, worker: object) -> int:
    pid = os.fork()
    if pid == 0:
        if callable(worker):
            worker()
        emit_as(tag, CHILD_EVENTS)
        sys.exit(0)
    return pid


def main(redis_url: str) -> None:
    global EMITTER
    EMITTER = Emitter(
        "forker", redis_url, buffer_size=200_000, events_maxlen=10_000_000, hash_secret="s", exit_timeout=20.0
    )
    expected: dict[str, int] = {}
    pids = [fork_child(f"prefork-{k}", lambda k=k: prefork_worker(k)) for k in range(PER_KIND)]
    expected.update({f"prefork-{k}-{t}": CHILD_EVENTS // 2 for k in range(PER_KIND) for t in range(2)})

    stop = threading.Event()
    emitted = [0]

    def load() -> None:
        while not stop.is_set():
            for _ in range(500):
                EMITTER.event("parent.tick", attrs={"n": emitted[0]})
                emitted[0] += 1
            time.sleep(0.002)

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(0.2)  # the parent's worker is busy sending from here on
    for k in range(PER_KIND):
        pids.append(fork_child(f"fork-{k}", None))
        expected[f"fork-{k}"] = CHILD_EVENTS
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=emit_as, args=(f"process-{k}", CHILD_EVENTS)) for k in range(PER_KIND)]
    for process in processes:
        process.start()
    expected.update({f"process-{k}": CHILD_EVENTS for k in range(PER_KIND)})
    pool = context.Pool(PER_KIND)
    pool.map(pool_task, range(PER_KIND), chunksize=1)
    pool.close()
    pool.join()
    expected.update({f"pool-{k}": CHILD_EVENTS for k in range(PER_KIND)})
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    for process in processes:
        process.join()
        codes.append(process.exitcode)
    stop.set()
    loader.join()
    EMITTER.close(30)
    stats = EMITTER.stats()
    print(json.dumps({"emitted": emitted[0], "stats": stats, "codes": codes, "expected": expected}))


if __name__ == "__main__":
    CHILD_EVENTS = int(sys.argv[2])
    main(sys.argv[1])
