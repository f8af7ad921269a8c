"""Row 7: what the mlx-lm instrumentation costs a generating engine.

Tokens/s of the tiny llama model through mlx-lm's own ``stream_generate`` and
through the instrumented one (token events in live mode, Redis running, the
emitter's worker thread shipping), interleaved in one process: every round runs
both, in alternating order, so drift in machine load hits both sides alike.
``overhead_pct`` is the median over rounds of the paired per-token time ratio.

On a small, shared machine the difference of two wall-clock timings is noisier
than the effect, so the cost is also accounted for directly, in CPU time:

- ``hot_path_us``: the instrumented loop's own work per token (clock, record,
  emit into the buffer), timed on its own with the thread's CPU clock;
- ``worker_us_per_token``: CPU the emitter's shipping thread spent during the
  instrumented runs, per token (read from that thread's CPU clock);
- ``per_token_cost_us`` = the two together, and ``cpu_overhead_pct`` = that
  against the engine's CPU time per token without instrumentation.

Redis's own CPU per token (``redis_us_per_token``) is reported too: it is spent
in another process, on another core when there is one.

Run it alone: ``python -m collector.bench.mlx_overhead [--quick]`` (prints JSON).
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import statistics
import threading
import time
from array import array
from typing import Any, Callable, Iterator, Optional

import redis

from collector.bench.report import Row

__all__ = ["measure_overhead", "overhead_row", "TARGET_PCT"]

TARGET_PCT = 1.0
PROMPT = "Write a short poem about autumn leaves falling on a quiet mountain lake."
_WORKER_THREAD = "mlx-telemetry-emitter"


class _Run:
    __slots__ = ("tokens", "wall", "cpu")

    def __init__(self, tokens: int, wall: float, cpu: float) -> None:
        self.tokens = tokens
        self.wall = wall
        self.cpu = cpu


def _generate(stream: Callable[..., Iterator[Any]], model: Any, tokenizer: Any, prompt: list[int], max_tokens: int) -> _Run:
    last = None
    cpu = time.process_time()
    wall = time.perf_counter()
    for last in stream(model, tokenizer, prompt, max_tokens=max_tokens):
        pass
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    if last is None:
        raise RuntimeError("mlx-lm generated nothing")
    return _Run(last.generation_tokens, wall, cpu)


def _worker_idents() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.name == _WORKER_THREAD and t.ident is not None}


def _thread_cpu_clock(ident: Optional[int]) -> Optional[Callable[[], float]]:
    """CPU seconds of a thread, where the platform can read another thread's clock (not macOS)."""
    getclockid = getattr(time, "pthread_getcpuclockid", None)
    if getclockid is None or ident is None:
        return None
    clock_id = getclockid(ident)
    return lambda: time.clock_gettime(clock_id)


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _hot_path_us(emitter: Any, calls: int) -> float:
    """CPU µs per token of the instrumented loop's own work, as the wrapper does it."""
    ctx = contextvars.copy_context()
    scope = emitter.context(request_id="bench-hot-path")
    ctx.run(scope.__enter__)
    times = array("d")
    mark = times.append
    run = ctx.run
    emit = emitter.token_generated
    clock = time.perf_counter
    try:
        start = time.thread_time()
        for index in range(calls):
            mark(clock())
            run(emit, "tiny-llama", "bench-hot-path", " leaves", index)
        return (time.thread_time() - start) / calls * 1e6
    finally:
        ctx.run(scope.__exit__, None, None, None)


def measure_overhead(
    redis_url: Optional[str] = None,
    *,
    rounds: int = 20,
    max_tokens: int = 128,
    warmup: int = 3,
    hot_path_calls: int = 5_000,
    flush_interval: Optional[float] = None,
    model_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Tokens/s with and without instrumentation, and the per-token cost; see the module docstring.

    With no ``redis_url`` an embedded redis-server is started for the run.
    ``flush_interval`` overrides the emitter's default, to show its effect.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlx_lm.generate import stream_generate as plain_stream
    from mlx_lm.utils import load

    from collector.embedded import RedisProcess
    from collector.tinymodel import tiny_model_path
    from emitters import Emitter
    from emitters.mlx import Instrumentation, register_model

    server = None if redis_url else RedisProcess().start()
    url = redis_url or server.url  # type: ignore[union-attr]
    options: dict[str, Any] = {} if flush_interval is None else {"flush_interval": flush_interval}
    emitter = Emitter(
        "bench-engine", url, stream_prefix="bench:mlx", token_events="live", hash_secret="bench",
        buffer_size=100_000, **options,
    )  # fmt: skip
    client = redis.Redis.from_url(url)
    # The emitter starts its worker on the first event: the new worker thread is ours.
    other_workers = _worker_idents()
    try:
        path = tiny_model_path(model_dir)
        model, tokenizer = load(str(path))
        register_model(model, "tiny-llama", str(path))
        prompt = tokenizer.encode(PROMPT)
        instrumented = Instrumentation(emitter).stream_generate
        for _ in range(warmup):
            _generate(plain_stream, model, tokenizer, prompt, max_tokens)
            _generate(instrumented, model, tokenizer, prompt, max_tokens)
        emitter.flush(30)
        worker_clock = _thread_cpu_clock(next(iter(_worker_idents() - other_workers), None))

        plain_runs: list[_Run] = []
        instrumented_runs: list[_Run] = []
        worker_cpu = 0.0
        redis_cpu = 0.0
        for round_index in range(rounds):
            for side in ("plain", "instrumented") if round_index % 2 == 0 else ("instrumented", "plain"):
                if side == "plain":
                    plain_runs.append(_generate(plain_stream, model, tokenizer, prompt, max_tokens))
                    continue
                worker_before = worker_clock() if worker_clock else 0.0
                redis_before = _redis_cpu(client)
                instrumented_runs.append(_generate(instrumented, model, tokenizer, prompt, max_tokens))
                # Shipping what this run emitted belongs to its cost, though it is not timed.
                emitter.flush(30)
                worker_cpu += (worker_clock() if worker_clock else 0.0) - worker_before
                redis_cpu += _redis_cpu(client) - redis_before
        hot_path_us = _hot_path_us(emitter, hot_path_calls)
        emitter.flush(30)

        plain_per_token = [run.wall / run.tokens for run in plain_runs]
        inst_per_token = [run.wall / run.tokens for run in instrumented_runs]
        ratios = [inst / plain for plain, inst in zip(plain_per_token, inst_per_token)]
        instrumented_tokens = sum(run.tokens for run in instrumented_runs)
        plain_cpu_us = statistics.median(run.cpu / run.tokens for run in plain_runs) * 1e6
        worker_us = worker_cpu / instrumented_tokens * 1e6 if worker_clock else None
        per_token_cost_us = hot_path_us + (worker_us or 0.0)
        stats = emitter.stats()
        return {
            "plain_tokens_per_second": 1.0 / statistics.median(plain_per_token),
            "instrumented_tokens_per_second": 1.0 / statistics.median(inst_per_token),
            "overhead_pct": (statistics.median(ratios) - 1.0) * 100.0,
            "per_token_cost_us": per_token_cost_us,
            "cpu_overhead_pct": per_token_cost_us / plain_cpu_us * 100.0,
            "hot_path_us": hot_path_us,
            "worker_us_per_token": worker_us,
            "redis_us_per_token": redis_cpu / instrumented_tokens * 1e6,
            "plain_cpu_us_per_token": plain_cpu_us,
            "target_pct": TARGET_PCT,
            "rounds": rounds,
            "max_tokens": max_tokens,
            "flush_interval": emitter.flush_interval,
            "token_events": emitter.token_events,
            "events_sent": stats["sent"],
            "events_dropped": sum(stats["dropped"].values()),
        }
    finally:
        client.close()
        emitter.close(10)
        if server is not None:
            server.close()


def overhead_row(result: dict[str, Any]) -> Row:
    """The result as a bench-table row: instrumentation CPU per token vs a plain token's CPU."""
    return Row(
        name="7 mlx-lm instrumentation, CPU per token",
        figure=result["per_token_cost_us"],
        baseline=result["plain_cpu_us_per_token"],
        unit="us",
        baseline_label="uninstrumented token",
        target=result["target_pct"] / 100.0,
        direction="<=",
        detail={
            "plain_tokens_per_second": result["plain_tokens_per_second"],
            "instrumented_tokens_per_second": result["instrumented_tokens_per_second"],
            "ab_overhead_pct": result["overhead_pct"],
            "hot_path_us": result["hot_path_us"],
            "worker_us_per_token": result["worker_us_per_token"] if result["worker_us_per_token"] is not None else "n/a",
            "redis_us_per_token": result["redis_us_per_token"],
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="mlx-lm instrumentation overhead (tiny model)")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--flush-interval", type=float, default=None, help="emitter flush interval (s)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds of 16 tokens")
    options = parser.parse_args()
    if options.quick:
        options.rounds, options.max_tokens = 3, 16
    result = measure_overhead(
        options.redis_url, rounds=options.rounds, max_tokens=options.max_tokens, flush_interval=options.flush_interval
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
