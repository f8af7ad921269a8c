"""A real ``telemetry-collector run`` subprocess for tests, and a fixture that always reaps it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest

from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent.parent


class CollectorProcess:
    """One ``telemetry-collector run`` subprocess with JSON logs in a file."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: Optional[str],
        *args: str,
        name: str = "c1",
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.jsonl_dir = tmp_path / f"logs-{name}"
        self.log_path = tmp_path / f"{name}.log"
        config = tmp_path / f"{name}.toml"
        # Settings without a flag: short backoff and stats so a test run sees them happen.
        config.write_text('[collector]\nmax_backoff = "1s"\nstats_interval = "2s"\n')
        self.argv = [
            sys.executable, "-c", "from collector.cli import main; main()", "run",
            "--config", str(config),
            "--jsonl-dir", str(self.jsonl_dir),
            "--log-format", "json",
            "--block-ms", "100",
            "--claim-idle", "1s",
            "--heartbeat-interval", "500ms",
            "--consumer", name,
            *(["--redis-url", redis_url] if redis_url else []),
            *args,
        ]  # fmt: skip
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "CollectorProcess":
        env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEMETRY_", "OTEL_"))}
        env["PYTHONPATH"] = str(ROOT)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        return self

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"event": "raw", "text": line.decode(errors="replace")})
        return entries

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("event") == event]

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self.logged("collector_ready") or self.exited(), timeout, f"{self.name} ready")
        assert not self.exited(), self.log_path.read_text()

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stopped(self) -> bool:
        """Whether the process is in the stopped state (after SIGSTOP)."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


@pytest.fixture
def collectors(tmp_path: Path) -> Iterator[list[CollectorProcess]]:
    """Every CollectorProcess a test appends here is killed at the end, whatever happened."""
    started: list[CollectorProcess] = []
    yield started
    for process in started:
        process.close()


def launch(collectors: list[CollectorProcess], *args: Any, **kwargs: Any) -> CollectorProcess:
    process = CollectorProcess(*args, **kwargs).start()
    collectors.append(process)
    return process
