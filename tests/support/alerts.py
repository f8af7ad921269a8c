"""Events, records and configs the alert tests build (no fixtures: plain helpers)."""

from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence

import msgspec
import redis

from collector.alerts.config import AlertsConfig
from collector.alerts.records import AlertRecord
from collector.alerts.stage import AlertStage
from collector.alerts.state import AlertState
from collector.durations import dec_hook
from collector.records import Record
from emitters.streams import stream_names
from emitters.events import CustomEvent, ErrorEvent, Event, GenerationCompleted, RuntimeStatus, encode, is_error

_alert = msgspec.json.Decoder(AlertRecord)


def envelope(ts: float, service: str = "engine", **fields: Any) -> dict[str, Any]:
    base = {
        "id": secrets.token_hex(16),
        "ts": int(ts * 1e9),
        "service": service,
        "host": "test-host",
        "pid": 4242,
        "trace_id": secrets.token_hex(16),
        "span_id": secrets.token_hex(8),
    }
    base.update(fields)
    return base


def error_event(
    ts: float, *, service: str = "engine", severity: str = "error", error_type: str = "ValueError", **fields: Any
) -> ErrorEvent:
    return ErrorEvent(
        **envelope(ts, service, severity=severity, error_type=error_type, message=fields.pop("message", "boom"), **fields)
    )


def completed(ts: float, *, ttft_ms: float, service: str = "engine", model: str = "tiny", **fields: Any) -> GenerationCompleted:
    return GenerationCompleted(
        **envelope(
            ts,
            service,
            model=model,
            request_id=secrets.token_hex(4),
            prompt_tokens=10,
            generation_tokens=20,
            duration_ms=ttft_ms + 100,
            ttft_ms=ttft_ms,
            **fields,
        )
    )


def status(ts: float, *, service: str = "engine") -> RuntimeStatus:
    return RuntimeStatus(**envelope(ts, service, status="ready", models_loaded=1))


def custom(ts: float, type: str, *, service: str = "engine", **attrs: Any) -> CustomEvent:
    return CustomEvent(**envelope(ts, service, type=type, attrs=attrs))


_entry_ids = itertools.count(1)


def record(event: Event) -> Record:
    """A delivered entry of ``event`` (each call a new entry id, as Redis would give)."""
    entry_id = f"{int(event.ts // 1_000_000)}-{next(_entry_ids)}"
    return Record(stream="errors" if is_error(event) else "events", stream_id=entry_id, event=event, raw=encode(event))


def records(*events: Event) -> list[Record]:
    return [record(event) for event in events]


def alerts_config(**raw: Any) -> AlertsConfig:
    return msgspec.convert(raw, AlertsConfig, dec_hook=dec_hook)


def stream_alerts(client: redis.Redis, key: str = "telemetry:alerts") -> list[AlertRecord]:
    """Every alert record in the alerts stream, oldest first, decoded from the `alert` field (silence changes left out)."""
    return [_alert.decode(fields[b"alert"]) for _, fields in client.xrange(key) if b"alert" in fields]


class FakeClock:
    """Unix seconds that move only when told; starts at the real time (Redis expiries are real)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class Receiver:
    """A local HTTP server that records POSTs and answers with scripted statuses.

    ``statuses`` are used in order, the last one repeating; ``hold`` blocks
    every request until it is set (a hung receiver).
    """

    def __init__(self, statuses: Sequence[int] = (200,)) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.hold = threading.Event()
        self.hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.hold.wait(30)
                receiver.requests.append((self.path, dict(self.headers), json.loads(body)))
                code = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


GROUP = "telemetry-collectors"


def make_stage(
    client: redis.Redis,
    config: AlertsConfig,
    *,
    group: str = GROUP,
    clock: Callable[[], float] = time.time,
    channels: Sequence[Any] = (),
    prefix: str = "telemetry",
    log: Any = None,
) -> AlertStage:
    """An alert stage of consumer group ``group`` on ``client``, as the pipeline builds it."""
    state = AlertState(client, stream_names(prefix), group, history=config.history)
    return AlertStage(config, state, channels, clock=clock, log=log)


class LogCapture:
    """A structlog-shaped logger that keeps the events (to assert on what was logged)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **fields: self.lines.append((level, event, fields))

    def notified(self, rule: Optional[str] = None) -> list[tuple[str, str]]:
        """(rule, status) of every notification logged, oldest first."""
        return [
            (fields["rule"], fields["status"])
            for _, event, fields in self.lines
            if event in ("alert_firing", "alert_resolved") and rule in (None, fields["rule"])
        ]
