"""``telemetry-collector demo``: the whole pipeline on one machine, in a minute.

An embedded redis-server (or ``--redis-url``), a collector writing JSONL and
evaluating the default alert rules, and the stock ``mlx_lm.server`` instrumented
(``python -m emitters.mlx.server``) serving the tiny llama model (built offline
on first use) to concurrent HTTP clients, so mlx-lm's continuous batching is
what the telemetry shows. A few requests ask for a model that does not exist,
so errors and "new error kind" alerts show up too (see ``demo_server``).

The summary is read back from the Redis streams, so it shows what actually
went through the pipeline. Ctrl-C (or SIGTERM) stops the traffic, lets the
collector catch up, and exits 0; a second one exits at once.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import click
import redis

from collector.commands.demo_report import alert_count, print_line, print_summary
from collector.commands.demo_server import DemoServer, ServerStartError, traffic
from collector.commands.demo_stats import DemoStats, StreamReader
from collector.config import Config, ConfigError, load_config
from collector.durations import DurationParam
from collector.embedded import RedisNotFound, RedisProcess
from collector.records import parse_id
from collector.shutdown import StopSignals
from emitters.streams import StreamNames, stream_names

__all__ = ["demo"]


def _demo_config(redis_url: str, jsonl_dir: Path, stream_prefix: str) -> Config:
    # The user's TELEMETRY_* environment is for their daemon, not for the demo.
    return load_config(
        None,
        {
            "redis.url": redis_url,
            "redis.stream_prefix": stream_prefix,
            "jsonl.dir": str(jsonl_dir),
            # A group of its own: the demo must not take entries from a real collector.
            "collector.group": "telemetry-demo",
            "collector.consumer": f"demo-{socket.gethostname()}-{os.getpid()}",
            "collector.block_ms": 200,
            "collector.heartbeat_interval": "1s",
            "log.format": "console",
            "log.level": "warning",
        },
        environ={},
    )


def _caught_up(client: redis.Redis, group: str, keys: tuple[str, ...]) -> bool:
    """Has ``group`` read and acked everything in ``keys``?"""
    for key in keys:
        try:
            last = client.xinfo_stream(key)["last-generated-id"]
            groups = {g["name"]: g for g in client.xinfo_groups(key)}
        except redis.ResponseError:
            continue  # the stream does not exist: nothing to catch up on
        info = groups.get(group.encode()) or groups.get(group)
        if info is None or info["pending"] or parse_id(info["last-delivered-id"]) < parse_id(last):
            return False
    return True


@click.command(context_settings={"max_content_width": 120})
@click.option("--duration", type=DurationParam(), default="20s", show_default=True,
              help="How long to generate traffic (0: until Ctrl-C or --requests).")
@click.option("--requests", "max_requests", type=click.IntRange(min=1), default=None,
              help="Stop after this many requests.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=6.0, show_default=True,
              help="Requests per second (sent in bursts of 1-4).")
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="HTTP clients sending requests at the same time.")
@click.option("--redis-url", envvar="TELEMETRY_REDIS_URL", show_envvar=True, default=None,
              help="Use this Redis instead of starting an embedded redis-server.")
@click.option("--jsonl-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("logs"),
              show_default=True, help="Where the collector writes events-/errors-/alerts-*.jsonl.")
@click.option("--stream-prefix", default="telemetry", show_default=True, help="Key prefix of the streams.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=2048), default=48, show_default=True,
              help="Upper bound of tokens per request.")
@click.option("--fail-every", type=click.IntRange(min=0), default=10, show_default=True,
              help="Make every Nth request ask for a model that does not exist (0: never).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the tiny model is cached [default: ~/.cache/mlx-telemetry/tiny-llama].")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the traffic pattern.")
@click.option("--interval", "print_every", type=DurationParam(), default="2s", show_default=True,
              help="How often the live summary line is printed.")
def demo(
    duration: float,
    max_requests: Optional[int],
    rate: float,
    concurrency: int,
    redis_url: Optional[str],
    jsonl_dir: Path,
    stream_prefix: str,
    max_tokens: int,
    fail_every: int,
    model_dir: Optional[Path],
    seed: int,
    print_every: float,
) -> None:
    """Run Redis, a collector and an instrumented tiny mlx-lm engine, and watch the telemetry.

    Prints a live summary (events/s, generations, TTFT p50/p95, tokens/s,
    errors, alerts) and where the JSONL files are. Ctrl-C ends it cleanly.
    """
    # Nothing in the demo may reach the network; set before Hugging Face libraries load.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if print_every <= 0:
        raise click.BadParameter("must be > 0", param_hint="--interval")
    try:
        import mlx_lm  # noqa: F401 - checked here for a clear message
    except ImportError:
        raise click.ClickException("the demo needs mlx-lm: pip install 'mlx-telemetry[mlx]'") from None

    from collector.tinymodel import tiny_model_path

    stop = threading.Event()
    signals = StopSignals(stop.set, name="telemetry-collector demo")
    signals.install()
    scratch = Path(tempfile.mkdtemp(prefix="telemetry-demo-"))
    try:
        click.echo("building/loading the tiny llama model ...")
        model_path = tiny_model_path(model_dir)
        with _redis(redis_url, scratch) as url:
            _run_demo(
                url, jsonl_dir.resolve(), stream_prefix, model_path, scratch, stop,
                duration=duration, max_requests=max_requests, rate=rate, concurrency=concurrency, max_tokens=max_tokens,
                fail_every=fail_every, seed=seed, print_every=print_every,
            )  # fmt: skip
    finally:
        signals.restore()
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)


class _redis:
    """The Redis to use: ``--redis-url`` (checked), or an embedded one for the run."""

    def __init__(self, url: Optional[str], scratch: Path) -> None:
        self.url = url
        self.scratch = scratch
        self.server: Optional[RedisProcess] = None

    def __enter__(self) -> str:
        if self.url:
            from collector.tools.options import check_redis_url

            check_redis_url()
            return self.url
        data_dir = self.scratch / "redis"
        data_dir.mkdir()
        try:
            self.server = RedisProcess(data_dir=data_dir).start()
        except (RedisNotFound, RuntimeError, TimeoutError) as exc:
            raise click.ClickException(f"cannot start the embedded Redis: {exc}") from None
        click.echo(f"embedded redis-server on {self.server.url}")
        return self.server.url

    def __exit__(self, *exc_info: object) -> None:
        if self.server is not None:
            self.server.stop()


def _run_demo(
    url: str,
    jsonl_dir: Path,
    stream_prefix: str,
    model_path: Path,
    scratch: Path,
    stop: threading.Event,
    *,
    duration: float,
    max_requests: Optional[int],
    rate: float,
    concurrency: int,
    max_tokens: int,
    fail_every: int,
    seed: int,
    print_every: float,
) -> None:
    from collector.logsetup import configure_logging
    from collector.pipeline import build_collector, leave_group
    from collector.redisconn import connect

    try:
        config = _demo_config(url, jsonl_dir, stream_prefix)
    except ConfigError as exc:  # only --stream-prefix and --jsonl-dir come from the user
        raise click.UsageError(str(exc)) from None
    configure_logging(config.log.format, config.log.level)
    names = stream_names(stream_prefix)
    collector = build_collector(config)
    collector_thread = threading.Thread(target=collector.run, name="demo-collector", daemon=True)
    collector_thread.start()
    client = connect(url)
    server: Optional[DemoServer] = None
    try:
        stats = DemoStats()
        reader = StreamReader(client, names, since_ms=int(time.time() * 1000))
        alerts_before = alert_count(client, names)
        started = time.monotonic()
        click.echo("starting the instrumented mlx_lm.server (python -m emitters.mlx.server) ...")
        try:
            server = DemoServer(
                url, stream_prefix, model_path, scratch,
                max_tokens=max_tokens, fail_every=fail_every, seed=seed, concurrency=concurrency,
            )  # fmt: skip
        except ServerStartError as exc:
            raise click.ClickException(str(exc)) from None
        server.warm_up()
        click.echo(
            f"mlx_lm.server ready on {server.url}: model {model_path.name} ({model_path}); "
            f"{rate:g} requests/s from {concurrency} clients, {'until Ctrl-C' if not duration else f'for {duration:g}s'}"
            + (f", at most {max_requests} requests" if max_requests else "")
        )
        server.fail_a_load()
        running = server
        traffic(running, stop, rate=rate, duration=duration, max_requests=max_requests, print_every=print_every,
                report=lambda: print_line(time.monotonic() - started, running, collector, reader, stats,
                                           client, names, alerts_before))  # fmt: skip
        if stop.is_set():
            click.echo("stopping on signal: letting the collector catch up (a second Ctrl-C exits at once)")
        server.close()
        _wait_for_collector(client, config.collector.group, names, collector, timeout=15.0)
        reader.poll(stats)
        print_summary(time.monotonic() - started, server, collector, stats, client, names, alerts_before, jsonl_dir)
    finally:
        if server is not None:
            server.stop()
        collector.request_stop()
        collector_thread.join(config.collector.shutdown_timeout + 5)
        # The demo's group is its own: left behind it would hold back trimming and degrade `health`.
        leave_group(client, config)
        client.close()


def _wait_for_collector(
    client: redis.Redis, group: str, names: StreamNames, collector: Any, *, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline and not collector.stopped.is_set():
        if _caught_up(client, group, (names.errors, names.events)):
            return
        pause.wait(0.1)
    click.echo("the collector did not catch up in time; what it has not acked stays pending in Redis", err=True)

