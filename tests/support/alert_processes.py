"""`telemetry-collector run` processes for the alert tests, and how to feed and watch them."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest
import redis

from collector.alerts.records import AlertRecord
from collector.embedded import RedisProcess
from emitters.events import Event, encode
from emitters.streams import stream_names
from tests.support.alerts import stream_alerts
from tests.support.installed import console_script
from tests.support.waiting import wait_for

NAMES = stream_names("telemetry")
GROUP = "telemetry-collectors"


def clean_env() -> dict[str, str]:
    """The test's environment without TELEMETRY_*/OTEL_* settings that would change the collector."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("TELEMETRY_", "OTEL_"))}
    env["TELEMETRY_HASH_SECRET"] = "alerts-e2e"
    return env


class CollectorProcess:
    """`telemetry-collector run` as a child process, its output in ``<name>.log``."""

    def __init__(
        self, tmp_path: Path, redis_url: str, config: str, name: str, *extra: str, env: Optional[dict[str, str]] = None
    ) -> None:
        self.name = name
        self.env = {**clean_env(), **(env or {})}
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(config)
        self.log_path = tmp_path / f"{name}.log"
        self.argv = [
            console_script(), "run",
            "--config", str(self.config_path),
            "--redis-url", redis_url,
            "--consumer", name,
            "--jsonl-dir", str(tmp_path / "logs"),
            "--log-format", "json",
            "--block-ms", "100",
            "--heartbeat-interval", "200ms",
            *extra,
        ]  # fmt: skip
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self, client: redis.Redis) -> "CollectorProcess":
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_for(
            lambda: client.exists(NAMES.heartbeat(self.name)) or self._exited(),
            timeout=60,
            what=f"collector {self.name} to start",
        )
        assert self.process.poll() is None, f"collector {self.name} exited: {self.output()[-2000:]}"
        return self

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def collectors(redis_server: RedisProcess, tmp_path: Path) -> Iterator[Any]:
    started: list[CollectorProcess] = []
    client = redis_server.client()

    def start(config: str, name: str = "c1", *extra: str, env: Optional[dict[str, str]] = None) -> CollectorProcess:
        process = CollectorProcess(tmp_path, redis_server.url, config, name, *extra, env=env).start(client)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    client.close()


def add(client: redis.Redis, events: Sequence[Event]) -> None:
    """XADD ``events`` in one transaction: a collector reads them all in one batch."""
    pipe = client.pipeline(transaction=True)
    for event in events:
        stream = NAMES.errors if event.type == "error" or event.severity in ("error", "critical") else NAMES.events
        pipe.xadd(stream, {"event": encode(event)})
    pipe.execute()


def drained(client: redis.Redis, group_name: str = GROUP) -> bool:
    """Every entry of both streams delivered to the group and acked."""
    for stream in (NAMES.errors, NAMES.events):
        if not client.exists(stream):
            continue
        groups = {group["name"]: group for group in client.xinfo_groups(stream)}
        group = groups.get(group_name.encode(), groups.get(group_name))
        if group is None or group["pending"] or group["lag"]:
            return False
    return True


def settle(client: redis.Redis, ticks: float = 2.5, *groups: str) -> None:
    """Wait until the groups have acked everything, then for a few alert ticks on top."""
    for group in groups or (GROUP,):
        wait_for(lambda: drained(client, group), timeout=60, what=f"the collectors of {group} to drain the streams")
    threading.Event().wait(ticks)


def alerts_of(client: redis.Redis, rule: str, status: Optional[str] = None) -> list[AlertRecord]:
    return [alert for alert in stream_alerts(client) if alert.rule == rule and status in (None, alert.status)]
