"""Redis restarted without persistence under a steady emitter and a running collector.

The suite runs a short variant (tests/test_loss_trimming.py); the full one the
issue asks for (10 runs, 1,000 events/s, 20 s outage, everything at its
defaults) runs by hand::

    PYTHONPATH=. python -m tests.support.restart_scenario --runs 10 --rate 1000 --outage 20

Each run balances the books: every emitted event is in the JSONL files, an
emitter drop (by reason), counted lost, or dead-lettered; ``unaccounted`` is
what is left over and must be 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from collector.embedded import RedisProcess
from emitters import Emitter
from emitters.streams import stream_names

ROOT = Path(__file__).resolve().parent.parent.parent
NAMES = stream_names()


def jsonl_event_ids(directory: Path, event_type: str = "job.created") -> set[str]:
    """The ids of the pacer's events in the files (the emitter's own client reports left out)."""
    ids: set[str] = set()
    for path in directory.glob("events-*.jsonl"):
        for line in path.read_bytes().splitlines():
            event = json.loads(line)
            if event["type"] == event_type:
                ids.add(event["id"])
    return ids


class Pacer(threading.Thread):
    """Emits ``rate`` events a second until stopped; counts every call."""

    def __init__(self, emitter: Emitter, rate: int) -> None:
        super().__init__(daemon=True)
        self.emitter = emitter
        self.rate = rate
        self.emitted = 0
        self.halt = threading.Event()
        self.held = threading.Event()  # while set, nothing is emitted (and nothing is owed after)

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.is_set():
            if self.held.is_set():
                start = time.monotonic() - self.emitted / self.rate
            due = int((time.monotonic() - start) * self.rate)
            while self.emitted < due and not self.held.is_set():
                self.emitter.event("job.created", n=self.emitted)
                self.emitted += 1
            self.halt.wait(0.005)


def run_once(
    *,
    rate: int,
    outage: float,
    warmup: float = 3.0,
    tail: float = 5.0,
    binary: Optional[str] = None,
    collector_args: tuple[str, ...] = (),
    settle_timeout: float = 120.0,
    caught_up_before_outage: bool = False,
    keep_log: Optional[Path] = None,
) -> dict[str, Any]:
    """One run; returns the tally.

    ``unaccounted`` is what Redis held unread when it went down: gone with it, and with
    every counter it kept. With ``caught_up_before_outage`` the emitter pauses and the
    collector catches up first (what the suite asserts on: 0); otherwise it depends on
    how far behind the collector was at that instant (the collector logs ``redis_data_lost``).
    """
    with tempfile.TemporaryDirectory(prefix="restart-scenario-") as tmp:
        work = Path(tmp)
        server = RedisProcess(data_dir=work / "redis", binary=binary)  # --save "" --appendonly no
        (work / "redis").mkdir()
        server.start()
        jsonl = work / "logs"
        env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEMETRY_", "OTEL_"))}
        env["PYTHONPATH"] = str(ROOT)
        with (work / "collector.log").open("wb") as log:
            collector = subprocess.Popen(
                [sys.executable, "-m", "collector", "run", "--redis-url", server.url, "--jsonl-dir", str(jsonl),
                 "--log-format", "json", "--no-alerts", *collector_args],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
            )  # fmt: skip
        emitter = Emitter("restart-scenario", server.url, hash_secret="scenario")
        pacer = Pacer(emitter, rate)
        try:
            _wait_logged(work / "collector.log", "collector_ready", 60)  # a loaded machine starts it slowly
            pacer.start()
            time.sleep(warmup)
            if caught_up_before_outage:
                pacer.held.set()
                emitter.flush(30)
                _wait_caught_up(server, settle_timeout)
                pacer.held.clear()
            server.stop()  # nothing saved: the streams, the group and the counters are gone
            time.sleep(outage)
            server.start()
            restarted = time.monotonic()
            time.sleep(tail)
            pacer.halt.set()
            pacer.join()
            emitter.flush(60)
            _wait_caught_up(server, settle_timeout)
            client = server.client()
            stats = emitter.stats()
            accounting = {k.decode(): int(v) for k, v in client.hgetall(NAMES.accounting).items() if k.startswith(b"lost:")}
            dead = client.xlen(NAMES.dead)
            client.close()
        finally:
            pacer.halt.set()
            emitter.close(5)
            collector.terminate()
            collector.wait(60)
            server.close()
        delivered = len(jsonl_event_ids(jsonl))
        log_text = (work / "collector.log").read_text()
        logs = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
        if keep_log is not None:
            keep_log.write_text(log_text)
        reattached = [
            entry for entry in logs if entry.get("event") in ("redis_reconnected", "consumer_group_missing", "redis_data_lost")
        ]
        dropped = {reason: count for reason, count in stats["dropped"].items() if count}
        lost = sum(accounting.values())
        return {
            "emitted": pacer.emitted,
            "sent": stats["sent"],
            "delivered": delivered,
            "dropped": dropped,
            "lost": lost,
            "dead": dead,
            "unaccounted": pacer.emitted - delivered - sum(dropped.values()) - lost - dead,
            "reattach_log": [entry["event"] for entry in reattached],
            "seconds_after_restart": round(time.monotonic() - restarted, 1),
        }


def _wait_logged(path: Path, event: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while f'"event": "{event}"' not in path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"collector did not log {event} within {timeout}s: {path.read_text()[-2000:]}")
        time.sleep(0.05)


def _wait_caught_up(server: RedisProcess, timeout: float) -> None:
    """Until the collectors' group has read and acked everything in the events stream."""
    client = server.client()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            groups = {g["name"]: g for g in client.xinfo_groups(NAMES.events)} if client.exists(NAMES.events) else {}
            group = groups.get(b"telemetry-collectors")
            if group and not group["pending"] and group["last-delivered-id"] == _last_id(client):
                return
            time.sleep(0.2)
    finally:
        client.close()


def _last_id(client: Any) -> Optional[bytes]:
    last = client.xrevrange(NAMES.events, count=1)
    return last[0][0] if last else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000, help="events per second")
    parser.add_argument("--outage", type=float, default=20.0, help="seconds Redis stays down")
    parser.add_argument("--redis-server", default=None, help="binary (default: the newest found)")
    parser.add_argument("--keep-logs", default=None, help="directory for each run's collector log")
    args = parser.parse_args()
    results = []
    for index in range(args.runs):
        keep = Path(args.keep_logs) / f"collector-run{index + 1}.log" if args.keep_logs else None
        result = run_once(rate=args.rate, outage=args.outage, binary=args.redis_server, keep_log=keep)
        results.append(result)
        print(json.dumps({"run": index + 1, **result}), flush=True)
    print(json.dumps({"runs": len(results), "unaccounted_total": sum(r["unaccounted"] for r in results),
                      "lost_total": sum(r["lost"] for r in results)}))  # fmt: skip


if __name__ == "__main__":
    main()
