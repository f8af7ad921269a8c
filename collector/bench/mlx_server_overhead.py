"""Row 7b: what the instrumentation costs the stock ``mlx_lm.server`` under concurrent load.

Two servers serve the tiny model side by side: ``python -m mlx_lm.server`` and
``python -m emitters.mlx.server`` (same flags, Redis running, collector not
needed: the emitter ships to Redis either way). Each round sends the same burst
of concurrent chat completions to one, then the other, alternating the order
per round so that drift in machine load hits both alike; only the loaded
server works, the other idles. Per round and side: tokens/s (the replies'
``usage.completion_tokens`` over the burst's wall time) and the server
process's CPU per token (from ``/proc``, so Linux only; None elsewhere).

``overhead_pct`` is the median over rounds of the paired tokens/s ratio;
``spread_pct`` its min and max; ``cpu_overhead_pct`` the same for CPU per token.

Run it alone: ``python -m collector.bench.mlx_server_overhead [--quick]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from collector.bench.report import Row

__all__ = ["measure_server_overhead", "server_overhead_row", "TARGET_PCT"]

TARGET_PCT = 1.0
PROMPT = "Write a short poem about autumn leaves falling on a quiet mountain lake."
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class _Server:
    def __init__(self, module: str, model: Path, extra: list[str], log: Path) -> None:
        from collector.embedded import free_port

        self.port = free_port()
        argv = [sys.executable, "-m", module, "--model", str(model), "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "WARNING", *extra]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TELEMETRY_HASH_SECRET="bench")
        with log.open("ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise RuntimeError(f"{module} did not start: {log.read_text(errors='replace')[-2000:]}")

    def cpu_seconds(self) -> Optional[float]:
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def chat(self, max_tokens: int, index: int) -> int:
        body = {"messages": [{"role": "user", "content": f"{index}: {PROMPT}"}], "max_tokens": max_tokens}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as reply:
            return int(json.loads(reply.read())["usage"]["completion_tokens"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _burst(server: _Server, pool: ThreadPoolExecutor, clients: int, requests: int, max_tokens: int) -> tuple[float, Optional[float]]:
    """(tokens/s, CPU seconds per token) of one burst of ``clients * requests`` chat completions."""
    cpu = server.cpu_seconds()
    wall = time.perf_counter()
    tokens = sum(pool.map(lambda i: server.chat(max_tokens, i), range(clients * requests)))
    wall = time.perf_counter() - wall
    cpu_after = server.cpu_seconds()
    cpu_per_token = (cpu_after - cpu) / tokens if cpu is not None and cpu_after is not None else None
    return tokens / wall, cpu_per_token


def measure_server_overhead(
    redis_url: Optional[str] = None,
    *,
    rounds: int = 10,
    clients: int = 8,
    requests: int = 4,
    max_tokens: int = 64,
    model_dir: Optional[str] = None,
) -> dict[str, Any]:
    """A/B of the plain and the instrumented server; see the module docstring."""
    import tempfile

    from collector.embedded import RedisProcess
    from collector.tinymodel import tiny_model_path

    redis_server = None if redis_url else RedisProcess().start()
    url = redis_url or redis_server.url  # type: ignore[union-attr]
    model = tiny_model_path(model_dir)
    scratch = Path(tempfile.mkdtemp(prefix="bench-mlx-server-"))
    servers: dict[str, _Server] = {}
    try:
        servers["plain"] = _Server("mlx_lm.server", model, [], scratch / "plain.log")
        servers["instrumented"] = _Server(
            "emitters.mlx.server", model,
            ["--telemetry-redis-url", url, "--telemetry-stream-prefix", "bench:mlx-server"],
            scratch / "instrumented.log",
        )  # fmt: skip
        results: dict[str, list[tuple[float, Optional[float]]]] = {"plain": [], "instrumented": []}
        with ThreadPoolExecutor(clients) as pool:
            for side in ("plain", "instrumented"):  # warm-up: mlx's lazy set-up, the prompt cache
                _burst(servers[side], pool, clients, 1, max_tokens)
            for round_index in range(rounds):
                for side in ("plain", "instrumented") if round_index % 2 == 0 else ("instrumented", "plain"):
                    results[side].append(_burst(servers[side], pool, clients, requests, max_tokens))
        ratios = [inst[0] / plain[0] for plain, inst in zip(results["plain"], results["instrumented"])]
        overheads = [(1.0 / ratio - 1.0) * 100.0 for ratio in ratios]  # extra time per token, %
        cpu_pairs = [(p[1], i[1]) for p, i in zip(results["plain"], results["instrumented"]) if p[1] and i[1]]
        cpu_overheads = [(inst / plain - 1.0) * 100.0 for plain, inst in cpu_pairs]
        plain_cpu = statistics.median(p for p, _ in cpu_pairs) * 1e6 if cpu_pairs else None
        inst_cpu = statistics.median(i for _, i in cpu_pairs) * 1e6 if cpu_pairs else None
        return {
            "plain_tokens_per_second": statistics.median(r[0] for r in results["plain"]),
            "instrumented_tokens_per_second": statistics.median(r[0] for r in results["instrumented"]),
            "overhead_pct": statistics.median(overheads),
            "spread_pct": [min(overheads), max(overheads)],
            "plain_cpu_us_per_token": plain_cpu,
            "instrumented_cpu_us_per_token": inst_cpu,
            "cpu_overhead_pct": statistics.median(cpu_overheads) if cpu_overheads else None,
            "cpu_spread_pct": [min(cpu_overheads), max(cpu_overheads)] if cpu_overheads else None,
            "target_pct": TARGET_PCT,
            "rounds": rounds,
            "clients": clients,
            "requests_per_round": clients * requests,
            "max_tokens": max_tokens,
        }
    finally:
        for server in servers.values():
            server.stop()
        if redis_server is not None:
            redis_server.close()


def server_overhead_row(result: dict[str, Any]) -> Row:
    """The result as a bench-table row: instrumented vs plain server tokens/s under concurrent load."""
    return Row(
        name="7b mlx_lm.server instrumented, tokens/s",
        figure=result["instrumented_tokens_per_second"],
        baseline=result["plain_tokens_per_second"],
        unit="tok/s",
        baseline_label="plain mlx_lm.server",
        target=1.0 - result["target_pct"] / 100.0,
        direction=">=",
        detail={
            "ab_overhead_pct": result["overhead_pct"],
            "spread_pct": "{:.2f}..{:.2f}".format(*result["spread_pct"]),
            "cpu_overhead_pct": result["cpu_overhead_pct"] if result["cpu_overhead_pct"] is not None else "n/a",
            "plain_cpu_us_per_token": result["plain_cpu_us_per_token"] or "n/a",
            "instrumented_cpu_us_per_token": result["instrumented_cpu_us_per_token"] or "n/a",
            "rounds": result["rounds"],
            "requests_per_round": result["requests_per_round"],
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="mlx_lm.server instrumentation overhead (tiny model)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client per round")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, 1 request per client, 16 tokens")
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.requests, options.max_tokens = 2, 1, 16
    result = measure_server_overhead(
        options.redis_url, rounds=options.rounds, clients=options.clients, requests=options.requests,
        max_tokens=options.max_tokens,
    )  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
