"""Events -> OTLP log records and spans: exact fields and attribute names.

Every payload is parsed back with the generated ``opentelemetry.proto``
classes, so these tests also check that the hand-written wire encoding is
valid protobuf.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.otlp import wire
from collector.otlp.event_attributes import ArrayKey, AttributeEncoder
from collector.otlp.translate import TranslateOptions, Translator
from emitters.events import (
    CustomEvent,
    ErrorEvent,
    Event,
    GenerationCompleted,
    GenerationStarted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    RuntimeStatus,
    TokenGenerated,
)
from tests.otlp_backend import attributes

TS = 1_700_000_000_123_456_789
OBSERVED = 1_700_000_001_000_000_000
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
PARENT = "00f067aa0ba902b7"


def envelope(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        id="4bf92f3577b34da6a3ce929d0e0e4736",
        ts=TS,
        service="engine",
        host="gpu-1",
        pid=4242,
        trace_id=TRACE,
        span_id=SPAN,
    )
    fields.update(overrides)
    return fields


def parse_logs(payloads: list[bytes]) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    for payload in payloads:
        request.MergeFromString(payload)
    return request


def only_record(event: Event, **options: Any) -> tuple[Any, dict[str, Any]]:
    request = parse_logs(Translator(TranslateOptions(**options)).logs([event], OBSERVED))
    (resource_logs,) = request.resource_logs
    (scope_logs,) = resource_logs.scope_logs
    (record,) = scope_logs.log_records
    return record, attributes(record.attributes)


def only_span(event: Event, **options: Any) -> tuple[Any, dict[str, Any]]:
    request = ExportTraceServiceRequest.FromString(b"".join(Translator(TranslateOptions(**options)).spans([event])))
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    (span,) = scope_spans.spans
    return span, attributes(span.attributes)


def completed(**overrides: Any) -> GenerationCompleted:
    fields = envelope(
        model="llama-3.2-1b",
        request_id="req-1",
        prompt_tokens=12,
        generation_tokens=34,
        duration_ms=1500.5,
        ttft_ms=80.25,
        tokens_per_second=23.5,
        finish_reason="stop",
    )
    fields.update(overrides)
    return GenerationCompleted(**fields)


class TestLogRecord:
    def test_envelope_fields(self) -> None:
        """Timestamps, severity, event name, body and ids come straight from the event."""
        record, attrs = only_record(completed(parent_span_id=PARENT, job_id="job-7", user_id="u-hash"))
        assert record.time_unix_nano == TS
        assert record.observed_time_unix_nano == OBSERVED
        assert record.severity_number == 9
        assert record.severity_text == "info"
        assert record.event_name == "generation.completed"
        assert record.body.string_value == "generation.completed"
        assert record.trace_id == bytes.fromhex(TRACE)
        assert record.span_id == bytes.fromhex(SPAN)
        assert attrs["event.name"] == "generation.completed"
        assert attrs["event.id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert attrs["request.id"] == "req-1"
        assert attrs["job.id"] == "job-7"
        assert attrs["user.id"] == "u-hash"
        assert attrs["span.parent_id"] == PARENT

    @pytest.mark.parametrize(
        ("severity", "number"), [("debug", 5), ("info", 9), ("warn", 13), ("error", 17), ("critical", 21)]
    )
    def test_severity_numbers(self, severity: str, number: int) -> None:
        """Each event severity maps to the OTLP SeverityNumber of its level, text kept as sent."""
        record, _ = only_record(CustomEvent(**envelope(type="job.created", severity=severity)))
        assert (record.severity_number, record.severity_text) == (number, severity)

    def test_generation_completed_attributes(self) -> None:
        """GenAI usage attributes under their semantic-convention names, the rest under mlx.generation."""
        _, attrs = only_record(completed(prompt_tps=300.0, peak_memory_gb=2.5, itl_p50_ms=20.0, itl_p99_ms=45.0))
        assert attrs == {
            "event.name": "generation.completed",
            "event.id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "request.id": "req-1",
            "gen_ai.request.model": "llama-3.2-1b",
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 34,
            "gen_ai.response.finish_reasons": ["stop"],
            "mlx.generation.duration_ms": 1500.5,
            "mlx.generation.ttft_ms": 80.25,
            "mlx.generation.tokens_per_second": 23.5,
            "mlx.generation.prompt_tps": 300.0,
            "mlx.generation.peak_memory_gb": 2.5,
            "mlx.generation.itl_p50_ms": 20.0,
            "mlx.generation.itl_p99_ms": 45.0,
        }

    def test_generation_started_request_parameters(self) -> None:
        """Sampler settings use gen_ai.request.*; the prompt text stays out by default."""
        event = GenerationStarted(
            **envelope(
                model="m",
                request_id="r",
                prompt_tokens=5,
                max_tokens=64,
                temperature=0.7,
                top_p=0.9,
                top_k=40,
                min_p=0.05,
                repetition_penalty=1.1,
                seed=7,
                prompt="secret user text",
                prompt_chars=16,
                prompt_hash="ab" * 8,
            )
        )
        _, attrs = only_record(event)
        assert attrs["gen_ai.usage.input_tokens"] == 5
        assert attrs["gen_ai.request.max_tokens"] == 64
        assert attrs["gen_ai.request.temperature"] == 0.7
        assert attrs["gen_ai.request.top_p"] == 0.9
        assert attrs["gen_ai.request.top_k"] == 40
        assert attrs["gen_ai.request.seed"] == 7
        assert attrs["mlx.generation.min_p"] == 0.05
        assert attrs["mlx.generation.repetition_penalty"] == 1.1
        assert attrs["mlx.generation.prompt_chars"] == 16
        assert attrs["mlx.generation.prompt_hash"] == "ab" * 8
        assert "mlx.generation.prompt" not in attrs
        _, with_content = only_record(event, capture_content=True)
        assert with_content["mlx.generation.prompt"] == "secret user text"

    def test_token_text_is_content(self) -> None:
        """token.generated keeps index and logprob; its text only with capture_content."""
        event = TokenGenerated(**envelope(model="m", request_id="r", token=" hello", index=3, logprob=-0.5))
        _, attrs = only_record(event)
        assert (attrs["mlx.token.index"], attrs["mlx.token.logprob"]) == (3, -0.5)
        assert "mlx.token.text" not in attrs
        assert only_record(event, capture_content=True)[1]["mlx.token.text"] == " hello"

    def test_model_loaded_flattens_metadata(self) -> None:
        """model.loaded: path, quantization, parameters, load time; metadata as mlx.model.metadata.*."""
        event = ModelLoaded(
            **envelope(
                model="m",
                model_path="/models/m",
                quantization=4,
                parameters=1_000_000,
                load_ms=812.5,
                metadata={"arch": "llama", "layers": 16},
            )
        )
        _, attrs = only_record(event)
        assert attrs["gen_ai.request.model"] == "m"
        assert attrs["mlx.model.path"] == "/models/m"
        assert attrs["mlx.model.quantization"] == 4
        assert attrs["mlx.model.parameters"] == 1_000_000
        assert attrs["mlx.model.load_ms"] == 812.5
        assert attrs["mlx.model.metadata.arch"] == "llama"
        assert attrs["mlx.model.metadata.layers"] == 16

    def test_model_unloaded_and_invalidated(self) -> None:
        """The reason of an unload or invalidation is mlx.model.reason."""
        _, unloaded = only_record(ModelUnloaded(**envelope(model="m", reason="idle")))
        _, invalidated = only_record(ModelInvalidated(**envelope(model="m", reason="weights changed")))
        assert (unloaded["event.name"], unloaded["mlx.model.reason"]) == ("model.unloaded", "idle")
        assert (invalidated["event.name"], invalidated["mlx.model.reason"]) == ("model.invalidated", "weights changed")

    def test_error_event(self) -> None:
        """Errors: body is the message; exception.* and error.type attributes; context flattened."""
        event = ErrorEvent(
            **envelope(
                message="CUDA? no: Metal out of memory",
                error_type="MemoryError",
                code=137,
                stack="Traceback ...",
                model="m",
                fingerprint="deadbeef01",
                context={"batch": 8},
            )
        )
        record, attrs = only_record(event)
        assert record.body.string_value == "CUDA? no: Metal out of memory"
        assert (record.severity_number, record.severity_text) == (17, "error")
        assert attrs["exception.message"] == "CUDA? no: Metal out of memory"
        assert attrs["exception.type"] == "MemoryError"
        assert attrs["error.type"] == "MemoryError"
        assert attrs["exception.stacktrace"] == "Traceback ..."
        assert attrs["mlx.error.code"] == 137
        assert attrs["mlx.error.fingerprint"] == "deadbeef01"
        assert attrs["mlx.error.context.batch"] == 8
        assert attrs["gen_ai.request.model"] == "m"

    def test_runtime_status(self) -> None:
        """runtime.status fields under mlx.runtime.*."""
        event = RuntimeStatus(**envelope(status="busy", models_loaded=2, active_tasks=3, memory_gb=4.5))
        _, attrs = only_record(event)
        assert attrs["mlx.runtime.status"] == "busy"
        assert attrs["mlx.runtime.models_loaded"] == 2
        assert attrs["mlx.runtime.active_tasks"] == 3
        assert attrs["mlx.runtime.memory_gb"] == 4.5

    def test_custom_event_attrs_keep_their_keys(self) -> None:
        """attrs of any event are exported under their own keys, typed values intact."""
        event = CustomEvent(
            **envelope(type="job.created", job_id="j1", attrs={"queue": "gpu", "retries": 2, "ok": True, "p": 0.5})
        )
        record, attrs = only_record(event)
        assert record.event_name == "job.created"
        assert record.body.string_value == "job.created"
        assert attrs["queue"] == "gpu"
        assert attrs["retries"] == 2
        assert attrs["ok"] is True
        assert attrs["p"] == 0.5
        assert attrs["job.id"] == "j1"

    def test_colliding_attrs_are_prefixed(self) -> None:
        """An attrs key that names one of our own attributes is kept as attrs.<key>, not overwriting."""
        event = completed(attrs={"event.id": "spoofed", "gen_ai.usage.output_tokens": 1, "note": "x"})
        _, attrs = only_record(event)
        assert attrs["event.id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert attrs["attrs.event.id"] == "spoofed"
        assert attrs["gen_ai.usage.output_tokens"] == 34
        assert attrs["attrs.gen_ai.usage.output_tokens"] == 1
        assert attrs["note"] == "x"

    def test_integers_beyond_int64_become_text(self) -> None:
        """msgpack allows uint64; OTLP int_value is int64, so larger values travel as strings."""
        event = CustomEvent(**envelope(type="job.created", attrs={"big": 2**64 - 1, "neg": -(2**63), "zero": 0}))
        _, attrs = only_record(event)
        assert attrs["big"] == str(2**64 - 1)
        assert attrs["neg"] == -(2**63)
        assert attrs["zero"] == 0


class TestResources:
    def test_records_grouped_by_resource(self) -> None:
        """One ResourceLogs per (service, host, pid), with service.name, host.name, process.pid, environment."""
        events = [
            CustomEvent(**envelope(type="a.b", id="1" * 32)),
            CustomEvent(**envelope(type="a.b", id="2" * 32, service="router", pid=7)),
            CustomEvent(**envelope(type="a.b", id="3" * 32)),
        ]
        request = parse_logs(Translator(TranslateOptions(deployment_environment="staging")).logs(events, OBSERVED))
        identity = ("service.name", "host.name", "process.pid", "deployment.environment.name", "deployment.environment")
        groups = {
            tuple(sorted((k, v) for k, v in attributes(group.resource.attributes).items() if k in identity)): [
                attributes(record.attributes)["event.id"]
                for scope in group.scope_logs
                for record in scope.log_records
            ]
            for group in request.resource_logs
        }
        engine = {
            "service.name": "engine",
            "host.name": "gpu-1",
            "process.pid": 4242,
            "deployment.environment.name": "staging",
            "deployment.environment": "staging",
        }
        router = {**engine, "service.name": "router", "process.pid": 7}
        assert groups == {
            tuple(sorted(engine.items())): ["1" * 32, "3" * 32],
            tuple(sorted(router.items())): ["2" * 32],
        }

    def test_scope_names_the_collector(self) -> None:
        """The instrumentation scope is mlx-telemetry with the package version."""
        request = parse_logs(Translator().logs([completed()], OBSERVED))
        scope = request.resource_logs[0].scope_logs[0].scope
        assert scope.name == "mlx-telemetry"
        assert scope.version

    def test_no_environment_attribute_unless_configured(self) -> None:
        """deployment.environment is only set when the config names one."""
        request = parse_logs(Translator().logs([completed()], OBSERVED))
        assert set(attributes(request.resource_logs[0].resource.attributes)) == {
            "service.name",
            "host.name",
            "process.pid",
            "service.instance.id",
            "telemetry.sdk.name",
            "telemetry.sdk.language",
            "telemetry.sdk.version",
        }

    def test_resource_identity_and_schema(self) -> None:
        """service.instance.id is stable per process, telemetry.sdk.* names us, schema_url the conventions."""
        first = parse_logs(Translator().logs([completed()], OBSERVED)).resource_logs[0]
        again = parse_logs(Translator().logs([completed(id="9" * 32)], OBSERVED)).resource_logs[0]
        ours = attributes(first.resource.attributes)
        assert ours["service.instance.id"] == attributes(again.resource.attributes)["service.instance.id"]
        assert ours["telemetry.sdk.name"] == "mlx-telemetry" and ours["telemetry.sdk.language"] == "python"
        assert first.schema_url == first.scope_logs[0].schema_url == "https://opentelemetry.io/schemas/1.36.0"
        latest = parse_logs(Translator(TranslateOptions(latest_genai=True)).logs([completed()], OBSERVED))
        assert latest.resource_logs[0].schema_url == "https://opentelemetry.io/schemas/1.37.0"

    def test_requests_split_at_max_request_bytes(self) -> None:
        """Large batches become several requests, each under the limit, every record exactly once."""
        events = [
            CustomEvent(**envelope(type="job.created", id=f"{n:032x}", pid=n % 3, attrs={"pad": "x" * 900}))
            for n in range(400)
        ]
        limit = 64 * 1024
        payloads = Translator(TranslateOptions(max_request_bytes=limit)).logs(events, OBSERVED)
        assert len(payloads) > 5
        assert all(len(payload) <= limit for payload in payloads)
        ids = [
            attributes(record.attributes)["event.id"]
            for payload in payloads
            for group in ExportLogsServiceRequest.FromString(payload).resource_logs
            for scope in group.scope_logs
            for record in scope.log_records
        ]
        assert sorted(ids) == sorted(f"{n:032x}" for n in range(400))


class TestSpans:
    def test_generation_span(self) -> None:
        """A generation.completed span: name, kind, start = end - duration, ids (decision 2), GenAI attributes."""
        event = completed(parent_span_id=PARENT)
        span, attrs = only_span(event)
        assert span.name == "text_completion llama-3.2-1b"
        assert span.kind == trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
        assert span.end_time_unix_nano == TS
        assert span.start_time_unix_nano == TS - 1_500_500_000
        assert span.trace_id == bytes.fromhex(TRACE)
        assert span.span_id == bytes.fromhex(event.id[:16])
        assert span.parent_span_id == bytes.fromhex(SPAN)  # the enclosing scope
        assert span.status.code == trace_pb2.Status.StatusCode.STATUS_CODE_UNSET
        assert attrs["gen_ai.operation.name"] == "text_completion"
        assert attrs["gen_ai.system"] == "mlx"  # GenAI conventions v1.36 unless opted in to the latest
        assert attrs["gen_ai.request.model"] == "llama-3.2-1b"
        assert attrs["gen_ai.usage.input_tokens"] == 12
        assert attrs["gen_ai.usage.output_tokens"] == 34
        assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
        assert attrs["mlx.generation.ttft_ms"] == 80.25
        assert attrs["mlx.generation.tokens_per_second"] == 23.5
        assert attrs["request.id"] == "req-1"
        assert "event.name" not in attrs

    def test_operation_from_attrs(self) -> None:
        """An emitter can name the operation (chat) and provider; they are not repeated as attrs."""
        span, attrs = only_span(
            completed(attrs={"gen_ai.operation.name": "chat", "gen_ai.provider.name": "acme"}), latest_genai=True
        )
        assert span.name == "chat llama-3.2-1b"
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.provider.name"] == "acme"
        assert not any(key.startswith("attrs.") for key in attrs)

    def test_model_load_span(self) -> None:
        """model.loaded with load_ms becomes a span named after the event and model."""
        span, attrs = only_span(ModelLoaded(**envelope(model="m", model_path="/m", load_ms=250.0)))
        assert span.name == "model.loaded m"
        assert span.end_time_unix_nano - span.start_time_unix_nano == 250_000_000
        assert attrs["mlx.model.load_ms"] == 250.0

    def test_custom_event_with_duration(self) -> None:
        """Any event with a numeric duration_ms in attrs becomes a span."""
        span, attrs = only_span(CustomEvent(**envelope(type="job.completed", attrs={"duration_ms": 40})))
        assert span.name == "job.completed"
        assert span.end_time_unix_nano - span.start_time_unix_nano == 40_000_000
        assert attrs["duration_ms"] == 40

    def test_error_severity_sets_status(self) -> None:
        """A failed operation with a duration carries STATUS_CODE_ERROR, its message and error.type."""
        event = CustomEvent(
            **envelope(type="job.failed", severity="error", attrs={"duration_ms": 3.5, "error.type": "Timeout"})
        )
        span, attrs = only_span(event)
        assert span.status.code == trace_pb2.Status.StatusCode.STATUS_CODE_ERROR
        assert span.status.message == "job.failed failed"
        assert attrs["error.type"] == "Timeout"

    def test_events_without_duration_make_no_span(self) -> None:
        """No duration, no span: the batch yields no trace request at all."""
        events = [
            GenerationStarted(**envelope(model="m", request_id="r")),
            ModelLoaded(**envelope(model="m", model_path="/m")),
            CustomEvent(**envelope(type="job.created", attrs={"duration_ms": "soon", "load_ms": True})),
        ]
        assert Translator().spans(events) == []

    def test_start_never_before_epoch(self) -> None:
        """A duration longer than the timestamp clamps the start at 0 instead of wrapping."""
        span, _ = only_span(completed(ts=1_000, duration_ms=5.0))
        assert span.start_time_unix_nano == 0


class TestWire:
    @pytest.mark.parametrize(
        "value",
        [0, 1, 127, 128, 16383, 16384, 2**32, 2**63 - 1, -1, -(2**63), True, False, 0.0, -2.5, "", "é" * 70, "x" * 20000],
    )
    def test_any_value_matches_protobuf(self, value: Any) -> None:
        """Our AnyValue bytes equal the generated class's serialization for edge values."""
        if isinstance(value, bool):
            expected = common_pb2.AnyValue(bool_value=value)
        elif isinstance(value, int):
            expected = common_pb2.AnyValue(int_value=value)
        elif isinstance(value, float):
            expected = common_pb2.AnyValue(double_value=value)
        else:
            expected = common_pb2.AnyValue(string_value=value)
        assert wire.any_value(value) == expected.SerializeToString()
        kv = common_pb2.KeyValue(key="k", value=expected).SerializeToString()
        item = wire.sized_attribute(wire.attribute_key("k"), value)
        assert wire.repeated(b"\x32", [item, item]) == (b"\x32" + wire.varint(len(kv)) + kv) * 2

    @settings(max_examples=60, deadline=None)
    @given(
        st.dictionaries(
            st.text(min_size=1, max_size=40),
            st.one_of(
                st.text(max_size=300),
                st.booleans(),
                st.integers(min_value=-(2**63), max_value=2**63 - 1),
                st.floats(allow_nan=False),
            ),
            max_size=20,
        )
    )
    def test_attrs_round_trip(self, attrs: dict[str, Any]) -> None:
        """Arbitrary attrs survive encoding (keys that collide with ours get the attrs. prefix)."""
        event = CustomEvent(**envelope(type="job.created", attrs=attrs))
        _, exported = only_record(event)
        for key, value in attrs.items():
            assert exported.get(key, exported.get(f"attrs.{key}")) == value

    @pytest.mark.parametrize("name", ["k", "gen_ai.request.model", "é" * 128])
    def test_prepared_heads_match_the_general_encoding(self, name: str) -> None:
        """The hot path's per-key heads give the bytes sized_attribute gives, at every size boundary."""
        values: list[Any] = ["x" * size for size in (0, 1, 124, 125, 126, 127, 300)] + ["é" * 63, "é" * 64]
        values += [0, 127, 128, 16383, 16384, -1, 2**64, True, False, 0.0, -2.5]
        attrs = {f"{name}{index}": value for index, value in enumerate(values)}
        encoder = AttributeEncoder(capture_content=False)
        items = encoder.items(CustomEvent(**envelope(type="job.created", attrs=attrs)))
        expected = [wire.sized_attribute(wire.attribute_key(key), value) for key, value in attrs.items()]
        assert items[-len(attrs) :] == expected
        key = wire.AttributeKey(name)
        assert [key.item(value) for value in values] == [wire.sized_attribute(key.encoded, value) for value in values]
        array = ArrayKey(name)
        for size in (0, 125):
            assert (array.string_heads[size] or array.string_head(size)) + b"x" * size == array.item("x" * size)
