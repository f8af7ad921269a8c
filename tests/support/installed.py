"""What ``pip install -e .`` put next to this interpreter."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def console_script() -> str:
    """The telemetry-collector that pip installed next to this interpreter."""
    candidate = Path(sys.executable).with_name("telemetry-collector")
    found = str(candidate) if candidate.exists() else shutil.which("telemetry-collector")
    if found is None:
        pytest.fail("telemetry-collector is not installed (pip install -e .)")
    return found
