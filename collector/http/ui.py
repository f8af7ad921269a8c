"""``telemetry-collector ui``: the live view on its own, against any Redis.

It reads the streams with XREAD/XRANGE and never joins a consumer group, so
it takes nothing from the collectors. Its ``/metrics`` covers every event
written while it runs (all collectors' shares together): scrape either the
``ui`` or the collectors, not both, or events count twice.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Optional

import click

from collector.config import CollectorConfig
from collector.http.config import DEFAULT_PORT, HttpConfig, is_loopback, read_token
from collector.http.live import StreamFeed
from collector.http.engines import LocalBoard
from collector.http.metrics import EventMetrics
from collector.http.server import HttpServer, LiveView
from collector.logsetup import configure_logging
from collector.tools.command import ToolCommand
from collector.tools.options import Target, url_setting

__all__ = ["ui"]


@click.command("ui", cls=ToolCommand)
@click.option(
    "--redis-url",
    envvar="TELEMETRY_REDIS_URL",
    default="redis://localhost:6379/0",
    show_default=True,
    metavar="URL",
    help="Redis to read (password from $TELEMETRY_REDIS_PASSWORD[_FILE], not the URL).",
)
@click.option(
    "--stream-prefix",
    envvar="TELEMETRY_STREAM_PREFIX",
    default="telemetry",
    show_default=True,
    help="Key prefix of the streams ({prefix}:events, {prefix}:errors, ...).",
)
@click.option("--group", envvar="TELEMETRY_GROUP", default=CollectorConfig().group, show_default=True,
              help="Consumer group whose alert state to show (the ui never joins it).")  # fmt: skip
@click.option("--http-host", "host", envvar="TELEMETRY_HTTP_HOST", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback should set a token.")  # fmt: skip
@click.option("--http-port", "port", envvar="TELEMETRY_HTTP_PORT", type=click.IntRange(1, 65535),
              default=DEFAULT_PORT, show_default=True, help="Port of the dashboard and /metrics.")  # fmt: skip
@click.option("--http-token-file", "token_file", envvar="TELEMETRY_HTTP_TOKEN_FILE", metavar="FILE",
              help="File holding the bearer token to ask for (or set $TELEMETRY_HTTP_TOKEN).")  # fmt: skip
def ui(redis_url: str, stream_prefix: str, group: str, host: str, port: int, token_file: Optional[str]) -> None:
    """Serve the dashboard, /metrics, /healthz and /readyz for the streams of one Redis.

    Runs until SIGTERM or Ctrl-C. Redis may be down at start: /readyz says so
    until it answers.

    \b
      telemetry-collector ui --redis-url redis://redis:6379/0
      open http://127.0.0.1:9464/
    """
    configure_logging("auto", "info")
    try:
        token = read_token(HttpConfig(host=host, port=port, token_file=token_file))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if token is None and not is_loopback(host):
        click.echo(f"warning: --http-host {host} without a token: set $TELEMETRY_HTTP_TOKEN or --http-token-file", err=True)
    target = Target(redis_url, stream_prefix, False, url_setting(click.get_current_context()).origin)
    defaults = CollectorConfig()
    metrics, engines = EventMetrics(), LocalBoard()
    view = LiveView(target, metrics, engines, {"events": defaults.events_maxlen, "errors": defaults.errors_maxlen}, group)
    try:
        server = HttpServer(view, host, port, token)
    except OSError as exc:
        view.close()
        click.echo(f"Error: --http-port: cannot listen on {host}:{port}: {exc.strerror or exc}; pick a free port", err=True)
        raise click.exceptions.Exit(2) from None
    feed = StreamFeed(target, metrics, engines, view.stop).start()
    stopping = threading.Event()

    def handle(signum: int, frame: Optional[FrameType]) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    server.start()
    click.echo(f"serving http://{host}:{server.port}/ (dashboard), /metrics, /healthz, /readyz", err=True)
    stopping.wait()
    server.close()
    feed.join(timeout=5.0)
