"""Hypothesis strategies for encoded events as a collector receives them, odd floats included.

``payloads()`` draws msgpack bytes of several contract types, built as plain
maps so any float can be put anywhere: NaN, +-inf and finite floats in float
fields and in ``attrs``/``metadata``/``context``, sometimes written as float32
(which the project's encoders never do, other msgpack writers may), and
envelope integers whose bytes look like a non-finite float's (0xcb 0x7f 0xf0...).
Some draws do not decode (a NaN where the contract says ``>= 0``); callers skip those.
"""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import msgspec
from hypothesis import strategies as st

__all__ = ["payloads", "odd_floats"]

odd_floats = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf])
# Integers whose msgpack bytes contain what a non-finite float looks like: prefilter false positives.
_LOOKALIKE_INTS = [0xCB7FF0, 0xCBFFF8, 0xCA7F80, 0xCAFFC0, 0xCB7FF0CB7FF0]


def _floats(low: float | None = None, high: float | None = None) -> st.SearchStrategy[float | None]:
    finite = st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=low is None and high is None)
    return st.one_of(st.none(), finite, odd_floats)


_attr_values = st.one_of(
    st.text(max_size=12), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(), odd_floats
)
_attrs = st.dictionaries(st.text(min_size=1, max_size=8), _attr_values, max_size=5)

_KINDS: dict[str, dict[str, Any]] = {
    "generation.completed": {
        "model": st.just("m"), "request_id": st.just("r"), "prompt_tokens": st.integers(0, 10**6),
        "generation_tokens": st.integers(0, 10**6), "duration_ms": _floats(0.0),
        **{name: _floats(0.0) for name in ("ttft_ms", "tokens_per_second", "prompt_tps", "peak_memory_gb",
                                           "itl_p50_ms", "itl_p99_ms", "prefill_ms")},
        "draft_acceptance": _floats(0.0, 1.0),
    },
    "runtime.status": {
        "status": st.just("busy"), "models_loaded": st.integers(0, 4),
        **{name: _floats(0.0) for name in ("memory_gb", "peak_memory_gb", "memory_headroom_gb")},
    },
    "token.generated": {"model": st.just("m"), "request_id": st.just("r"), "token": st.text(max_size=4),
                        "index": st.integers(0, 100), "logprob": _floats()},
    "model.loaded": {"model": st.just("m"), "model_path": st.just("/m"), "load_ms": _floats(0.0), "metadata": _attrs},
    "error": {"message": st.text(min_size=1, max_size=20), "error_type": st.just("E"), "context": _attrs},
    "job.created": {},  # a custom event: envelope and attrs only
}  # fmt: skip


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """One msgpack event payload (see the module docstring)."""
    kind = draw(st.sampled_from(sorted(_KINDS)))
    now = time.time_ns()
    event: dict[str, Any] = {
        "type": kind,
        "id": "%032x" % draw(st.integers(0, 2**128 - 1)),
        # up to 16 minutes old, or with low bytes cb ff f0 (a few ms from now)
        "ts": (now & ~0xFFFFFF | 0xCBFFF0) if draw(st.booleans()) else now - draw(st.integers(0, 10**12)),
        "service": "svc",
        "host": "h",
        "pid": draw(st.one_of(st.integers(0, 2**32), st.sampled_from(_LOOKALIKE_INTS))),
        "attrs": draw(_attrs),
    }
    for name, strategy in _KINDS[kind].items():
        value = draw(strategy)
        if value is not None:
            event[name] = value
    payload = msgspec.msgpack.encode(event)
    if draw(st.booleans()):
        payload = _as_float32(payload, event)
    return payload


def _as_float32(payload: bytes, event: dict[str, Any]) -> bytes:
    """``payload`` with every float that float32 holds exactly written as a msgpack float32."""
    values = [v for v in event.values() if type(v) is float]
    values += [v for d in event.values() if isinstance(d, dict) for v in d.values() if type(v) is float]
    for value in values:
        try:
            as32 = struct.unpack(">f", struct.pack(">f", value))[0]
        except OverflowError:  # beyond float32's range: stays a float64
            continue
        if as32 == value or math.isnan(value):
            payload = payload.replace(b"\xcb" + struct.pack(">d", value), b"\xca" + struct.pack(">f", value))
    return payload
