"""The live view's HTTP server: stdlib ``ThreadingHTTPServer``, one thread per request.

=================  ==========================================================================
``/metrics``       Prometheus text format (:mod:`collector.http.metrics`, :mod:`.figures`)
``/healthz``       200 while the process serves requests
``/readyz``        200 when Redis answers a PING and no sink is paused, else 503 with the reason
``/``              the dashboard (files of ``collector/http/static``)
``/api/...``       the dashboard's JSON (:mod:`collector.http.views`) and ``/api/tail`` (SSE)
=================  ==========================================================================

With a bearer token every path but the two probes asks for it: an
``Authorization: Bearer`` header (Prometheus' ``authorization`` scrape
setting), or the cookie a browser gets by opening ``/?token=...`` once.
"""

from __future__ import annotations

import hmac
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Mapping, Optional
from urllib.parse import parse_qs, urlsplit

import msgspec
import redis
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from collector.http import views
from collector.http.engines import Board, EngineFigures
from collector.http.figures import PAUSED_STATUSES, Daemon, PipelineFigures
from collector.http.live import follow, matching
from collector.http.metrics import EventMetrics
from collector.tools.filters import EventFilter
from collector.tools.options import Target

__all__ = ["LiveView", "HttpServer", "TOKEN_COOKIE"]

log = structlog.get_logger("collector.http")

TOKEN_COOKIE = "telemetry_token"
PROBES = ("/healthz", "/readyz")
PROBE_TIMEOUT_S = 2.0
SSE_KEEPALIVE_S = 5.0
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
_json = msgspec.json.Encoder()


class LiveView:
    """What the server shows: one Redis, the event metrics, the engines' board, and the daemon it runs in (if any)."""

    def __init__(
        self,
        target: Target,
        metrics: EventMetrics,
        engines: Board,
        maxlens: Mapping[str, int],
        alert_group: str,
        daemon: Optional[Daemon] = None,
    ) -> None:
        self.target = target
        self.alert_group = alert_group  # alert state belongs to a consumer group
        self.names = target.names
        self.daemon = daemon
        self.client = target.connect("http", timeout=PROBE_TIMEOUT_S)
        self.figures = PipelineFigures(target, self.client, maxlens, daemon)
        self.registry = CollectorRegistry(auto_describe=False)
        # Counters first: the daemon acks only after the metrics sink took a batch, so event
        # metrics read afterwards cover at least every entry the scrape counts as acked.
        self.registry.register(self.figures)
        self.registry.register(metrics)
        self.registry.register(EngineFigures(engines))
        self.stop = threading.Event()

    def not_ready(self) -> Optional[str]:
        """Why the process is not ready, or None."""
        try:
            self.client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return f"redis unreachable: {exc}"
        if self.daemon is not None and self.daemon.status in PAUSED_STATUSES:
            return f"sinks paused: collector status {self.daemon.status}"
        return None

    def overview(self) -> dict[str, Any]:
        snapshot = self.figures.snapshot()
        return views.overview(self.client, self.names, snapshot, self.figures.collectors(snapshot))

    def close(self) -> None:
        self.stop.set()
        self.client.close()


def _static(name: str) -> Optional[bytes]:
    files = resources.files("collector.http") / "static"
    for entry in files.iterdir():
        if entry.name == name and entry.is_file():
            return entry.read_bytes()
    return None


class _Handler(BaseHTTPRequestHandler):
    server: "HttpServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http_request", client=self.client_address[0], line=format % args)

    # -- answers --

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _data(self, value: Any) -> None:
        self._send(HTTPStatus.OK, _json.encode(value), "application/json")

    # -- routing --

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        if url.path not in PROBES and not self._authorized(url.path, query):
            return
        route = self.server.routes.get(url.path)
        try:
            if route is not None:
                route(self, query)
            elif url.path.startswith("/static/") and (body := _static(url.path[8:])) is not None:
                suffix = url.path[url.path.rfind(".") :]
                self._send(HTTPStatus.OK, body, STATIC_TYPES.get(suffix, "application/octet-stream"))
            else:
                self._text(HTTPStatus.NOT_FOUND, f"not found: {url.path}")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, _json.encode({"error": f"redis unreachable: {exc}"}), "application/json")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left

    def _authorized(self, path: str, query: Mapping[str, str]) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        cookie = next(
            (part.split("=", 1)[1] for part in self.headers.get("Cookie", "").split("; ") if part.startswith(TOKEN_COOKIE + "=")),
            "",
        )
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()) or hmac.compare_digest(cookie.encode(), token.encode()):
            return True
        if path == "/" and hmac.compare_digest(query.get("token", "").encode(), token.encode()):
            cookie_value = f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie_value})
            return False
        self._send(
            HTTPStatus.UNAUTHORIZED,
            b"unauthorized: send 'Authorization: Bearer <token>' (the http token), or open /?token=<token> once\n",
            "text/plain; charset=utf-8",
            {"WWW-Authenticate": "Bearer"},
        )
        return False


# -- the routes --


def _healthz(handler: _Handler, query: Mapping[str, str]) -> None:
    handler._text(HTTPStatus.OK, "ok")


def _readyz(handler: _Handler, query: Mapping[str, str]) -> None:
    reason = handler.server.view.not_ready()
    handler._text(HTTPStatus.OK if reason is None else HTTPStatus.SERVICE_UNAVAILABLE, reason or "ready")


def _metrics(handler: _Handler, query: Mapping[str, str]) -> None:
    handler._send(HTTPStatus.OK, generate_latest(handler.server.view.registry), CONTENT_TYPE_LATEST)


def _index(handler: _Handler, query: Mapping[str, str]) -> None:
    handler._send(HTTPStatus.OK, _static("index.html") or b"", STATIC_TYPES[".html"])


def _overview(handler: _Handler, query: Mapping[str, str]) -> None:
    handler._data(handler.server.view.overview())


def _errors(handler: _Handler, query: Mapping[str, str]) -> None:
    view = handler.server.view
    handler._data(views.error_groups(view.client, view.names))


def _alerts(handler: _Handler, query: Mapping[str, str]) -> None:
    view = handler.server.view
    handler._data(views.alerts(view.client, view.names, view.alert_group))


def _timeline(handler: _Handler, query: Mapping[str, str]) -> None:
    wanted = query.get("id", "").strip()
    if not wanted:
        handler._text(HTTPStatus.BAD_REQUEST, "id: give a request, trace or job id (?id=...)")
        return
    view = handler.server.view
    handler._data(views.timeline(view.client, view.names, wanted))


def _tail(handler: _Handler, query: Mapping[str, str]) -> None:
    """Server-sent events: one ``data:`` line per new event that passes the filters."""
    severity = query.get("severity") or None
    event_filter = EventFilter(
        services=tuple(query["service"].split(",")) if query.get("service") else (),
        types=tuple(query["type"].split(",")) if query.get("type") else (),
        min_severity=severity if severity in ("debug", "info", "warn", "error", "critical") else None,
        request_id=query.get("request_id") or None,
        trace_id=query.get("trace_id") or None,
    )
    handler.send_response(HTTPStatus.OK)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.close_connection = True
    write = handler.wfile.write
    write(b"retry: 2000\n: following\n\n")
    handler.wfile.flush()
    view = handler.server.view
    last_write = time.monotonic()
    try:
        for rows in follow(view.target, query.get("live") == "1", view.stop):
            for row in matching(rows, event_filter):
                write(b"data: " + _json.encode(views.wire_event(row)) + b"\n\n")
                last_write = time.monotonic()
            if time.monotonic() - last_write >= SSE_KEEPALIVE_S:  # a comment: a gone client fails the write
                write(b": keepalive\n\n")
                last_write = time.monotonic()
            handler.wfile.flush()
    except (redis.ConnectionError, redis.TimeoutError):
        # The headers are out: end the stream; the browser reconnects after `retry`.
        write(b": redis unreachable\n\n")


Route = Callable[[_Handler, Mapping[str, str]], None]
ROUTES: dict[str, Route] = {
    "/healthz": _healthz,
    "/readyz": _readyz,
    "/metrics": _metrics,
    "/": _index,
    "/api/overview": _overview,
    "/api/errors": _errors,
    "/api/alerts": _alerts,
    "/api/timeline": _timeline,
    "/api/tail": _tail,
}


class HttpServer(ThreadingHTTPServer):
    """Serves a :class:`LiveView` from a background thread; :meth:`close` stops it."""

    daemon_threads = True  # an open SSE stream must not hold the process
    routes = ROUTES

    def __init__(self, view: LiveView, host: str, port: int, token: Optional[str]) -> None:
        super().__init__((host, port), _Handler)
        self.view = view
        self.token = token
        self._thread = threading.Thread(target=self.serve_forever, name="telemetry-http", daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> "HttpServer":
        self._thread.start()
        log.info("http_server_started", url=f"http://{self.server_address[0]}:{self.port}/", auth="bearer" if self.token is not None else "none")
        return self

    def close(self) -> None:
        self.view.close()
        self.shutdown()
        self.server_close()
