"""The wire contract: round trips, validation messages, forward compatibility."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emitters import events as ev

ENVELOPE = dict(
    id="a" * 32, ts=1_700_000_000_000_000_000, service="engine-1", host="host-a", pid=42,
    trace_id="b" * 32, span_id="c" * 16,
)  # fmt: skip

VALID = {
    "model.loaded": dict(model="tiny", model_path="/models/tiny", quantization=4, parameters=1000, load_ms=12.5),
    "model.unloaded": dict(model="tiny", reason="idle"),
    "model.invalidated": dict(model="tiny", reason="weights changed"),
    "generation.started": dict(model="tiny", request_id="r1", prompt_tokens=3, max_tokens=16, temperature=0.7),
    "token.generated": dict(model="tiny", request_id="r1", token="", index=0, logprob=-0.5),
    "generation.completed": dict(
        model="tiny", request_id="r1", prompt_tokens=3, generation_tokens=16, duration_ms=120.0,
        ttft_ms=20.0, tokens_per_second=133.3, finish_reason="length", itl_p50_ms=6.0, itl_p99_ms=9.0,
    ),
    "error": dict(message="boom", error_type="ValueError", fingerprint="0123456789abcdef", context={"k": 1}),
    "runtime.status": dict(status="ready", models_loaded=1, active_tasks=0, memory_gb=1.5),
}  # fmt: skip


def encoded(event_type: str, **overrides: object) -> bytes:
    fields = {**ENVELOPE, **VALID.get(event_type, {}), "type": event_type, **overrides}
    return msgspec.msgpack.encode(fields)


class TestRoundTrip:
    @pytest.mark.parametrize("event_type", sorted(VALID))
    def test_typed_event_round_trips(self, event_type: str) -> None:
        """Every typed event decodes to its class with every field intact and re-encodes identically."""
        event = ev.decode(encoded(event_type))
        assert type(event) is ev.TYPED_EVENTS[event_type]
        assert event.type == event_type
        for name, value in VALID[event_type].items():
            assert getattr(event, name) == value
        assert ev.decode(ev.encode(event)) == event

    def test_json_form_round_trips(self) -> None:
        """The JSON form (archives, dead letters) decodes to the same event."""
        event = ev.decode(encoded("generation.completed"))
        assert ev.decode_json(msgspec.json.encode(event)) == event

    def test_unknown_type_decodes_generically(self) -> None:
        """A type this collector does not know becomes a CustomEvent instead of failing."""
        event = ev.decode(encoded("job.progress_updated", attrs={"percent": 40}))
        assert isinstance(event, ev.CustomEvent)
        assert event.type == "job.progress_updated" and event.attrs == {"percent": 40}

    def test_newer_fields_are_ignored(self) -> None:
        """A newer emitter's extra fields and schema version do not break decoding."""
        event = ev.decode(encoded("model.unloaded", v=2, brand_new_field=[1, 2, 3]))
        assert isinstance(event, ev.ModelUnloaded) and event.v == 2

    def test_error_routing_rule(self) -> None:
        """Errors and anything at severity error or above belong on the error stream."""
        assert ev.is_error(ev.decode(encoded("error")))
        assert ev.is_error(ev.decode(encoded("job.failed", severity="critical")))
        assert not ev.is_error(ev.decode(encoded("job.done", severity="warn")))


class TestValidation:
    @pytest.mark.parametrize(
        ("event_type", "override", "field", "rule"),
        [
            ("model.loaded", {"model": ""}, "$.model", "length >= 1"),
            ("generation.completed", {"generation_tokens": -1}, "$.generation_tokens", ">= 0"),
            ("generation.completed", {"prompt_tokens": "12"}, "$.prompt_tokens", "Expected `int`"),
            ("runtime.status", {"status": "sleeping"}, "$.status", "Invalid enum value 'sleeping'"),
            ("model.loaded", {"service": "bad service!"}, "$.service", "matching regex"),
            ("model.loaded", {"trace_id": "xyz"}, "$.trace_id", "matching regex"),
            ("error", {"message": ""}, "$.message", "length >= 1"),
            ("job.created", {"severity": "fatal"}, "$.severity", "Invalid enum value 'fatal'"),
            ("Job Created", {}, "$.type", "matching regex"),
            ("job.created", {"attrs": {"k": [1]}}, "$.attrs", "Expected"),
        ],
    )
    def test_rejection_names_field_and_rule(self, event_type: str, override: dict, field: str, rule: str) -> None:
        """Each invalid case is rejected with a message naming the field path and the rule."""
        with pytest.raises(ev.ValidationError) as info:
            ev.decode(encoded(event_type, **override))
        assert field in str(info.value) and rule in str(info.value)

    def test_missing_required_field(self) -> None:
        """A missing required field is named."""
        fields = {**ENVELOPE, "type": "generation.completed", "model": "m", "request_id": "r"}
        with pytest.raises(ev.ValidationError, match="missing required field `prompt_tokens`"):
            ev.decode(msgspec.msgpack.encode(fields))

    def test_attrs_are_bounded(self) -> None:
        """More than 64 attributes is refused: every input has a size limit."""
        with pytest.raises(ev.ValidationError, match="length <= 64"):
            ev.decode(encoded("job.created", attrs={f"k{i}": i for i in range(65)}))

    def test_not_msgpack(self) -> None:
        """Bytes that are not msgpack raise DecodeError (the parent of ValidationError)."""
        with pytest.raises(ev.DecodeError):
            ev.decode(b"\xc1\xff garbage")

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=256))
    def test_arbitrary_bytes_never_crash_the_decoder(self, payload: bytes) -> None:
        """Any byte string either decodes to an event or raises DecodeError; nothing else escapes."""
        try:
            event = ev.decode(payload)
        except ev.DecodeError:
            return
        assert isinstance(event, (ev.TypedEvent, ev.CustomEvent))
