"""Running the collector for the OTLP end-to-end tests: in a thread, or as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from collector.config import Config, load_config
from collector.daemon import Collector

ROOT = Path(__file__).resolve().parent.parent.parent


def wait_until(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        pause.wait(0.05)


def otlp_collector_config(redis_url: str, endpoint: str, **extra: Any) -> Config:
    overrides = {
        "redis.url": redis_url,
        "jsonl.enabled": False,
        "alerts.enabled": False,
        "collector.block_ms": 50,
        "collector.heartbeat_interval": "200ms",
        "collector.max_backoff": "500ms",
        "otlp.endpoint": endpoint,
        "otlp.protocol": "grpc",
        "otlp.metric_export_interval": "300ms",
    }
    overrides.update(extra)
    return load_config(overrides=overrides, environ={})


@contextmanager
def collector_thread(config: Config) -> Iterator[Collector]:
    """A Collector running in a thread; stopped (sinks closed, last interval exported) on exit."""
    collector = Collector(config)
    thread = threading.Thread(target=collector.run, name="collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.request_stop()
        thread.join(60)


class CollectorProcess:
    """``telemetry-collector run`` as a subprocess, configured by environment variables."""

    def __init__(self, log_path: Path, env: dict[str, str], *args: str) -> None:
        self.log_path = log_path
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEMETRY_", "OTEL_"))}
        self.env.update(env, PYTHONPATH=str(ROOT))
        self.argv = [sys.executable, "-c", "from collector.cli import main; main()", "run", "--log-format", "json", *args]
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "CollectorProcess":
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=self.env)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(60)
