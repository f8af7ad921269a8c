"""What the demo prints: a live line while traffic runs, and the summary at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click
import msgspec
import redis

from collector.commands.demo_server import DemoServer
from collector.commands.demo_stats import DemoStats, StreamReader
from collector.tools.formatting import format_counts
from emitters.streams import StreamNames

__all__ = ["alert_count", "print_line", "print_summary"]


def _fmt_ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def _rate(count: int, elapsed: float) -> float:
    return count / max(elapsed, 1e-9)


def alert_count(client: redis.Redis, names: StreamNames) -> int:
    """Entries in the alerts stream: taken at the start, so the demo counts only its own."""
    return int(client.xlen(names.alerts))


def print_line(
    elapsed: float,
    server: DemoServer,
    collector: Any,
    reader: StreamReader,
    stats: DemoStats,
    client: redis.Redis,
    names: StreamNames,
    alerts_before: int,
) -> None:
    reader.poll(stats)
    click.echo(
        f"[{elapsed:6.1f}s] requests {server.requests:4d}  completed {stats.completed:4d}  "
        f"errors {stats.errors:3d}  events {_rate(stats.events, elapsed):7.0f}/s  "
        f"batch max {stats.decode_batch_max:2d}  "
        f"TTFT p50 {_fmt_ms(stats.ttft_percentile(50))} p95 {_fmt_ms(stats.ttft_percentile(95))}  "
        f"tokens {_rate(stats.tokens, elapsed):6.0f}/s  collected {collector.counters.acked:5d}  "
        f"alerts {alert_count(client, names) - alerts_before}"
    )


def print_summary(
    elapsed: float,
    server: DemoServer,
    collector: Any,
    stats: DemoStats,
    client: redis.Redis,
    names: StreamNames,
    alerts_before: int,
    jsonl_dir: Path,
) -> None:
    from collector.sinks.jsonl import segment_files

    click.echo("")
    click.echo(f"demo finished after {elapsed:.1f}s")
    click.echo(
        f"  requests        {server.requests} sent over HTTP, {stats.completed} completed, {stats.errors} errors "
        f"({format_counts(stats.error_types, ' x') or 'none'})"
    )
    click.echo(f"  finish reasons  {format_counts(stats.finish_reasons, ' x') or '-'}")
    click.echo(
        f"  TTFT            p50 {_fmt_ms(stats.ttft_percentile(50))}  p95 {_fmt_ms(stats.ttft_percentile(95))}"
    )
    tps = stats.median_decode_tps()
    click.echo(
        f"  tokens          {stats.tokens} generated, {_rate(stats.tokens, elapsed):.0f}/s overall, "
        f"{'-' if tps is None else f'{tps:.0f}'}/s per generation (median)"
    )
    queue = stats.queue_wait_percentile(50)
    click.echo(
        f"  batching        largest decode batch {stats.decode_batch_max}"
        f" (--decode-concurrency {stats.decode_concurrency or '-'}), queue wait p50 {_fmt_ms(queue)}, "
        f"prompt cache hits {stats.cached_prompt_tokens}/{stats.prompt_tokens} prompt tokens"
    )
    click.echo(
        f"  events          {stats.events} read back from the streams ({_rate(stats.events, elapsed):.0f}/s, "
        f"token events on the live channel); collector acked {collector.counters.acked}"
    )
    alerts = client.xrange(names.alerts, min="-", max="+")[alerts_before:]
    click.echo(f"  alerts fired    {len(alerts)} (stream {names.alerts})")
    for _, fields in alerts[-5:]:
        click.echo(f"    - {_alert_text(fields)}")
    click.echo(f"  JSONL           {jsonl_dir}")
    for stem in ("events", "errors", "alerts"):
        for path in segment_files(jsonl_dir, stem)[-1:]:
            click.echo(f"    {path}")


def _alert_text(fields: dict[bytes, bytes]) -> str:
    """One line for an ``{prefix}:alerts`` entry (an ``alert`` field holding a JSON AlertRecord)."""
    from collector.alerts.records import AlertRecord

    try:
        record = msgspec.json.decode(fields[b"alert"], type=AlertRecord)
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
        return "(an alert entry this demo cannot read)"
    return f"{record.rule} [{record.status}] {record.summary}"
