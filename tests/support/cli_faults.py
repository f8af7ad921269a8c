"""Real things a new user points the CLI at by mistake, and a way to run the CLI as they would.

- :class:`NotRedis`: an HTTP server on loopback (a port that answers, but not in RESP).
- :class:`Silent`: a port that accepts connections and never answers.
- :func:`run_cli`: ``telemetry-collector ARGS`` as a real process, with this
  checkout first on ``PYTHONPATH`` and a clean ``TELEMETRY_*`` environment.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Mapping, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[2]


class Run(NamedTuple):
    code: int
    stdout: str
    stderr: str


def clean_env(extra: Optional[Mapping[str, str]] = None, home: Optional[Path] = None) -> dict[str, str]:
    """The caller's environment without any TELEMETRY_*/OTEL_* setting, plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TELEMETRY_", "OTEL_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env["NO_COLOR"] = "1"
    if home is not None:
        env["HOME"] = str(home)
    env.update(extra or {})
    return env


def run_cli(
    args: list[str],
    env: Optional[Mapping[str, str]] = None,
    *,
    cwd: Optional[Path] = None,
    timeout: float = 60,
) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "collector", *args],
        env=clean_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr)


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


class NotRedis:
    """An HTTP server on a loopback port: what `--redis-url redis://host:8080` reaches."""

    def __init__(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "NotRedis":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """A port that accepts connections (the kernel's backlog) and never says a word."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> "Silent":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()
