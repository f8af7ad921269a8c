"""Rows of the benchmark table and the machine header."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
from typing import Callable, Literal, Optional

import msgspec

Direction = Literal["<=", ">="]


class Row(msgspec.Struct, kw_only=True):
    """One figure next to its same-run baseline.

    ``ratio`` is figure / baseline; ``target`` applies to the ratio unless
    ``target_on`` says it applies to the figure itself (an absolute bound,
    e.g. p99 latency in ms).
    """

    name: str
    figure: float
    baseline: Optional[float]
    unit: str
    baseline_label: str
    target: Optional[float] = None
    direction: Direction = "<="
    target_on: Literal["ratio", "figure"] = "ratio"
    detail: dict[str, float | str] = {}

    @property
    def ratio(self) -> Optional[float]:
        if self.baseline in (None, 0):
            return None
        return self.figure / self.baseline  # type: ignore[operator]

    @property
    def passed(self) -> Optional[bool]:
        if self.target is None:
            return None
        value = self.ratio if self.target_on == "ratio" else self.figure
        if value is None:
            return None
        return value <= self.target if self.direction == "<=" else value >= self.target

    def to_dict(self) -> dict[str, object]:
        return {
            **msgspec.structs.asdict(self),
            "ratio": self.ratio,
            "passed": self.passed,
        }


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def machine_header(redis_version: str) -> dict[str, str]:
    from redis.utils import HIREDIS_AVAILABLE

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis": redis_version,
        "hiredis": "on" if HIREDIS_AVAILABLE else "off",
        "commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip() or "unknown"  # fmt: skip
    except OSError:
        return "unknown"


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def render_table(header: dict[str, str], rows: list[Row], echo: Callable[[str], None]) -> None:
    echo("mlx-telemetry bench  " + "  ".join(f"{key}={value}" for key, value in header.items()))
    columns = ("row", "figure", "baseline", "ratio", "target", "result")
    table = [columns]
    for row in rows:
        target = "-"
        if row.target is not None:
            target = f"{'ratio' if row.target_on == 'ratio' else 'figure'} {row.direction} {row.target:g}"
        result = {True: "PASS", False: "FAIL", None: "-"}[row.passed]
        table.append(
            (
                row.name,
                f"{_fmt(row.figure)} {row.unit}",
                f"{_fmt(row.baseline)} {row.unit} ({row.baseline_label})" if row.baseline is not None else "-",
                _fmt(row.ratio),
                target,
                result,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for index, line in enumerate(table):
        echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
        if index == 0:
            echo("  ".join("-" * width for width in widths))
