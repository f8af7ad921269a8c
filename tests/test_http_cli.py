"""The HTTP server's settings from the user's side: taken ports, token files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from emitters import Emitter
from tests.support.live_view import wait_for


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_ui_on_a_taken_port_exits_2_naming_the_setting(redis_url: str, taken_port: int) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "ui", "--redis-url", redis_url, "--http-port", str(taken_port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: --http-port: cannot listen on 127.0.0.1:{taken_port}")
    assert "Traceback" not in result.stderr


def test_run_with_an_unreadable_token_file_exits_2(redis_url: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "run", "--redis-url", redis_url, "--jsonl-dir", str(tmp_path),
         "--http-token-file", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "http.token_file: cannot read" in result.stderr and "Traceback" not in result.stderr


def test_run_collects_on_when_its_http_port_is_taken(redis_url: str, tmp_path: Path, taken_port: int) -> None:
    """Metrics are secondary: a taken port is logged with the fix, and events still flow."""
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--redis-url", redis_url, "--jsonl-dir", str(tmp_path),
         "--http-port", str(taken_port), "--block-ms", "100", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Emitter("engine-a", redis_url, strict=True) as emitter:
            emitter.event("job.created", job_id="job-1")

        def written() -> bool | None:
            return True if any("job-1" in path.read_text() for path in tmp_path.glob("events-*.jsonl")) else None

        wait_for(written, timeout=20, what="the collector to write the event")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert '"event": "http_server_not_started"' in stderr and "--http-port" in stderr
