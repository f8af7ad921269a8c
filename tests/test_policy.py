"""The data policy's fast path: judging non-finite floats from the msgpack payload first.

A collector hands ``out_of_range`` the bytes each event was decoded from; the
verdict (reason and field path) must be exactly the one of the field scan.
"""

from __future__ import annotations

import math
import struct
import time

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings

from collector.consumer import decode_entries
from emitters.events import GenerationCompleted, TokenGenerated, ValidationError, decode, encode
from emitters.policy import out_of_range
from emitters.streams import PAYLOAD_FIELD, SKIP_SINKS_FIELD
from tests.support.event_payloads import payloads
from tests.support.stream_entries import NAMES, envelope

MiB = 1 << 20


def verdicts(payload: bytes) -> tuple[str | None, str | None]:
    """(with the payload, by the field scan alone) for the event ``payload`` decodes to."""
    event, now = decode(payload), time.time_ns()
    return out_of_range(event, now, payload=payload), out_of_range(event, now)


def token_with_logprob(value: float) -> bytes:
    """A token.generated whose one float (logprob, unconstrained) is ``value``, as float64."""
    return encode(TokenGenerated(**envelope(), model="m", request_id="r", token="t", index=0, logprob=value))


class TestPrefilter:
    @pytest.mark.parametrize(("marker", "fmt", "tail"), [(b"\xcb", ">d", 6), (b"\xca", ">f", 2)], ids=["f64", "f32"])
    def test_every_exponent_gets_the_scans_verdict(self, marker: bytes, fmt: str, tail: int) -> None:
        """Exhaustive over the two bytes that hold sign and exponent, zero mantissa (infinity) or
        not (NaN): with the payload, the verdict is the field scan's, reason and path included."""
        template = token_with_logprob(0.5)
        assert template.count(b"\xcb" + struct.pack(">d", 0.5)) == 1
        for high in range(1 << 16):
            for rest in (b"\x00" * tail, b"\x01" * tail):
                raw = high.to_bytes(2, "big") + rest
                payload = template.replace(b"\xcb" + struct.pack(">d", 0.5), marker + raw)
                with_payload, scanned = verdicts(payload)
                assert with_payload == scanned, raw.hex()
                assert (scanned is None) is math.isfinite(struct.unpack(fmt, raw)[0]), raw.hex()

    def test_exponent_edges(self) -> None:
        """NaN and infinities of either sign are refused; the largest and smallest finite floats are not."""
        for value in (math.nan, -math.nan, math.inf, -math.inf):
            assert verdicts(token_with_logprob(value)) == (f"{value} is not a finite number - at `$.logprob`",) * 2
        for value in (1.7976931348623157e308, -1.7976931348623157e308, 0.0, -0.0, 5e-324):
            assert verdicts(token_with_logprob(value)) == (None, None)


class TestSameVerdict:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payloads())
    def test_payload_fast_path_agrees_with_the_field_scan(self, payload: bytes) -> None:
        """On arbitrary events (NaN/inf in float fields and in dicts, float32, lookalike ints)
        the verdict with the payload is the scan's, reason and field path included."""
        try:
            event = decode(payload)
        except ValidationError:
            return  # e.g. a NaN where the contract says >= 0: never reaches the policy
        now = time.time_ns()
        assert out_of_range(event, now, payload=payload) == out_of_range(event, now)

    def test_a_lookalike_integer_costs_only_the_scan(self) -> None:
        """A pid whose bytes read like a NaN float sends the event through the exact scan: still clean."""
        event = GenerationCompleted(**envelope(pid=0xCB7FF0), model="m", request_id="r", prompt_tokens=1,
                                    generation_tokens=2, duration_ms=3.0)  # fmt: skip
        payload = encode(event)
        assert b"\xce\x00\xcb\x7f\xf0" in payload  # pid, a uint32
        assert verdicts(payload) == (None, None)

    def test_float32_nan_in_attrs_is_refused_with_its_path(self) -> None:
        """A float32 NaN (never written by our encoders) is found and named like a float64 one."""
        event = GenerationCompleted(**envelope(attrs={"x": 0.5}), model="m", request_id="r", prompt_tokens=1,
                                    generation_tokens=2, duration_ms=3.0)  # fmt: skip
        payload = encode(event).replace(b"\xcb" + struct.pack(">d", 0.5), b"\xca" + struct.pack(">f", math.nan))
        reason = out_of_range(decode(payload), time.time_ns(), payload=payload)
        assert reason == "nan is not a finite number - at `$.attrs.x`"

    def test_the_decoder_takes_no_float_from_a_string(self) -> None:
        """The fast path's premise: every float of an event was a msgpack float (strict decoding)."""
        event = msgspec.to_builtins(GenerationCompleted(**envelope(), model="m", request_id="r", prompt_tokens=1,
                                                        generation_tokens=2, duration_ms=3.0))  # fmt: skip
        for text in ("nan", "inf", "1e999"):
            with pytest.raises(ValidationError, match=r"\$\.duration_ms"):
                decode(msgspec.msgpack.encode({**event, "type": "generation.completed", "duration_ms": text}))


class TestConsumerUsesThePayload:
    @pytest.mark.parametrize("replayed", [False, True], ids=["stream-entry", "replayed-dead-letter"])
    def test_non_finite_float_is_dead_lettered_with_its_path(self, replayed: bool) -> None:
        """A stream entry and a replayed dead letter alike: out_of_range, the field named."""
        bad = GenerationCompleted(**envelope(), model="m", request_id="r", prompt_tokens=1, generation_tokens=2,
                                  duration_ms=3.0, ttft_ms=math.inf)  # fmt: skip
        good = GenerationCompleted(**envelope(), model="m", request_id="r", prompt_tokens=1, generation_tokens=2,
                                   duration_ms=3.0, ttft_ms=1.0)  # fmt: skip
        extra = [SKIP_SINKS_FIELD.encode(), b"otlp"] if replayed else []
        entries = [[b"1-0", [PAYLOAD_FIELD.encode(), encode(bad), *extra]],
                   [b"1-1", [PAYLOAD_FIELD.encode(), encode(good), *extra]]]  # fmt: skip
        decoded = decode_entries("events", NAMES.events, entries, max_size=MiB)
        (letter,) = decoded.dead
        assert letter.reason == "out_of_range: inf is not a finite number - at `$.ttft_ms`"
        assert [record.event.id for record in decoded.records] == [good.id]
        assert decoded.records[0].skip == (("otlp",) if replayed else ())
