"""`telemetry-collector bench`: the table is produced; timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collector.bench.report import Row, render_table


class TestRow:
    def test_ratio_target_passes_and_fails(self) -> None:
        """A ratio target is judged on figure/baseline in the stated direction."""
        cheap = Row(name="r", figure=5, baseline=100, unit="ns", baseline_label="b", target=0.1)
        dear = Row(name="r", figure=50, baseline=100, unit="ns", baseline_label="b", target=0.1)
        fast = Row(name="r", figure=90, baseline=100, unit="ev/s", baseline_label="b", target=0.8, direction=">=")
        assert (cheap.ratio, cheap.passed) == (0.05, True)
        assert dear.passed is False
        assert fast.passed is True

    def test_absolute_target_is_judged_on_the_figure(self) -> None:
        """An absolute bound (p99 ms, RSS MB) ignores the baseline."""
        row = Row(name="r", figure=60, baseline=5, unit="ms", baseline_label="b", target=50, target_on="figure")
        assert row.passed is False and row.ratio == 12

    def test_table_has_a_line_per_row(self) -> None:
        """The rendered table carries the header, every row and its verdict."""
        lines: list[str] = []
        rows = [
            Row(name="1 emit", figure=1, baseline=20, unit="ns", baseline_label="otel", target=0.1),
            Row(name="6 rss", figure=40, baseline=None, unit="MB", baseline_label="", target=80, target_on="figure"),
        ]
        render_table({"cores": "2"}, rows, lines.append)
        assert lines[0].startswith("mlx-telemetry bench") and "cores=2" in lines[0]
        assert any(line.startswith("1 emit") and line.endswith("PASS") for line in lines)
        assert any(line.startswith("6 rss") and line.endswith("PASS") for line in lines)


@pytest.mark.slow
class TestQuickRun:
    def test_quick_run_produces_every_row(self, tmp_path) -> None:
        """`bench --quick --json` runs every part against an embedded Redis and reports rows 1-7 (and 4a)."""
        result = subprocess.run(
            [sys.executable, "-m", "collector", "bench", "--quick", "--json"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads(result.stdout)
        assert {"cores", "python", "redis", "hiredis"} <= set(report["header"])
        assert report["header"]["hiredis"] == "on"
        numbers = sorted(row["name"].split()[0] for row in report["rows"])
        from collector.bench.otelcol_bench import otelcol_binary

        with_otelcol = ["4b", "4c"] if otelcol_binary() else []  # only with the optional OTel Collector binary
        assert numbers == sorted(["1", "2", "3", "4", "4a", "5", "6", "7", *with_otelcol])
        for row in report["rows"]:
            assert row["figure"] > 0, row
            if row["name"].startswith("4a"):
                assert row["target"] is None and row["passed"] is None, row  # informational
            else:
                assert row["target"] is not None and row["passed"] in (True, False), row
