"""The operator tools under test: the CLI in-process or as a real process, and what they leave in Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import redis
from click.testing import CliRunner, Result

from collector.cli import main

REPO = Path(__file__).resolve().parent.parent.parent


def cli(*args: str, input: Optional[str] = None, env: Optional[dict[str, str]] = None) -> Result:
    """Run ``telemetry-collector ARGS`` in-process (through the lazy group, like the console script)."""
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def tool_process(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.Popen[str]:
    """``telemetry-collector ARGS`` as a real process (stdout/stderr piped, text)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", "from collector.cli import main; main()", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def blocked_in_xread(client: redis.Redis, name: str) -> bool:
    """Whether a client named ``name`` is waiting in a blocking XREAD."""
    return any(c.get("name") == name and c.get("cmd") == "xread" for c in client.client_list())


def group_pending(client: redis.Redis, key: str) -> dict[str, int]:
    """Pending count per consumer group of ``key``."""
    return {g["name"].decode(): g["pending"] for g in client.xinfo_groups(key)}
