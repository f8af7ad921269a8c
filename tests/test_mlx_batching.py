"""BatchGenerator and batch_generate, instrumented in-process; hooks that fail soft."""

from __future__ import annotations

import logging
from typing import Any

import pytest

pytest.importorskip("mlx_lm")

pytestmark = pytest.mark.mlx

from emitters import Emitter  # noqa: E402
from emitters.mlx import instrument, uninstrument  # noqa: E402
from tests.mlx_fixtures import engine_emitter, of_type, read_stream, tiny_model, tiny_model_dir  # noqa: E402,F401

PROMPTS = ["The quick brown fox", "Time to first token measures how long", "An inference engine loads"]


@pytest.fixture
def instrumented(engine_emitter: Emitter) -> Any:  # noqa: F811
    instrumentation = instrument(engine_emitter)
    yield instrumentation
    uninstrument()


class TestBatchGenerate:
    def test_one_generation_per_prompt_with_mlx_lms_counts(
        self, tiny_model: Any, instrumented: Any, engine_emitter: Emitter, redis_client: Any  # noqa: F811
    ) -> None:
        from mlx_lm.generate import batch_generate

        model, tokenizer = tiny_model
        prompts = [tokenizer.encode(text) for text in PROMPTS]
        result = batch_generate(model, tokenizer, prompts, max_tokens=[5, 7, 9], return_token_ids=True)
        assert engine_emitter.flush()
        events = read_stream(redis_client)
        started, completed = of_type(events, "generation.started"), of_type(events, "generation.completed")
        assert sorted(event.prompt_tokens for event in started) == sorted(len(prompt) for prompt in prompts)
        assert len(completed) == len(prompts)
        assert sum(event.generation_tokens for event in completed) == result.stats.generation_tokens
        assert {event.request_id for event in started} == {event.request_id for event in completed}
        assert max(event.decode_batch_max for event in completed) == len(prompts)
        for event in completed:
            assert event.finish_reason in ("length", "stop")
            assert event.ttft_ms is not None and event.prefill_ms is not None and event.queue_wait_ms is not None

    def test_removed_sequence_is_reported_cancelled(
        self, tiny_model: Any, instrumented: Any, engine_emitter: Emitter, redis_client: Any  # noqa: F811
    ) -> None:
        from mlx_lm.generate import BatchGenerator  # the instrumented class, looked up now

        model, tokenizer = tiny_model
        generator = BatchGenerator(model, max_tokens=50)
        (uid,) = generator.insert([tokenizer.encode(PROMPTS[0])])
        while not generator.next()[1]:
            pass
        generator.remove([uid])
        generator.close()
        assert engine_emitter.flush()
        (done,) = of_type(read_stream(redis_client), "generation.completed")
        assert done.finish_reason == "cancelled" and done.generation_tokens == 1


class TestFailSoft:
    def test_a_renamed_internal_is_reported_once_and_the_rest_still_works(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    ) -> None:  # fmt: skip
        import mlx_lm.server

        monkeypatch.delattr(mlx_lm.server, "GenerationContext")
        monkeypatch.delattr(mlx_lm.server.APIHandler, "do_POST")
        with caplog.at_level(logging.WARNING, logger="mlx_telemetry.mlx"):
            instrumentation = instrument(engine_emitter)
        try:
            assert [name.split(":")[0] for name in instrumentation.missing_hooks] == [
                "mlx_lm.server.APIHandler.do_POST",
                "mlx_lm.server.GenerationContext",
            ]
            assert len(caplog.records) == 1 and "could not hook 2" in caplog.records[0].getMessage()
            from mlx_lm.generate import batch_generate

            model, tokenizer = tiny_model
            batch_generate(model, tokenizer, [tokenizer.encode(PROMPTS[1])], max_tokens=3)
        finally:
            uninstrument()
        assert engine_emitter.flush()
        assert len(of_type(read_stream(redis_client), "generation.completed")) == 1

    def test_uninstrument_restores_mlx_lms_classes_and_methods(self, engine_emitter: Emitter) -> None:  # noqa: F811
        import importlib

        import mlx_lm.server

        generate_module = importlib.import_module("mlx_lm.generate")
        before = (generate_module.BatchGenerator, mlx_lm.server.BatchGenerator, mlx_lm.server.GenerationContext,
                  mlx_lm.server.APIHandler.do_POST, mlx_lm.server.ResponseGenerator.generate,
                  mlx_lm.server.stream_generate)  # fmt: skip
        instrument(engine_emitter)
        assert mlx_lm.server.BatchGenerator is not before[1]
        assert mlx_lm.server.stream_generate is not before[5]
        uninstrument()
        after = (generate_module.BatchGenerator, mlx_lm.server.BatchGenerator, mlx_lm.server.GenerationContext,
                 mlx_lm.server.APIHandler.do_POST, mlx_lm.server.ResponseGenerator.generate,
                 mlx_lm.server.stream_generate)  # fmt: skip
        assert after == before


class TestOtlpMapping:
    def test_serving_fields_become_span_attributes(self) -> None:
        """The generation span carries the new fields (GenAI name for cache reuse, mlx.* for the rest)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        from collector.otlp.translate import Translator
        from emitters.events import GenerationCompleted

        event = GenerationCompleted(
            id="0" * 31 + "1", ts=1_700_000_000_000_000_000, service="engine", host="h", pid=1,
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7",
            model="tiny-llama", request_id="chatcmpl-1", prompt_tokens=20, generation_tokens=8, duration_ms=90.0,
            cached_prompt_tokens=12, queue_wait_ms=3.0, prefill_ms=9.5, prefill_tokens=8, decode_ms=70.0,
            decode_batch_max=4, draft_tokens=5, draft_acceptance=0.625,
        )  # fmt: skip
        request = ExportTraceServiceRequest.FromString(b"".join(Translator().spans([event])))
        (span,) = request.resource_spans[0].scope_spans[0].spans
        attributes = {item.key: item.value for item in span.attributes}
        assert attributes["gen_ai.usage.cache_read.input_tokens"].int_value == 12
        assert attributes["mlx.generation.queue_wait_ms"].double_value == 3.0
        assert attributes["mlx.generation.prefill_ms"].double_value == 9.5
        assert attributes["mlx.generation.decode_batch_max"].int_value == 4
        assert attributes["mlx.generation.draft_acceptance"].double_value == 0.625


class TestBookkeepingNeverReachesTheEngine:
    def test_responses_of_an_unexpected_shape_are_served_unchanged(
        self, instrumented: Any, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A future mlx-lm whose responses lack the fields we read: the engine still gets its
        responses and removals, and one warning names the hook."""
        from emitters.mlx.batching import instrumented_batch_generator

        class ChangedBatchGenerator:  # the fault: responses with none of today's attributes
            def __init__(self, model: Any) -> None:
                pass

            def insert_segments(self, segments: Any, max_tokens: Any = None) -> list[int]:
                return [7]

            def next(self) -> tuple[list[object], list[object]]:
                return [object()], [object()]

            def remove(self, uids: Any) -> str:
                return "removed"

        generator = instrumented_batch_generator(ChangedBatchGenerator, instrumented)(object())
        with caplog.at_level(logging.WARNING, logger="mlx_telemetry.mlx"):
            assert generator.insert_segments(None, None) == [7]  # segments of no known shape
            prompt, generated = generator.next()
            generator.next()
            assert len(prompt) == 1 and len(generated) == 1
            assert generator.remove([7]) == "removed"
        warnings = [r.getMessage() for r in caplog.records if "bookkeeping failed" in r.getMessage()]
        assert any("BatchGenerator.next" in w for w in warnings)
        assert sum("BatchGenerator.next" in w for w in warnings) == 1  # logged once, not per step
