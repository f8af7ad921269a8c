"""Events as the wire contract describes them, for the OTLP tests: scopes, generations, failures.

:class:`Workload` plays the emitter side of contract decisions 1 and 2 without
the emitter: each scope is a span with its own id whose close is a
``span.ended`` event, events inside it carry the scope's ids, events outside
carry none, and a scope may continue a caller's trace (a remote parent).
"""

from __future__ import annotations

import itertools
import os
import secrets
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from emitters.events import (
    ClientReport,
    CustomEvent,
    ErrorEvent,
    Event,
    GenerationCompleted,
    GenerationStarted,
    ModelLoaded,
    RuntimeStatus,
    SpanEnded,
    encode,
    is_error,
)
from emitters.streams import PAYLOAD_FIELD, stream_names


class Workload:
    """Builds a realistic event sequence with a clock that advances 1 ms per event."""

    def __init__(self, service: str = "engine", start_ns: int = 1_700_000_000_000_000_000) -> None:
        self.service = service
        self.events: list[Event] = []
        self._clock = itertools.count(start_ns, 1_000_000)
        self._scopes: list[dict[str, Any]] = []

    def _envelope(self) -> dict[str, Any]:
        fields: dict[str, Any] = dict(
            id=secrets.token_hex(16), ts=next(self._clock), service=self.service, host="gpu-1", pid=os.getpid()
        )
        if self._scopes:
            scope = self._scopes[-1]
            fields.update(trace_id=scope["trace_id"], span_id=scope["span_id"])
        return fields

    @contextmanager
    def scope(self, name: str, traceparent: Optional[str] = None) -> Iterator[dict[str, Any]]:
        outer = self._scopes[-1] if self._scopes else None
        scope: dict[str, Any] = {"span_id": secrets.token_hex(8), "remote": False}
        if traceparent is not None:
            _, trace_id, parent, _ = traceparent.split("-")
            scope.update(trace_id=trace_id, parent=parent, remote=True)
        elif outer is not None:
            scope.update(trace_id=outer["trace_id"], parent=outer["span_id"])
        else:
            scope.update(trace_id=secrets.token_hex(16), parent=None)
        start = next(self._clock)
        self._scopes.append(scope)
        failure: dict[str, Any] = {}
        scope["fail"] = failure.update
        try:
            yield scope
        finally:
            self._scopes.pop()
            end = next(self._clock)
            self.events.append(
                SpanEnded(
                    id=secrets.token_hex(16), ts=end, service=self.service, host="gpu-1", pid=os.getpid(),
                    trace_id=scope["trace_id"], span_id=scope["span_id"], parent_span_id=scope["parent"],
                    name=name, start_ts=start, duration_ms=(end - start) / 1e6,
                    parent_remote=scope["remote"], **failure,
                )
            )

    def add(self, cls: type, **fields: Any) -> Event:
        event = cls(**self._envelope(), **fields)
        self.events.append(event)
        return event

    def generation(self, request_id: str, model: str = "tiny", *, fail: Optional[str] = None) -> Event:
        """started + completed, or started + an error raised inside it (``fail`` = the error type)."""
        self.add(GenerationStarted, model=model, request_id=request_id, prompt_tokens=5)
        if fail is not None:
            return self.add(
                ErrorEvent, model=model, request_id=request_id, message=f"{fail}: out of memory",
                error_type=fail, context={"operation": "generate"},
            )
        return self.add(
            GenerationCompleted, model=model, request_id=request_id, prompt_tokens=5, generation_tokens=8,
            duration_ms=4.0, ttft_ms=1.0, finish_reason="stop",
        )

    def outside(self) -> None:
        """Events emitted outside every scope: they belong to no trace."""
        self.add(RuntimeStatus, status="ready", models_loaded=1)
        self.add(ModelLoaded, model="tiny", model_path="/models/tiny", load_ms=12.0)
        self.add(ClientReport, dropped={"buffer_full": 3, "invalid": 1}, dropped_total=4, sent=100, interval_s=10.0)

    def demo(self, requests: int = 10, failures: int = 2) -> list[Event]:
        """A server's traffic: a request scope per request (some from a caller), generations, failures."""
        self.outside()
        for index in range(requests):
            traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01" if index % 3 == 0 else None
            with self.scope("POST /v1/chat/completions", traceparent=traceparent) as request:
                with self.scope("tokenize"):
                    self.add(CustomEvent, type="prompt.tokenized", attrs={"duration_ms": 0.5})
                failed = index < failures
                event = self.generation(f"req-{index}", fail="MemoryError" if failed else None)
                if failed:
                    request["fail"](status="error", status_message=event.message, error_type="MemoryError")
        return self.events


def publish(client: Any, events: list[Event], prefix: str = "telemetry") -> None:
    """XADD events where an emitter puts them: errors to the error stream, the rest to events.

    In one MULTI/EXEC, as an emitter's batch script adds them: a collector reads them all at once
    rather than racing the adds, so the batches it forms do not depend on timing.
    """
    names = stream_names(prefix)
    pipe = client.pipeline(transaction=True)
    for event in events:
        pipe.xadd(names.errors if is_error(event) else names.events, {PAYLOAD_FIELD: encode(event)})
    pipe.execute()
