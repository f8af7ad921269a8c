"""The demo's engine: the stock ``mlx_lm.server``, instrumented, driven over HTTP by concurrent clients.

The server is ``python -m emitters.mlx.server`` in a child process serving the
tiny model, exactly as a user would run it; the clients are threads sending
OpenAI-style chat and text completions (some streamed, some carrying a W3C
``traceparent`` as if an upstream gateway had traced them) in bursts, so that
mlx-lm's continuous batching decodes several requests together. Every Nth
request asks for a model that does not exist: the server answers 404 and the
telemetry shows the failed load and the failed request as errors.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from collector.embedded import free_port

__all__ = ["DemoServer", "ServerStartError", "traffic", "PROMPTS", "SERVICE"]

SERVICE = "demo-engine"
PROMPTS = (
    "Explain the difference between a process and a thread to a new engineer.",
    "Write a short poem about autumn leaves falling on a quiet mountain lake.",
    "Summarise the following document in three sentences for a busy reader.",
    "Translate this paragraph into French, keeping the technical terms in English.",
    "What is the capital of France?",
    "Once upon a time there was a small model that wanted to generate stories.",
    "Count from one to ten.",
    "User: hello, how are you today? Assistant:",
)
MISSING_MODEL = "/nonexistent/tiny-llama-missing-weights"
_START_TIMEOUT = 120.0
_REQUEST_TIMEOUT = 120.0


class ServerStartError(RuntimeError):
    """The instrumented server did not come up; the message holds the end of its log."""


class DemoServer:
    """``python -m emitters.mlx.server`` serving the tiny model, and the demo's HTTP clients."""

    def __init__(
        self,
        redis_url: str,
        stream_prefix: str,
        model_dir: Path,
        scratch: Path,
        *,
        max_tokens: int,
        fail_every: int,
        seed: int,
        concurrency: int,
    ) -> None:
        self.max_tokens = max_tokens
        self.fail_every = fail_every
        self.random = random.Random(seed)
        self.requests = 0
        self.failures = 0  # answered with an error status
        self.client_errors = 0  # no answer (connection refused/reset, e.g. the server stopped first)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="demo-client")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / "mlx-server.log"
        # A secret of the run's own, so prompt hashes correlate within it (and the server does not warn).
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TELEMETRY_HASH_SECRET=secrets.token_hex(16))
        argv = [
            sys.executable, "-m", "emitters.mlx.server",
            "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(self.port),
            "--telemetry-redis-url", redis_url, "--telemetry-service", SERVICE,
            "--telemetry-stream-prefix", stream_prefix, "--telemetry-status-interval", "2",
            "--log-level", "WARNING",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        pause = threading.Event()
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pause.wait(0.2)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise ServerStartError(f"the instrumented mlx_lm.server did not start (log {self.log_path}):\n{tail}")

    def warm_up(self) -> None:
        """One request per path, so that mlx's lazy set-up is not counted as TTFT of the traffic."""
        self._post("/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 4}, {})

    def fail_a_load(self) -> None:
        self._send(self._failing())

    def submit(self) -> None:
        """Send one request from a client thread (returns at once)."""
        with self._lock:
            index = self.requests
            self.requests += 1
        failing = self.fail_every and index % self.fail_every == self.fail_every - 1
        self._pool.submit(self._send, self._failing() if failing else self._request(index))

    def _failing(self) -> tuple[str, dict[str, Any], dict[str, str]]:
        return "/v1/completions", {"model": MISSING_MODEL, "prompt": PROMPTS[0], "max_tokens": 8}, {}

    def _request(self, index: int) -> tuple[str, dict[str, Any], dict[str, str]]:
        rng = self.random
        body: dict[str, Any] = {
            "max_tokens": rng.randint(max(1, self.max_tokens // 4), self.max_tokens),
            "temperature": rng.choice((0.0, 0.7, 1.0)),
            "top_p": 0.9,
        }
        if rng.random() < 0.6:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": rng.choice(PROMPTS)}]
            if rng.random() < 0.5:
                body.update(stream=True, stream_options={"include_usage": True})
        else:
            path = "/v1/completions"
            body["prompt"] = rng.choice(PROMPTS)
        headers = {}
        if index % 5 == 0:  # as if a traced gateway had called us
            headers["traceparent"] = f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"
        return path, body, headers

    def _send(self, request: tuple[str, dict[str, Any], dict[str, str]]) -> None:
        try:
            self._post(*request)
        except urllib.error.HTTPError:
            with self._lock:
                self.failures += 1
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            with self._lock:
                self.client_errors += 1

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers}
        )
        with urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT) as reply:
            reply.read()

    def close(self) -> None:
        """Let the clients finish, then stop the server (SIGTERM: it flushes its telemetry)."""
        self._pool.shutdown(wait=True)
        self.stop()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def traffic(
    server: DemoServer,
    stop: threading.Event,
    *,
    rate: float,
    duration: float,
    max_requests: Optional[int],
    print_every: float,
    report: Callable[[], None],
) -> None:
    """Requests at ``rate`` on average, in bursts of 1-4 so that the server batches them,
    until the duration, the request count or a signal ends it."""
    start = time.monotonic()
    end = start + duration if duration else float("inf")
    next_burst = start
    next_report = start + print_every
    rng = random.Random(server.random.random())
    while not stop.is_set():
        now = time.monotonic()
        if now >= end or (max_requests is not None and server.requests >= max_requests):
            break
        if now >= next_report:
            report()
            next_report += print_every
        if now >= next_burst:
            burst = rng.randint(1, 4)
            if max_requests is not None:
                burst = min(burst, max_requests - server.requests)
            for _ in range(burst):
                server.submit()
            # Behind schedule (a slow machine): carry on at the rate, do not burst to catch up.
            next_burst = max(next_burst + burst / rate, time.monotonic() - 1.0 / rate)
            continue
        stop.wait(min(next_burst, next_report, end) - now)
