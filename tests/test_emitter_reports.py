"""An engine's drops reach the operator: client reports -> collector -> health, heartbeat, alert."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import redis

from collector.alerts.records import AlertRecord
from collector.clientreports import read_client_drops, record_client_reports
from collector.embedded import RedisProcess
from collector.records import Record
from emitters import ClientReport, Emitter, encode
from emitters.streams import stream_names
from tests.support.emitter_streams import wait_for

NAMES = stream_names("telemetry")
_alert = msgspec.json.Decoder(AlertRecord)


def _collector(redis_url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--redis-url", redis_url, "--no-jsonl", "--log-format", "json",
         "--consumer", "c-reports", "--block-ms", "50", "--heartbeat-interval", "300ms"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "collector.log", "wb"), cwd=tmp_path,
    )  # fmt: skip


def _health(redis_url: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "health", "--redis-url", redis_url, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, json.loads(result.stdout)


class TestDropsReachTheOperator:
    def test_buffer_full_while_redis_is_stopped_shows_in_health_and_fires_the_alert(
        self, redis_process: RedisProcess, tmp_path: Path
    ) -> None:
        """Redis SIGSTOPped while an engine emits: the buffer_full drops it counted show with the exact
        count in `health` (exit 1), the collector heartbeat and the built-in engine-drops alert."""
        client = redis_process.client()
        collector = _collector(redis_process.url, tmp_path)
        em = Emitter(
            "engine-1", redis_process.url, buffer_size=100, batch_size=50, report_interval=0.5,
            socket_timeout=0.5, max_backoff=0.2, hash_secret="s",
        )  # fmt: skip
        try:
            assert wait_for(lambda: client.exists(NAMES.heartbeat("c-reports")), 30), "collector did not start"
            em.event("warmup.done")
            assert em.flush(10)
            redis_process.pause()
            try:
                for index in range(1_000):
                    em.event("load.tick", attrs={"n": index})
            finally:
                redis_process.resume()
            assert em.flush(30)
            dropped = em.stats()["dropped"]
            full = dropped["buffer_full"]
            assert full >= 800 and sum(dropped.values()) == full

            def recorded() -> int:
                return sum(entry.dropped_total for entry in read_client_drops(client, NAMES))

            assert wait_for(lambda: recorded() == full, 30), (recorded(), full)
            code, report = _health(redis_process.url)
            assert code == 1
            (engine,) = report["client_drops"]
            assert (engine["service"], engine["dropped"], engine["dropped_total"]) == ("engine-1", {"buffer_full": full}, full)
            assert any(f"engine engine-1 reported {full} dropped events" in reason for reason in report["reasons"])

            def beat() -> int:
                return int(client.hget(NAMES.heartbeat("c-reports"), "client_dropped") or 0)

            assert wait_for(lambda: beat() == full, 10)

            def fired() -> list[AlertRecord]:
                alerts = [_alert.decode(fields[b"alert"]) for _, fields in client.xrange(NAMES.alerts)]
                return [a for a in alerts if a.rule == "engine-drops" and a.status == "firing"]

            (alert,) = wait_for(fired, 30)
            assert alert.labels["service"] == "engine-1" and alert.value == full
        finally:
            em.close(5)
            collector.send_signal(signal.SIGTERM)
            assert collector.wait(30) == 0

    def test_a_redelivered_report_is_counted_once(self, redis_client: redis.Redis) -> None:
        """The same client.report entry handled twice (at-least-once delivery) adds its drops once."""
        report = ClientReport(
            id="ab" * 16, ts=1_700_000_000_000_000_000, service="engine-2", host="h", pid=os.getpid(),
            dropped={"invalid": 3, "redis_refused": 2}, dropped_total=5,
        )  # fmt: skip
        record = Record("events", "1-0", report, encode(report))
        assert record_client_reports(redis_client, NAMES, [record]) == 5
        assert record_client_reports(redis_client, NAMES, [record]) == 0
        (drops,) = read_client_drops(redis_client, NAMES, now_s=1_700_000_060)
        assert (drops.dropped, drops.dropped_total, drops.reports, drops.last_drop_age_s) == (
            {"invalid": 3, "redis_refused": 2}, 5, 1, 60.0
        )
