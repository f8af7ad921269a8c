"""Real processes for the mlx-lm server tests: the instrumented ``mlx_lm.server`` and a collector.

Both are subprocesses started the way a user starts them; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]

__all__ = ["free_port", "wait_for", "ServerProcess", "CollectorRun", "jsonl_events"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEMETRY_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TELEMETRY_HASH_SECRET"] = "test-secret"
    return env


class ServerProcess:
    """``python -m emitters.mlx.server`` on a free loopback port."""

    def __init__(self, model_dir: Path, redis_url: str, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.argv = [
            sys.executable, "-m", "emitters.mlx.server",
            "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--telemetry-redis-url", redis_url, "--telemetry-service", "mlx-server-test",
            "--telemetry-status-interval", "0.5", *extra,
        ]  # fmt: skip
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 60) -> "ServerProcess":
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
        wait_for(lambda: self._healthy() or self.proc.poll() is not None, timeout, "mlx_lm.server /health")
        assert self.proc.poll() is None, self.log_path.read_text()
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return False

    def post(self, path: str, body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
        """A non-streaming request, or a streaming one read to the end: the reply's id and usage."""
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            if not body.get("stream"):
                return json.loads(reply.read())
            chunks = [
                json.loads(line[len(b"data: "):])
                for line in reply.read().splitlines()
                if line.startswith(b"data: {")
            ]  # fmt: skip
        usage = next(chunk["usage"] for chunk in chunks if chunk.get("usage"))
        return {"id": chunks[0]["id"], "usage": usage, "streamed": len(chunks)}

    def post_and_hang_up(self, path: str, body: dict[str, Any]) -> str:
        """Start a streaming request, read its first chunk, close the connection: its id."""
        payload = json.dumps(body).encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
            )
            received = b""
            while b"data: {" not in received or not received.endswith(b"\n\n"):
                received += conn.recv(65536)
            first = received.split(b"data: ", 1)[1].split(b"\n\n", 1)[0]
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        return json.loads(first)["id"]

    def stop(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class CollectorRun:
    """``telemetry-collector run`` writing JSONL into ``jsonl_dir``."""

    def __init__(self, redis_url: str, jsonl_dir: Path, log_path: Path) -> None:
        self.jsonl_dir = jsonl_dir
        self.log_path = log_path
        self.argv = [
            sys.executable, "-c", "from collector.cli import main; main()", "run",
            "--redis-url", redis_url, "--jsonl-dir", str(jsonl_dir),
            "--log-format", "json", "--block-ms", "100",
        ]  # fmt: skip
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "CollectorRun":
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
        wait_for(
            lambda: b"collector_ready" in self.log_path.read_bytes() or self.proc.poll() is not None,
            60,
            "collector ready",
        )
        assert self.proc.poll() is None, self.log_path.read_text()
        return self

    def stop(self, timeout: float = 20) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def jsonl_events(directory: Path) -> list[dict[str, Any]]:
    """Every event the collector wrote to ``events-*.jsonl`` and ``errors-*.jsonl``."""
    events = []
    for path in sorted(directory.glob("*.jsonl")):
        if path.name.startswith(("events-", "errors-")):
            events.extend(json.loads(line) for line in path.read_bytes().splitlines() if line.strip())
    return events
