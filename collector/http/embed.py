"""The HTTP server inside ``telemetry-collector run``: a metrics stage plus the server.

The metrics stage is a sink like the others (``write``, ``close``), so the
daemon hands it exactly the batches it delivers and nothing reaches into
the daemon; the server reads the daemon's public counters and status.
"""

from __future__ import annotations

from typing import Optional, Sequence

import redis
import structlog

from collector.config import Config
from collector.http.config import is_loopback, read_token
from collector.http.engines import EngineBoard, newest_reports
from collector.http.figures import Daemon
from collector.http.metrics import EventMetrics
from collector.http.server import HttpServer, LiveView
from collector.records import Record
from collector.redisconn import connect
from collector.sinks import SinkUnavailable
from collector.tools.options import Target
from emitters.streams import stream_names

__all__ = ["MetricsSink", "CollectorHttp"]

log = structlog.get_logger("collector.http")


class MetricsSink:
    """Feeds delivered events to the ``/metrics`` aggregates, and engine reports to the shared board.

    The board first: when Redis fails the whole write is retried (SinkUnavailable), and nothing
    was added to the in-memory aggregates yet, so a retry counts nothing twice.
    """

    name = "metrics"

    def __init__(self, metrics: EventMetrics, board: EngineBoard) -> None:
        self.metrics = metrics
        self.board = board

    def write(self, batch: Sequence[Record]) -> None:
        events = [record.event for record in batch]
        try:
            self.board.publish(newest_reports(events))
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            raise SinkUnavailable(f"/metrics: cannot record the engines' newest reports in Redis: {exc}") from None
        self.metrics.observe(events)

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        self.board.client.close()


class CollectorHttp:
    """``http.port`` > 0: the metrics sink now, the server once the daemon exists.

    Raises ValueError naming the setting when the token file is unusable.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.token = read_token(config.http)
        self.metrics = EventMetrics()
        board_client = connect(config.redis.url or "", client_name="telemetry-metrics")
        self.sink = MetricsSink(self.metrics, EngineBoard(board_client, stream_names(config.redis.stream_prefix).engines))
        self.server: Optional[HttpServer] = None

    def start(self, daemon: Daemon) -> None:
        """Serve; a port that cannot be bound is logged and the daemon carries on without it."""
        settings, http = self.config.collector, self.config.http
        target = Target(self.config.redis.url or "", self.config.redis.stream_prefix, False)
        maxlens = {"events": settings.events_maxlen, "errors": settings.errors_maxlen}
        view = LiveView(target, self.metrics, self.sink.board, maxlens, self.config.collector.group, daemon)
        if self.token is None and not is_loopback(http.host):
            log.warning(
                "http_without_token",
                host=http.host,
                action="anyone who reaches this address reads the dashboard: set $TELEMETRY_HTTP_TOKEN or http.token_file",
            )
        try:
            self.server = HttpServer(view, http.host, http.port, self.token).start()
        except OSError as exc:
            view.close()
            log.error(
                "http_server_not_started",
                error=str(exc),
                address=f"{http.host}:{http.port}",
                action="the collector runs on without /metrics: pick a free --http-port (http.port), or 0 for none",
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
