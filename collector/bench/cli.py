"""`telemetry-collector bench`: one table, every figure next to a same-run baseline."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Callable, Optional

import click

from collector.bench.report import Row, machine_header, render_table

_PARTS = ("emit", "throughput", "collector", "otlp", "latency", "mlx", "mlx-server")
# #11: row 7b starts two mlx_lm.server processes (~1 min); run it with --only mlx-server.
_DEFAULT_PARTS = tuple(part for part in _PARTS if part != "mlx-server")


@click.command()
@click.option(
    "--redis-url", envvar="TELEMETRY_REDIS_URL", show_envvar=True, default=None, help="Use this Redis instead of an embedded one."
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run with small sizes (CI): figures are not meaningful and never judged (exit 0 even with FAIL rows).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the header and rows as JSON.")
@click.option(
    "--only",
    type=click.Choice(_PARTS),
    multiple=True,
    help="Run only these parts (repeatable): emit, throughput, collector, otlp, latency, mlx, "
    "mlx-server (row 7b, not run by default).",
)
def bench(redis_url: Optional[str], quick: bool, as_json: bool, only: tuple[str, ...]) -> None:
    """Measure the pipeline against baselines run in this same process.

    Rows: 1 emit() cost vs the OTel SDK Logger.emit; 2 emitter throughput vs bare
    pipelined XADD; 3 collector throughput (JSONL, fsync per batch) vs a bare
    XREADGROUP+decode+XACK loop; 4 events->OTLP encoding vs the SDK's encode_logs;
    5 end-to-end latency emit->JSONL line at 5,000 ev/s; 6 collector peak RSS;
    7 mlx-lm instrumentation overhead (with the mlx extra).
    """
    from collector.embedded import RedisProcess

    parts = set(only or _DEFAULT_PARTS)
    server = None
    if redis_url is not None:
        from collector.tools.options import check_redis_url

        check_redis_url()
    if redis_url is None:
        server = RedisProcess().start()
        redis_url = server.url
    rows: list[Row] = []
    progress: Callable[[str], None] = (lambda text: None) if as_json else (lambda text: click.echo(text, err=True))
    try:
        import redis

        client = redis.Redis.from_url(redis_url)
        header = machine_header(client.info("server")["redis_version"])
        client.close()
        header["mode"] = "quick" if quick else "full"
        rows = _run_parts(redis_url, parts, quick, progress)
    finally:
        if server is not None:
            server.close()
    if as_json:
        click.echo(json.dumps({"header": header, "rows": [row.to_dict() for row in rows]}, indent=2))
    else:
        render_table(header, rows, click.echo)
        for row in rows:
            if row.detail:
                click.echo(f"  {row.name}: " + ", ".join(f"{k}={_short(v)}" for k, v in row.detail.items()))
        if quick:
            click.echo(QUICK_NOTE)
    if not rows:
        sys.exit(1)


QUICK_NOTE = (
    "--quick never judges: sizes are too small for the targets, so PASS/FAIL above means nothing "
    "and the exit status is 0; run without --quick for figures to compare"
)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _run_parts(redis_url: str, parts: set[str], quick: bool, progress: Callable[[str], None]) -> list[Row]:
    from collector.bench import collector_bench, emitter_bench

    rows: list[Row] = []
    if "emit" in parts:
        progress("row 1: emit() hot path ...")
        rows.append(emitter_bench.bench_emit_hot_path(redis_url, calls=1_000 if quick else 20_000, repeats=3 if quick else 7))
    if "throughput" in parts:
        progress("row 2: emitter throughput ...")
        rows.append(emitter_bench.bench_emitter_throughput(redis_url, events=5_000 if quick else 100_000, repeats=1 if quick else 3))
    if "collector" in parts:
        progress("rows 3, 6: collector throughput and RSS ...")
        payload = emitter_bench.sample_completed_payload()
        rows += collector_bench.bench_collector_jsonl(
            redis_url, payload, events=5_000 if quick else 200_000, repeats=1 if quick else 3
        )
    if "otlp" in parts:
        progress("row 4: OTLP encoding and collector throughput ...")
        rows.append(_otlp_encoding_row(events=500 if quick else 20_000, repeat=1 if quick else 5))
        rows.append(
            collector_bench.bench_collector_otlp(
                redis_url, emitter_bench.sample_completed_payload(), events=2_000 if quick else 50_000, repeats=1 if quick else 2
            )
        )
        # #12: next to the OpenTelemetry Collector, when its binary is installed (an optional peer).
        from collector.bench.otelcol_bench import bench_against_otelcol

        rows += bench_against_otelcol(redis_url, events=2_000 if quick else 20_000, repeats=1 if quick else 3)
    if "latency" in parts:
        progress("row 5: end-to-end latency ...")
        rows.append(collector_bench.bench_end_to_end_latency(redis_url, rate=5_000, seconds=1 if quick else 10))
    if "mlx" in parts and importlib.util.find_spec("mlx_lm") is not None:
        progress("row 7: mlx-lm instrumentation overhead ...")
        from collector.bench.mlx_overhead import measure_overhead, overhead_row

        result = measure_overhead(redis_url, rounds=2 if quick else 20, max_tokens=16 if quick else 128, warmup=1 if quick else 3)
        rows.append(overhead_row(result))
    if "mlx-server" in parts and importlib.util.find_spec("mlx_lm") is not None:
        # --- #11: the stock mlx_lm.server under concurrent load, plain vs instrumented ---
        progress("row 7b: mlx_lm.server instrumentation overhead ...")
        from collector.bench.mlx_server_overhead import measure_server_overhead, server_overhead_row

        server_result = measure_server_overhead(
            redis_url, rounds=2 if quick else 10, requests=1 if quick else 4, max_tokens=16 if quick else 64
        )
        rows.append(server_overhead_row(server_result))
    return rows


def _otlp_encoding_row(*, events: int, repeat: int) -> Row:
    from collector.bench.otlp_encoding import bench_encoding, sample_events

    result = bench_encoding(sample_events(events), repeat)
    return Row(
        name="4 events->OTLP logs encoding",
        figure=float(result["ours_events_per_s"]),
        baseline=float(result["sdk_events_per_s"]),
        unit="ev/s",
        baseline_label="SDK encode_logs",
        target=3.0,
        direction=">=",
        detail={"events": result["events"], "ours_bytes": result["ours_bytes"], "sdk_bytes": result["sdk_bytes"]},
    )
