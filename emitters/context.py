"""Correlation ids carried by contextvars, so every event inside a scope shares them.

The scope is per thread and per asyncio task, like any contextvar. One context
is shared by all emitters in the process: a request that crosses two emitter
instances keeps its trace.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Mapping, Optional

__all__ = ["CORRELATION_KEYS", "correlation", "current", "new_trace_id", "new_span_id"]

# Ids a scope can carry besides trace_id/span_id.
CORRELATION_KEYS = ("request_id", "job_id", "worker_id", "machine_id", "user_id")

_scope: ContextVar[Optional[Mapping[str, str]]] = ContextVar("mlx_telemetry_scope", default=None)

# random.getrandbits is reseeded after fork by the random module itself, and is
# several times cheaper than os.urandom for ids that need to be unique, not secret.
_bits = random.getrandbits


def new_trace_id() -> str:
    return "%032x" % _bits(128)


def new_span_id() -> str:
    return "%016x" % _bits(64)


def current() -> Optional[Mapping[str, str]]:
    """The ids of the innermost scope, or None outside any scope."""
    return _scope.get()


@contextmanager
def correlation(**ids: Optional[str]) -> Iterator[Mapping[str, str]]:
    """Open a scope: a new span inside the current trace (or a new trace).

    ``trace_id`` switches to a given trace (e.g. one propagated from an HTTP
    header); ids not given are inherited from the enclosing scope. Values of
    ``None`` are ignored, so callers can pass optional ids straight through.
    """
    unknown = set(ids) - set(CORRELATION_KEYS) - {"trace_id", "span_id"}
    if unknown:
        raise TypeError(f"unknown correlation id(s): {', '.join(sorted(unknown))}")
    outer = _scope.get() or {}
    scope = {key: value for key, value in outer.items() if key != "parent_span_id"}
    scope.update({key: str(value) for key, value in ids.items() if value is not None})
    if "trace_id" not in scope:
        scope["trace_id"] = new_trace_id()
    if ids.get("span_id") is None:
        scope["span_id"] = new_span_id()
    if outer.get("span_id") and scope.get("trace_id") == outer.get("trace_id"):
        scope["parent_span_id"] = outer["span_id"]
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)
