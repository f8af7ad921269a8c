"""`telemetry-collector health`: exit 0 healthy, 1 degraded, 2 unreachable, against real collectors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import pytest
import redis

from collector.embedded import RedisProcess
from collector.sinks import SinkAuthError
from collector.tools.health_checks import Thresholds, assess
from collector.tools.health_snapshot import GroupInfo, Heartbeat, Snapshot, StreamInfo, parse_heartbeat
from emitters.streams import DEFAULT_EVENTS_MAXLEN
from tests.support.tool_runs import REPO, cli
from tests.support.tool_events import emitters
from tests.support.inprocess_collector import running_collector
from tests.support.waiting import wait_for


def _health(redis_url: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("health", "--redis-url", redis_url, "--json", *args)
    return result.exit_code, json.loads(result.stdout)


def _stream(report: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(stream for stream in report["streams"] if stream["kind"] == kind)


class AuthRefusedSink:
    """Fault injection: a backend that refuses the collector's credentials (401)."""

    name = "auth-refused"

    def __init__(self) -> None:
        self.calls = threading.Event()

    def write(self, batch: Sequence[Any]) -> None:
        self.calls.set()
        raise SinkAuthError("401 Unauthorized: bad token")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TestHealthy:
    """A running collector that keeps up."""

    def test_running_collector_is_healthy(self, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
        """Fresh heartbeat, groups caught up, no dead letters: exit 0, with the numbers behind it."""
        with running_collector(redis_url, tmp_path) as collector:
            with emitters(redis_url, "api") as (api,):
                for index in range(5):
                    api.event("request.received", n=index)
                api.error("one error", error_type="RuntimeError")
            wait_for(lambda: collector.counters.acked == 6, what="all acked")
            code, report = _health(redis_url)
            text = cli("health", "--redis-url", redis_url)
        assert code == 0, report["reasons"]
        assert report["status"] == "healthy" and report["reasons"] == []
        events = _stream(report, "events")
        # The cap the emitters recorded next to the stream, not a guess.
        assert events["length"] == 5 and events["maxlen"] == DEFAULT_EVENTS_MAXLEN
        assert events["headroom"] == DEFAULT_EVENTS_MAXLEN - 5
        assert events["memory_bytes"] > 0 and events["first_age_s"] >= events["last_age_s"] >= 0
        (group,) = events["groups"]
        assert group["name"] == "telemetry-collectors" and group["lag"] == 0 and group["pending"] == 0
        assert [c["name"] for c in group["consumers"]] == [collector.consumer]
        (beat,) = report["collectors"]
        assert beat["consumer"] == collector.consumer and beat["status"] == "running" and beat["acked"] >= 0
        assert report["dead_letters"] == 0
        assert text.exit_code == 0 and text.stdout.splitlines()[-1] == "status: healthy"
        assert collector.consumer in text.stdout and "telemetry:events" in text.stdout


class TestDegraded:
    """Each way the pipeline can be unwell gives exit 1 and says why."""

    def test_killed_collector_stale_heartbeat_and_growing_lag(self, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
        """SIGKILL a collector process: its heartbeat goes stale and the backlog grows towards MAXLEN."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "TELEMETRY_LOG_FORMAT": "json"}
        daemon = subprocess.Popen(
            [sys.executable, "-c", "from collector.cli import main; main()", "run", "--redis-url", redis_url,
             "--jsonl-dir", str(tmp_path), "--heartbeat-interval", "5s", "--block-ms", "50", "--consumer", "doomed"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: redis_client.exists("telemetry:collector:doomed"), timeout=60, what="daemon heartbeat")
            assert _health(redis_url, "--events-maxlen", "20")[0] == 0
        finally:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(30)
        with emitters(redis_url, "api") as (api,):
            for index in range(18):
                api.event("request.received", n=index)
        code, report = wait_for(
            lambda: (result := _health(redis_url, "--events-maxlen", "20", "--heartbeat-max-age", "1s"))
            and any("no fresh collector heartbeat" in reason for reason in result[1]["reasons"])
            and result,
            what="a stale heartbeat",
        )
        assert code == 1 and report["status"] == "degraded"
        assert any("telemetry:events group telemetry-collectors: backlog 18" in r and "90% of MAXLEN 20" in r for r in report["reasons"])
        assert report["collectors"][0]["consumer"] == "doomed" and report["collectors"][0]["age_s"] > 1

    def test_dead_letters_over_the_threshold(self, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
        """Garbage entries dead-lettered by a real collector: degraded at --max-dead 0, healthy above the count."""
        with running_collector(redis_url, tmp_path) as collector:
            redis_client.xadd("telemetry:events", {"event": b"\xc1garbage"})
            redis_client.xadd("telemetry:events", {"wrong": b"field"})
            wait_for(lambda: collector.counters.dead_lettered == 2, what="dead letters")
            code, report = _health(redis_url)
            assert code == 1 and report["dead_letters"] == 2
            assert report["reasons"] == ["2 dead letters (limit 0): see 'telemetry-collector dlq list'"]
            assert _health(redis_url, "--max-dead", "2")[0] == 0

    def test_collector_paused_on_credentials(self, redis_url: str, tmp_path: Path) -> None:
        """A sink refusing the credentials pauses the collector; health reports it by name."""
        sink = AuthRefusedSink()
        with running_collector(redis_url, tmp_path, sinks=[sink], shutdown_timeout=1.0) as collector:
            with emitters(redis_url, "api") as (api,):
                api.event("request.received")
            assert sink.calls.wait(20)
            # The sink now runs on a writer thread: let the loop log the refusal before health's output
            # is captured (the CLI runner captures this process's stdout, where that log line goes).
            wait_for(lambda: collector.status == "paused_auth", what="the collector paused")
            code, report = wait_for(
                lambda: (result := _health(redis_url))[0] == 1 and result[1]["collectors"][0]["status"] == "paused_auth" and result,
                what="paused_auth in the heartbeat",
            )
        assert f"collector {collector.consumer} is paused: a sink refused its credentials" in report["reasons"]

    def test_pending_entry_aging(self, redis_url: str, redis_client: redis.Redis) -> None:
        """An entry read by a consumer that never acks is reported once it waited longer than allowed."""
        with emitters(redis_url, "api") as (api,):
            api.event("request.received")
        redis_client.xgroup_create("telemetry:events", "telemetry-collectors", id="0")
        redis_client.xreadgroup("telemetry-collectors", "stuck", {"telemetry:events": ">"})
        code, report = wait_for(
            lambda: (result := _health(redis_url, "--pending-max-idle", "200ms"))
            and any("a pending entry has waited" in r for r in result[1]["reasons"])
            and result,
            what="aging pending entry",
        )
        group = _stream(report, "events")["groups"][0]
        assert code == 1 and group["pending"] == 1 and group["oldest_pending_idle_s"] > 0.2
        assert group["consumers"] == [{"name": "stuck", "pending": 1, "idle_s": pytest.approx(group["consumers"][0]["idle_s"])}]


class TestUnreachable:
    """Exit 2 when Redis cannot answer, quickly enough for a probe."""

    def test_stopped_redis(self, redis_process: RedisProcess) -> None:
        """A Redis that is down: exit 2, one line on stderr (or a JSON status)."""
        url = redis_process.url
        redis_process.stop()
        result = cli("health", "--redis-url", url)
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "unreachable" in result.stderr
        code, report = _health(url)
        assert code == 2 and report["status"] == "unreachable" and report["exit_code"] == 2

    def test_hung_redis_times_out(self, redis_process: RedisProcess) -> None:
        """A Redis that accepts but never answers (SIGSTOP) is unreachable after --timeout, not a hang."""
        redis_process.pause()
        try:
            code, report = _health(redis_process.url, "--timeout", "500ms")
        finally:
            redis_process.resume()
        assert code == 2 and report["status"] == "unreachable" and "did not answer in time" in report["reasons"][0]


class TestAssess:
    """The pure health verdict."""

    def test_lag_beyond_the_stream_means_trimmed_before_delivery(self) -> None:
        """A lag larger than the stream says entries were trimmed before any collector saw them."""
        beat = parse_heartbeat("c1", {b"last_seen": b"100.0", b"status": b"running", b"pid": b"bad"}, now_s=101.0)
        assert beat.consumer == "c1" and beat.pid == 0 and beat.age_s == 1.0
        group = GroupInfo(name="g", consumers=[], pending=0, lag=30, last_delivered_id="1-0", oldest_pending_idle_s=None)
        stream = StreamInfo(kind="events", key="t:events", length=10, memory_bytes=1, maxlen=10,
                            first_age_s=1.0, last_age_s=0.0, groups=[group])  # fmt: skip
        snapshot = Snapshot(redis_url="r", redis_version="7", used_memory=1, streams=[stream], collectors=[beat], dead_letters=0)
        reasons = assess(snapshot, Thresholds())
        assert reasons == [
            "t:events group g: backlog 30 (lag 30, pending 0) is 300% of MAXLEN 10; undelivered entries will be trimmed",
            "t:events group g: 20 entries were trimmed before delivery",
        ]

    def test_heartbeat_verdicts(self) -> None:
        """One fresh collector is enough; a fresh one paused or in backpressure degrades; stale ones only when alone."""
        now = 1000.0

        def beat(name: str, age: float, status: str = "running") -> Heartbeat:
            return parse_heartbeat(name, {b"last_seen": str(now - age).encode(), b"status": status.encode()}, now)

        def verdict(*beats: Heartbeat) -> list[str]:
            snapshot = Snapshot(redis_url="r", redis_version="7", used_memory=1, streams=[], collectors=list(beats), dead_letters=0)
            return assess(snapshot, Thresholds(heartbeat_max_age=30))

        assert verdict(beat("a", 1), beat("old", 120)) == []
        assert verdict(beat("old", 120)) == ["no fresh collector heartbeat: newest is 2m00s old (limit 30s)"]
        assert verdict() == ["no collector heartbeat: is a collector running?"]
        assert verdict(beat("a", 1, "backpressure")) == [
            "collector a is in backpressure: a sink is unavailable, entries wait in Redis"
        ]
        assert verdict(beat("a", 1), beat("old", 120, "paused_auth")) == []  # a stale status is no longer news
