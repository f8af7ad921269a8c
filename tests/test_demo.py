"""`telemetry-collector demo`: the whole pipeline with the tiny model, as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx_lm")

import redis  # noqa: E402

from collector.commands.demo_stats import DemoStats  # noqa: E402
from emitters.events import ErrorEvent, GenerationCompleted, GenerationStarted, TokenGenerated  # noqa: E402
from tests.mlx_fixtures import tiny_model_dir  # noqa: E402,F401 - a fixture, used by name

pytestmark = pytest.mark.mlx

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "from collector.cli import main; main()", "demo"]
_ENVELOPE: dict[str, Any] = {
    "id": "0" * 32, "ts": 1, "service": "demo-engine", "host": "h", "pid": 1,
    "trace_id": "1" * 32, "span_id": "2" * 16,
}  # fmt: skip


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TELEMETRY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _jsonl(directory: Path, stem: str) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob(f"{stem}-*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def _completed(seconds: float, ttft: float, tokens: int = 10) -> GenerationCompleted:
    return GenerationCompleted(
        **_ENVELOPE, model="m", request_id="r", prompt_tokens=5, generation_tokens=tokens,
        duration_ms=seconds * 1000, ttft_ms=ttft, tokens_per_second=tokens / seconds, finish_reason="length",
    )  # fmt: skip


class TestDemoStats:
    def test_aggregates_generations_and_errors(self) -> None:
        """Counts, token totals, finish reasons and error types add up per event type."""
        stats = DemoStats()
        stats.observe(GenerationStarted(**_ENVELOPE, model="m", request_id="r"))
        stats.observe(TokenGenerated(**_ENVELOPE, model="m", request_id="r", token="a", index=0))
        stats.observe(_completed(0.5, 20.0, tokens=10))
        stats.observe(_completed(0.25, 40.0, tokens=5))
        stats.observe(ErrorEvent(**_ENVELOPE, message="boom", error_type="KVCacheError"))
        assert (stats.started, stats.completed, stats.errors, stats.tokens) == (1, 2, 1, 15)
        assert stats.finish_reasons == {"length": 2}
        assert stats.error_types == {"KVCacheError": 1}
        assert stats.median_decode_tps() == 20.0

    def test_ttft_percentiles(self) -> None:
        """p50/p95 of TTFT come from the completed generations; none without any."""
        stats = DemoStats()
        assert stats.ttft_percentile(50) is None
        for ttft in range(1, 101):
            stats.observe(_completed(1.0, float(ttft)))
        assert stats.ttft_percentile(50) == pytest.approx(50.0, abs=1)
        assert stats.ttft_percentile(95) == pytest.approx(95.0, abs=1)


@pytest.mark.slow
class TestDemoCommand:
    def test_runs_end_to_end_into_jsonl(
        self, tmp_path: Path, tiny_model_dir: Path, redis_url: str, redis_client: redis.Redis  # noqa: F811
    ) -> None:
        """A 5 s demo against a given Redis: the real server's generations and errors reach JSONL."""
        logs = tmp_path / "logs"
        result = subprocess.run(
            [*CLI, "--duration", "5", "--rate", "5", "--fail-every", "4", "--jsonl-dir", str(logs),
             "--model-dir", str(tiny_model_dir), "--redis-url", redis_url, "--interval", "1s"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "demo finished" in result.stdout
        assert "TTFT" in result.stdout
        completed = [line for line in _jsonl(logs, "events") if line["type"] == "generation.completed"]
        assert completed, result.stdout + result.stderr
        assert all(line["service"] == "demo-engine" and line["generation_tokens"] > 0 for line in completed)
        assert all(line["ttft_ms"] > 0 for line in completed)
        errors = _jsonl(logs, "errors")
        # Requests for a model that does not exist: the failed load and the failed request.
        assert {line["error_type"].rsplit(".", 1)[-1] for line in errors} == {"HFValidationError"}
        assert {line["context"]["operation"] for line in errors} == {"load", "request"}
        # Bursts of concurrent HTTP clients: mlx-lm's BatchGenerator decoded several together.
        assert max(line.get("decode_batch_max", 0) for line in completed) > 1
        loaded = [line for line in _jsonl(logs, "events") if line["type"] == "model.loaded"]
        assert loaded and loaded[0]["parameters"] > 0
        # The demo's collector used a group of its own and removed it (and its alert state) on exit.
        groups = {g["name"].decode(): g for g in redis_client.xinfo_groups("telemetry:events")}
        assert "telemetry-demo" not in groups and not redis_client.keys("telemetry:alerts:telemetry-demo:*")

    def test_ctrl_c_ends_cleanly(self, tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
        """SIGINT mid-run: the traffic stops, the collector catches up, exit status 0."""
        logs = tmp_path / "logs"
        process = subprocess.Popen(
            [*CLI, "--duration", "0", "--rate", "5", "--jsonl-dir", str(logs), "--model-dir", str(tiny_model_dir)],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            poll = threading.Event()
            for _ in range(1200):  # up to 120 s on a loaded machine
                if any(line["type"] == "generation.completed" for line in _jsonl(logs, "events")):
                    break
                assert process.poll() is None, process.communicate()[0]
                poll.wait(0.1)
            else:
                pytest.fail("no generation.completed reached the JSONL files")
            process.send_signal(signal.SIGINT)
            output, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0, output
        assert "stopping on signal" in output
        assert "demo finished" in output

    def test_unreachable_redis_is_a_clear_error(self, tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
        """A --redis-url nobody listens on: exit 2 (collector.exitcodes) and a message naming the problem."""
        from collector.embedded import free_port

        result = subprocess.run(
            [*CLI, "--duration", "1", "--model-dir", str(tiny_model_dir), "--jsonl-dir", str(tmp_path),
             "--redis-url", f"redis://127.0.0.1:{free_port()}/0"],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2
        assert "cannot reach Redis" in result.stderr

    def test_bad_rate_exits_2(self) -> None:
        """--rate must be positive; click reports the option."""
        result = subprocess.run(
            [*CLI, "--rate", "0"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2
        assert "--rate" in result.stderr
