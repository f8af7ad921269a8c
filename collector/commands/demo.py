"""``telemetry-collector demo``: the whole pipeline on one machine, in a minute.

An embedded redis-server (or ``--redis-url``), a collector writing JSONL and
evaluating the default alert rules, and an mlx-lm engine instrumented with one
line, generating a stream of requests with the tiny llama model (built offline
on first use). A few requests fail on purpose, inside mlx-lm's decoding loop,
and one model load fails, so errors and "new error kind" alerts show up too.

The summary is read back from the Redis streams, so it shows what actually
went through the pipeline. Ctrl-C (or SIGTERM) stops the traffic, lets the
collector catch up, and exits 0; a second one exits at once.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

import click
import msgspec
import redis

from collector.config import Config, ConfigError, load_config
from collector.durations import DurationParam
from collector.embedded import RedisNotFound, RedisProcess
from emitters.events import DecodeError, Event, ValidationError, decode
from emitters.mlx import percentile
from emitters.streams import PAYLOAD_FIELD, StreamNames, stream_names

__all__ = ["demo", "DemoStats", "PROMPTS"]

SERVICE = "demo-engine"
PROMPTS = (
    "Explain the difference between a process and a thread to a new engineer.",
    "Write a short poem about autumn leaves falling on a quiet mountain lake.",
    "Summarise the following document in three sentences for a busy reader.",
    "Translate this paragraph into French, keeping the technical terms in English.",
    "What is the capital of France?",
    "Once upon a time there was a small model that wanted to generate stories.",
    "Count from one to ten.",
    "User: hello, how are you today? Assistant:",
)
_PAYLOAD_KEY = PAYLOAD_FIELD.encode()


class InjectedKVCacheError(RuntimeError):
    """A simulated engine fault: raised from inside mlx-lm's decoding loop."""


class InjectedDecodeError(ValueError):
    """A second simulated fault kind, so the errors group into two fingerprints."""


class FailAtStep:
    """A logits processor that raises at a given step: a real failure mid-generation."""

    def __init__(self, step: int, error: Exception) -> None:
        self.step = step
        self.error = error
        self.calls = 0

    def __call__(self, tokens: Any, logits: Any) -> Any:
        self.calls += 1
        if self.calls >= self.step:
            raise self.error
        return logits


# --- what went through the pipeline ---------------------------------------------------------------


@dataclass
class DemoStats:
    """Aggregates of the events read back from the streams (pure; no I/O)."""

    started: int = 0
    completed: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)

    def observe(self, event: Event) -> None:
        kind = event.type
        if kind == "generation.started":
            self.started += 1
        elif kind == "generation.completed":
            self.completed += 1
            self.tokens += event.generation_tokens
            if event.ttft_ms is not None:
                self.ttft_ms.append(event.ttft_ms)
            if event.tokens_per_second is not None:
                self.decode_tps.append(event.tokens_per_second)
            reason = event.finish_reason or "unknown"
            self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + 1
        elif kind == "error":
            self.errors += 1
            self.error_types[event.error_type] = self.error_types.get(event.error_type, 0) + 1

    def ttft_percentile(self, pct: float) -> Optional[float]:
        return percentile(sorted(self.ttft_ms), pct) if self.ttft_ms else None

    def median_decode_tps(self) -> Optional[float]:
        return statistics.median(self.decode_tps) if self.decode_tps else None


class StreamReader:
    """Reads the events and errors streams forward from a starting id."""

    def __init__(self, client: redis.Redis, names: StreamNames, since_ms: int) -> None:
        self.client = client
        self.names = names
        self.cursor = {names.events: f"{since_ms}-0", names.errors: f"{since_ms}-0"}
        self.undecodable = 0

    def poll(self, stats: DemoStats, count: int = 1000) -> None:
        for key in (self.names.events, self.names.errors):
            while True:
                entries = self.client.xrange(key, min=f"({self.cursor[key]}", count=count)
                for entry_id, fields in entries:
                    self.cursor[key] = entry_id.decode()
                    try:
                        stats.observe(decode(fields[_PAYLOAD_KEY]))
                    except (DecodeError, ValidationError, KeyError):
                        self.undecodable += 1
                if len(entries) < count:
                    break


def _fmt_ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}ms"


# --- the engine -----------------------------------------------------------------------------------


class DemoEngine:
    """An mlx-lm engine instrumented with ``instrument(emitter)``, serving demo requests."""

    def __init__(self, emitter: Any, model_dir: Path, *, max_tokens: int, fail_every: int, seed: int) -> None:
        # Everything mlx is imported here, after HF_HUB_OFFLINE is set by the command.
        import mlx_lm

        from emitters.mlx import instrument

        self.mlx_lm = mlx_lm
        self.emitter = emitter
        self.max_tokens = max_tokens
        self.fail_every = fail_every
        self.random = random.Random(seed)
        self.requests = 0
        self.failures = 0
        self.model_dir = model_dir
        # The first generation of each sampling path pays for mlx's lazy set-up
        # (seconds on a cold CPU); warm them up uninstrumented so that TTFT
        # figures describe the steady state.
        from mlx_lm.sample_utils import make_sampler as plain_make_sampler

        model, tokenizer = mlx_lm.load(str(model_dir))
        for warm_sampler in (None, plain_make_sampler(temp=0.7, top_p=0.9), plain_make_sampler(temp=0.7, top_p=0.9, top_k=40)):
            for _ in mlx_lm.stream_generate(model, tokenizer, PROMPTS[0], max_tokens=4, sampler=warm_sampler):
                pass
        self.telemetry = instrument(emitter, heartbeat_interval=5.0)
        self.telemetry.runtime_status("starting", models_loaded=0)
        self.model, self.tokenizer = mlx_lm.load(str(model_dir))
        from mlx_lm.sample_utils import make_sampler  # the instrumented one: settings are reported

        self.make_sampler = make_sampler

    def fail_a_load(self, scratch: Path) -> None:
        """Load a model directory whose weights are missing: an error event, then carry on."""
        broken = scratch / "tiny-llama-missing-weights"
        broken.mkdir(parents=True, exist_ok=True)
        (broken / "config.json").write_text((self.model_dir / "config.json").read_text())
        try:
            self.mlx_lm.load(str(broken))
        except FileNotFoundError:
            self.failures += 1

    def serve_one(self) -> None:
        index = self.requests
        self.requests += 1
        rng = self.random
        processors = None
        if self.fail_every and index % self.fail_every == self.fail_every - 1:
            kind = (index // self.fail_every) % 2
            error: Exception = (
                InjectedKVCacheError(f"KV cache exhausted at position {rng.randint(100, 4000)}")
                if kind == 0
                else InjectedDecodeError(f"invalid UTF-8 continuation byte in token {rng.randint(1, 511)}")
            )
            processors = [FailAtStep(rng.randint(2, 6), error)]
        sampler = self.make_sampler(temp=rng.choice((0.0, 0.7, 1.0)), top_p=0.9, top_k=rng.choice((0, 40)))
        with self.emitter.context(request_id=f"demo-{index:05d}", user_id=f"user-{rng.randrange(25)}"):
            try:
                for _ in self.mlx_lm.stream_generate(
                    self.model, self.tokenizer, rng.choice(PROMPTS),
                    max_tokens=rng.randint(max(1, self.max_tokens // 4), self.max_tokens),
                    sampler=sampler, logits_processors=processors,
                ):  # fmt: skip
                    pass
            except (InjectedKVCacheError, InjectedDecodeError):
                self.failures += 1

    def close(self) -> None:
        from emitters.mlx import uninstrument

        self.telemetry.model_unloaded(self.model, reason="demo finished")
        self.telemetry.runtime_status("shutdown", models_loaded=0)
        uninstrument()


# --- the command ----------------------------------------------------------------------------------


class _Signals:
    """First SIGINT/SIGTERM: stop warmly (set ``stop``); a second one exits at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may own signals; Ctrl-C then stays Python's
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.stop.is_set():
            os.write(2, b"telemetry-collector demo: second signal, exiting now\n")
            os._exit(128 + signum)
        self.stop.set()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


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
        if info is None or info["pending"] or _id(info["last-delivered-id"]) < _id(last):
            return False
    return True


def _id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@click.command(context_settings={"max_content_width": 120})
@click.option("--duration", type=DurationParam(), default="20s", show_default=True,
              help="How long to generate traffic (0: until Ctrl-C or --requests).")
@click.option("--requests", "max_requests", type=click.IntRange(min=1), default=None,
              help="Stop after this many requests.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
              help="Requests per second.")
@click.option("--redis-url", envvar="TELEMETRY_REDIS_URL", show_envvar=True, default=None,
              help="Use this Redis instead of starting an embedded redis-server.")
@click.option("--jsonl-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("logs"),
              show_default=True, help="Where the collector writes events-/errors-/alerts-*.jsonl.")
@click.option("--stream-prefix", default="telemetry", show_default=True, help="Key prefix of the streams.")
@click.option("--max-tokens", type=click.IntRange(min=1, max=2048), default=48, show_default=True,
              help="Upper bound of tokens per request.")
@click.option("--fail-every", type=click.IntRange(min=0), default=10, show_default=True,
              help="Make every Nth request fail inside generation (0: never).")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the tiny model is cached [default: ~/.cache/mlx-telemetry/tiny-llama].")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the traffic pattern.")
@click.option("--interval", "print_every", type=DurationParam(), default="2s", show_default=True,
              help="How often the live summary line is printed.")
def demo(
    duration: float,
    max_requests: Optional[int],
    rate: float,
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
    signals = _Signals(stop)
    signals.install()
    scratch = Path(tempfile.mkdtemp(prefix="telemetry-demo-"))
    try:
        click.echo("building/loading the tiny llama model ...")
        model_path = tiny_model_path(model_dir)
        with _redis(redis_url, scratch) as url:
            _run_demo(
                url, jsonl_dir.resolve(), stream_prefix, model_path, scratch, stop,
                duration=duration, max_requests=max_requests, rate=rate, max_tokens=max_tokens,
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
            # One error path for every command (#17): the setting, its source and the fix; exit 2.
            from collector.exitcodes import Failure
            from collector.redisproblems import RedisProblem, probe
            from collector.tools.common import url_setting

            try:
                probe(url_setting(click.get_current_context()))
            except RedisProblem as exc:
                raise Failure(str(exc)) from None
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
    max_tokens: int,
    fail_every: int,
    seed: int,
    print_every: float,
) -> None:
    from collector.alerts.engine import build_engine
    from collector.daemon import Collector, build_sinks
    from collector.logsetup import configure_logging
    from collector.redisconn import connect
    from emitters import Emitter

    try:
        config = _demo_config(url, jsonl_dir, stream_prefix)
    except ConfigError as exc:  # only --stream-prefix and --jsonl-dir come from the user
        raise click.UsageError(str(exc)) from None
    configure_logging(config.log.format, config.log.level)
    names = stream_names(stream_prefix)
    sinks = build_sinks(config)
    collector = Collector(config, sinks=sinks, alert_engine=build_engine(config, sinks=sinks))
    collector_thread = threading.Thread(target=collector.run, name="demo-collector", daemon=True)
    collector_thread.start()
    emitter = Emitter(
        SERVICE, url, stream_prefix=stream_prefix, token_events="live", hash_secret=secrets.token_hex(16)
    )
    client = connect(url)
    try:
        stats = DemoStats()
        reader = StreamReader(client, names, since_ms=int(time.time() * 1000))
        alerts_before = _xlen(client, names.alerts)
        started = time.monotonic()
        engine = DemoEngine(emitter, model_path, max_tokens=max_tokens, fail_every=fail_every, seed=seed)
        click.echo(
            f"engine ready: model {model_path.name} ({model_path}); "
            f"{rate:g} requests/s, {'until Ctrl-C' if not duration else f'for {duration:g}s'}"
            + (f", at most {max_requests} requests" if max_requests else "")
        )
        engine.fail_a_load(scratch)
        _traffic(engine, stop, rate=rate, duration=duration, max_requests=max_requests, print_every=print_every,
                 report=lambda: _print_line(time.monotonic() - started, engine, emitter, collector, reader, stats,
                                            client, names, alerts_before))  # fmt: skip
        if stop.is_set():
            click.echo("stopping on signal: letting the collector catch up (a second Ctrl-C exits at once)")
        engine.close()
        emitter.flush(10)
        _wait_for_collector(client, config.collector.group, names, collector, timeout=15.0)
        reader.poll(stats)
        _print_summary(
            time.monotonic() - started, engine, emitter, collector, stats, client, names, alerts_before, jsonl_dir
        )
    finally:
        emitter.close(5)
        collector.request_stop()
        collector_thread.join(config.collector.shutdown_timeout + 5)
        client.close()


def _traffic(
    engine: DemoEngine,
    stop: threading.Event,
    *,
    rate: float,
    duration: float,
    max_requests: Optional[int],
    print_every: float,
    report: Callable[[], None],
) -> None:
    """Requests at ``rate`` until the duration, the request count or a signal ends it."""
    start = time.monotonic()
    end = start + duration if duration else float("inf")
    gap = 1.0 / rate
    next_request = start
    next_report = start + print_every
    while not stop.is_set():
        now = time.monotonic()
        if now >= end or (max_requests is not None and engine.requests >= max_requests):
            break
        if now >= next_report:
            report()
            next_report += print_every
        if now >= next_request:
            engine.serve_one()
            # Behind schedule (a slow machine): carry on at the rate, do not burst to catch up.
            next_request = max(next_request + gap, time.monotonic() - gap)
            continue
        stop.wait(min(next_request, next_report, end) - now)


def _xlen(client: redis.Redis, key: str) -> int:
    return int(client.xlen(key))


def _print_line(
    elapsed: float,
    engine: DemoEngine,
    emitter: Any,
    collector: Any,
    reader: StreamReader,
    stats: DemoStats,
    client: redis.Redis,
    names: StreamNames,
    alerts_before: int,
) -> None:
    reader.poll(stats)
    sent = emitter.stats()["sent"]
    click.echo(
        f"[{elapsed:6.1f}s] requests {engine.requests:4d}  completed {stats.completed:4d}  "
        f"errors {stats.errors:3d}  events {sent / max(elapsed, 1e-9):7.0f}/s  "
        f"TTFT p50 {_fmt_ms(stats.ttft_percentile(50))} p95 {_fmt_ms(stats.ttft_percentile(95))}  "
        f"tokens {stats.tokens / max(elapsed, 1e-9):6.0f}/s  collected {collector.counters.acked:5d}  "
        f"alerts {_xlen(client, names.alerts) - alerts_before}"
    )


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


def _print_summary(
    elapsed: float,
    engine: DemoEngine,
    emitter: Any,
    collector: Any,
    stats: DemoStats,
    client: redis.Redis,
    names: StreamNames,
    alerts_before: int,
    jsonl_dir: Path,
) -> None:
    from collector.sinks.jsonl import segment_files

    emitter_stats = emitter.stats()
    click.echo("")
    click.echo(f"demo finished after {elapsed:.1f}s")
    click.echo(
        f"  requests        {engine.requests} sent, {stats.completed} completed, {stats.errors} errors "
        f"({', '.join(f'{name} x{count}' for name, count in sorted(stats.error_types.items())) or 'none'})"
    )
    click.echo(
        f"  finish reasons  {', '.join(f'{k} x{v}' for k, v in sorted(stats.finish_reasons.items())) or '-'}"
    )
    click.echo(
        f"  TTFT            p50 {_fmt_ms(stats.ttft_percentile(50))}  p95 {_fmt_ms(stats.ttft_percentile(95))}"
    )
    tps = stats.median_decode_tps()
    click.echo(
        f"  tokens          {stats.tokens} generated, {stats.tokens / max(elapsed, 1e-9):.0f}/s overall, "
        f"{'-' if tps is None else f'{tps:.0f}'}/s per generation (median)"
    )
    click.echo(
        f"  events          {emitter_stats['sent']} shipped ({emitter_stats['sent'] / max(elapsed, 1e-9):.0f}/s, "
        f"token events on the live channel), dropped {sum(emitter_stats['dropped'].values())}; "
        f"collector acked {collector.counters.acked}"
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
    from collector.alerts.rules import AlertRecord

    try:
        record = msgspec.json.decode(fields[b"alert"], type=AlertRecord)
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
        return "(an alert entry this demo cannot read)"
    return f"{record.rule} [{record.status}] {record.summary}"
