"""The live view under test: a real ``collector run`` or ``ui`` process and plain HTTP against it."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, TypeVar

import msgspec
import redis

from collector.embedded import free_port
from emitters.streams import PAYLOAD_FIELD, stream_names

T = TypeVar("T")


class LiveProcess:
    """A ``telemetry-collector`` subprocess serving HTTP on a free loopback port."""

    def __init__(self, argv: Sequence[str], port: int, env: Optional[Mapping[str, str]] = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collector", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        wait_for(lambda: self.get("/healthz")[0] == 200 or None, timeout=20, what=f"{argv[0]} serving /healthz", process=self)

    @classmethod
    def collector(cls, redis_url: str, tmp: Path, *extra: str, env: Optional[Mapping[str, str]] = None) -> "LiveProcess":
        port = free_port()
        argv = ["run", "--redis-url", redis_url, "--http-port", str(port), "--jsonl-dir", str(tmp / "logs"),
                "--block-ms", "100", "--heartbeat-interval", "1s", "--log-format", "json", *extra]  # fmt: skip
        return cls(argv, port, env)

    @classmethod
    def ui(cls, redis_url: str, *extra: str, env: Optional[Mapping[str, str]] = None) -> "LiveProcess":
        port = free_port()
        return cls(["ui", "--redis-url", redis_url, "--http-port", str(port), *extra], port, env)

    def get(self, path: str, headers: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0, ""

    def stderr_tail(self) -> str:
        return "(running)" if self.process.poll() is None else self.process.stderr.read().decode()[-3000:]  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()  # type: ignore[union-attr]


def wait_for(
    check: Callable[[], Optional[T]], *, timeout: float, what: str, process: Optional[LiveProcess] = None
) -> T:
    """Poll ``check`` until it returns something other than None."""
    pause = threading.Event()
    deadline = threading.Timer(timeout, pause.set)
    deadline.start()
    try:
        while True:
            result = check()
            if result is not None:
                return result
            if pause.is_set():
                detail = f"; stderr: {process.stderr_tail()}" if process is not None else ""
                raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
            pause.wait(0.1)
    finally:
        deadline.cancel()


def add_client_report(client: redis.Redis, service: str, *, dropped: dict[str, int], sent: int, reconnects: int, high_water: int) -> None:
    """A ``client.report`` entry as an emitter writes it (only emitters send these, so it goes in raw).

    The counts travel both as the typed event's fields and flattened in ``attrs``
    (``dropped.<reason>``), the form a collector without the typed event reads.
    """
    counts = {"sent": sent, "reconnects": reconnects, "buffer_high_water": high_water}
    payload = {
        "v": 1, "id": secrets.token_hex(16), "ts": time.time_ns(), "type": "client.report", "service": service,
        "host": socket.gethostname()[:255] or "unknown", "pid": os.getpid(), "severity": "info",
        "trace_id": secrets.token_hex(16), "span_id": secrets.token_hex(8),
        "dropped": dropped, "dropped_total": sum(dropped.values()), "interval_s": 10.0, **counts,
        "attrs": {**{f"dropped.{reason}": count for reason, count in dropped.items()}, **counts},
    }  # fmt: skip
    client.xadd(stream_names().events, {PAYLOAD_FIELD: msgspec.msgpack.encode(payload)})
