"""mlx-lm instrumentation against a real (tiny) llama model and a real Redis."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlx_lm")

import mlx_lm  # noqa: E402
import redis  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

import emitters.mlx as telemetry_mlx  # noqa: E402
from collector.tinymodel import BUILD_VERSION, build_tiny_model, tiny_model_path  # noqa: E402
from emitters import Emitter, decode_live  # noqa: E402
from emitters.mlx import Instrumentation, instrument, percentile, uninstrument  # noqa: E402
from tests.mlx_fixtures import (  # noqa: E402,F401 - fixtures are used by name
    engine_emitter,
    of_type,
    read_stream,
    tiny_model,
    tiny_model_dir,
)

pytestmark = pytest.mark.mlx

PROMPT = "Explain the difference between a process and a thread."
_ORIGINAL_STREAM = mlx_lm.stream_generate
_ORIGINAL_LOAD = mlx_lm.load


@pytest.fixture(autouse=True)
def _no_patches_left() -> Any:
    yield
    uninstrument()


def _drain(emitter: Emitter) -> None:
    assert emitter.flush(15), emitter.stats()


def _file_digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


class FailingProcessor:
    """A logits processor that raises at a given decoding step, inside mlx-lm's loop."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at = fail_at
        self.calls = 0

    def __call__(self, tokens: Any, logits: Any) -> Any:
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError(f"injected failure at step {self.calls}")
        return logits


class TestTinyModel:
    def test_build_is_deterministic(self, tmp_path: Path, tiny_model_dir: Path) -> None:
        """Two builds produce byte-identical files."""
        again = build_tiny_model(tmp_path / "again")
        assert _file_digests(again) == _file_digests(tiny_model_dir)

    def test_loads_with_mlx_lm_and_transformers(self, tiny_model_dir: Path, tiny_model: Any) -> None:
        """mlx-lm builds a llama model from it and transformers loads its tokenizer offline."""
        from transformers import AutoTokenizer

        model, tokenizer = tiny_model
        config = json.loads((tiny_model_dir / "config.json").read_text())
        assert config["model_type"] == "llama"
        assert type(model).__module__ == "mlx_lm.models.llama"
        assert len(model.layers) == config["num_hidden_layers"]
        hf_tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
        ids = hf_tokenizer.encode("hello world")
        assert ids[0] == config["bos_token_id"]
        assert hf_tokenizer.decode(ids, skip_special_tokens=True) == "hello world"
        assert tokenizer.eos_token_id == config["eos_token_id"]
        assert len(hf_tokenizer) == config["vocab_size"]

    def test_cached_build_is_reused_and_stale_one_rebuilt(self, tmp_path: Path) -> None:
        """tiny_model_path builds once; a build of another version is replaced."""
        path = tiny_model_path(tmp_path / "cache")
        weights = path / "model.safetensors"
        first = weights.stat().st_mtime_ns
        assert tiny_model_path(tmp_path / "cache") == path
        assert weights.stat().st_mtime_ns == first
        (path / ".tiny-model-build").write_text(f"{BUILD_VERSION - 1}\n")
        (path / "model.safetensors").write_bytes(b"stale")
        rebuilt = tiny_model_path(tmp_path / "cache")
        assert (rebuilt / ".tiny-model-build").read_text().strip() == str(BUILD_VERSION)
        assert (rebuilt / "model.safetensors").stat().st_size > 1000


class TestLoad:
    def test_load_emits_model_loaded(
        self, tiny_model_dir: Path, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """model.loaded carries the path, the parameter count, quantization and load time."""
        model, _ = Instrumentation(engine_emitter).load(str(tiny_model_dir))
        _drain(engine_emitter)
        (loaded,) = of_type(read_stream(redis_client), "model.loaded")
        assert loaded.model == "tiny-llama"
        assert loaded.model_path == str(tiny_model_dir.resolve())
        assert loaded.parameters == sum(value.size for _, value in tree_flatten(model.parameters()))
        assert loaded.quantization == "none"
        assert loaded.load_ms > 0
        assert loaded.metadata == {"model_type": "llama"}

    def test_quantized_model_reports_bits(
        self, tiny_model_dir: Path, tmp_path: Path, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """A 4-bit model reports quantization 4 and its unpacked parameter count."""
        from mlx_lm import convert

        quantized = tmp_path / "tiny-q4"
        convert(str(tiny_model_dir), mlx_path=str(quantized), quantize=True, q_bits=4, q_group_size=32)
        Instrumentation(engine_emitter).load(str(quantized))
        _drain(engine_emitter)
        (loaded,) = of_type(read_stream(redis_client), "model.loaded")
        assert loaded.quantization == 4
        unquantized = json.loads((tiny_model_dir / "config.json").read_text())
        assert loaded.parameters > unquantized["vocab_size"] * unquantized["hidden_size"]

    def test_load_failure_emits_error_and_reraises(
        self, tiny_model_dir: Path, tmp_path: Path, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """A model directory without weights: the error is reported and still raised."""
        broken = tmp_path / "broken-model"
        broken.mkdir()
        (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
        with pytest.raises(FileNotFoundError, match="No safetensors"):
            Instrumentation(engine_emitter).load(str(broken))
        _drain(engine_emitter)
        (error,) = read_stream(redis_client, "errors")
        assert error.type == "error"
        assert error.error_type.endswith("FileNotFoundError")
        assert error.model == "broken-model"
        assert "No safetensors" in error.message
        assert of_type(read_stream(redis_client), "model.loaded") == []

    def test_returns_what_mlx_lm_returns(self, tiny_model_dir: Path, engine_emitter: Emitter) -> None:
        """The wrapper asks mlx-lm for the config but returns the caller's requested shape."""
        telemetry = Instrumentation(engine_emitter)
        assert len(telemetry.load(str(tiny_model_dir))) == 2
        model, tokenizer, config = telemetry.load(str(tiny_model_dir), return_config=True)
        assert config["model_type"] == "llama"


class TestStreamGenerate:
    def test_events_match_what_mlx_lm_returned(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """started/token/completed events carry exactly the counts mlx-lm reported."""
        model, tokenizer = tiny_model
        responses = list(
            Instrumentation(engine_emitter).stream_generate(model, tokenizer, PROMPT, max_tokens=24)
        )
        last = responses[-1]
        _drain(engine_emitter)
        events = read_stream(redis_client)
        (started,) = of_type(events, "generation.started")
        (completed,) = of_type(events, "generation.completed")
        tokens = of_type(events, "token.generated")
        assert started.prompt_tokens == last.prompt_tokens == completed.prompt_tokens
        assert started.max_tokens == 24
        assert completed.generation_tokens == last.generation_tokens == len(responses) == len(tokens)
        assert completed.finish_reason == last.finish_reason
        assert completed.tokens_per_second == pytest.approx(last.generation_tps)
        assert completed.prompt_tps == pytest.approx(last.prompt_tps)
        assert completed.peak_memory_gb == pytest.approx(last.peak_memory)
        assert [token.index for token in tokens] == list(range(len(responses)))
        assert "".join(token.token for token in tokens) == "".join(r.text for r in responses)
        generation = [started, *tokens, completed]
        assert {(e.trace_id, e.span_id, e.request_id) for e in generation} == {
            (started.trace_id, started.span_id, started.request_id)
        }

    def test_timings_are_positive_and_consistent(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """TTFT <= duration, and tokens / tokens_per_second fits inside the duration."""
        model, tokenizer = tiny_model
        for _ in Instrumentation(engine_emitter).stream_generate(model, tokenizer, PROMPT, max_tokens=32):
            pass
        _drain(engine_emitter)
        (completed,) = of_type(read_stream(redis_client), "generation.completed")
        assert 0 < completed.ttft_ms <= completed.duration_ms
        assert completed.tokens_per_second > 0
        decode_seconds = completed.generation_tokens / completed.tokens_per_second
        assert decode_seconds <= completed.duration_ms / 1000.0
        assert 0 < completed.itl_p50_ms <= completed.itl_p99_ms <= completed.duration_ms

    def test_output_is_unchanged_by_instrumentation(self, tiny_model: Any, engine_emitter: Emitter) -> None:
        """Greedy decoding gives the same tokens with and without instrumentation."""
        model, tokenizer = tiny_model
        plain = [r.token for r in _ORIGINAL_STREAM(model, tokenizer, PROMPT, max_tokens=16)]
        instrumented = [
            r.token
            for r in Instrumentation(engine_emitter).stream_generate(model, tokenizer, PROMPT, max_tokens=16)
        ]
        assert instrumented == plain

    def test_exception_inside_generation_emits_error_and_propagates(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """A failure inside mlx-lm's decoding loop becomes an error event and still raises."""
        model, tokenizer = tiny_model
        telemetry = Instrumentation(engine_emitter)
        received = []
        with pytest.raises(RuntimeError, match="injected failure"):
            for response in telemetry.stream_generate(
                model, tokenizer, PROMPT, max_tokens=32, logits_processors=[FailingProcessor(4)],
                request_id="req-fail",
            ):  # fmt: skip
                received.append(response)
        assert telemetry.active_generations == 0
        _drain(engine_emitter)
        (error,) = read_stream(redis_client, "errors")
        assert error.error_type.endswith("RuntimeError")
        assert error.request_id == "req-fail"
        assert error.model == "tiny-llama"
        assert error.context["tokens_generated"] == len(received)
        events = read_stream(redis_client)
        (started,) = of_type(events, "generation.started")
        assert (error.trace_id, error.span_id) == (started.trace_id, started.span_id)
        assert of_type(events, "generation.completed") == []

    def test_consumer_stopping_early_is_reported_as_cancelled(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """Breaking out of the stream completes the generation with finish_reason=cancelled."""
        model, tokenizer = tiny_model
        stream = Instrumentation(engine_emitter).stream_generate(model, tokenizer, PROMPT, max_tokens=64)
        for count, _ in enumerate(stream, start=1):
            if count == 3:
                break
        stream.close()
        _drain(engine_emitter)
        (completed,) = of_type(read_stream(redis_client), "generation.completed")
        assert completed.finish_reason == "cancelled"
        assert completed.generation_tokens == 3

    def test_request_id_from_scope_or_keyword(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """An enclosing context supplies request and job ids; the keyword wins over it."""
        model, tokenizer = tiny_model
        telemetry = Instrumentation(engine_emitter)
        with engine_emitter.context(request_id="from-scope", job_id="job-7"):
            scoped = telemetry.stream_generate(model, tokenizer, PROMPT, max_tokens=4)
            explicit = telemetry.stream_generate(model, tokenizer, PROMPT, max_tokens=4, request_id="explicit")
        # Consumed outside the scope: the ids were taken when the call was made.
        list(scoped)
        list(explicit)
        _drain(engine_emitter)
        completed = of_type(read_stream(redis_client), "generation.completed")
        assert [(c.request_id, c.job_id) for c in completed] == [("from-scope", "job-7"), ("explicit", "job-7")]
        assert completed[0].span_id != completed[1].span_id

    def test_prompt_text_only_when_captured(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """By default only the prompt's length and a keyed hash leave the engine."""
        model, tokenizer = tiny_model
        list(Instrumentation(engine_emitter).stream_generate(model, tokenizer, PROMPT, max_tokens=2))
        list(
            Instrumentation(engine_emitter, capture_prompts=True).stream_generate(
                model, tokenizer, PROMPT, max_tokens=2
            )
        )
        _drain(engine_emitter)
        hidden, shown = of_type(read_stream(redis_client), "generation.started")
        assert hidden.prompt is None
        assert hidden.prompt_chars == len(PROMPT)
        assert hidden.prompt_hash == engine_emitter.keyed_hash(PROMPT)
        assert shown.prompt == PROMPT

    def test_sampler_settings_are_reported(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """Settings of a sampler from the instrumented make_sampler reach generation.started."""
        model, tokenizer = tiny_model
        telemetry = Instrumentation(engine_emitter)
        sampler = telemetry.make_sampler(temp=0.7, top_p=0.9, top_k=40)
        list(telemetry.stream_generate(model, tokenizer, PROMPT, max_tokens=3, sampler=sampler))
        list(telemetry.stream_generate(model, tokenizer, PROMPT, max_tokens=3))
        _drain(engine_emitter)
        sampled, greedy = of_type(read_stream(redis_client), "generation.started")
        assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.min_p) == (0.7, 0.9, 40, None)
        assert greedy.temperature == 0.0

    def test_token_ids_prompt_and_logprobs(
        self, tiny_model: Any, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """A prompt of token ids is counted as given; logprobs travel when asked for."""
        model, tokenizer = tiny_model
        ids = tokenizer.encode(PROMPT)
        responses = list(
            Instrumentation(engine_emitter, capture_logprobs=True).stream_generate(
                model, tokenizer, ids, max_tokens=3
            )
        )
        _drain(engine_emitter)
        events = read_stream(redis_client)
        (started,) = of_type(events, "generation.started")
        assert started.prompt_tokens == len(ids)
        assert started.prompt_chars is None
        tokens = of_type(events, "token.generated")
        assert [t.logprob for t in tokens] == pytest.approx(
            [r.logprobs[r.token].item() for r in responses]
        )

    def test_live_mode_publishes_tokens_without_storing_them(
        self, tiny_model: Any, redis_url: str, redis_client: redis.Redis
    ) -> None:
        """With token_events=live, tokens go to the pub/sub channel, aggregates to the stream."""
        model, tokenizer = tiny_model
        pubsub = redis_client.pubsub()
        pubsub.subscribe("telemetry:live")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        with Emitter("live-engine", redis_url, strict=True, hash_secret="s", flush_interval=0.005) as emitter:
            responses = list(Instrumentation(emitter).stream_generate(model, tokenizer, PROMPT, max_tokens=8))
            _drain(emitter)
        live = []
        while len(live) < len(responses):
            message = pubsub.get_message(timeout=10)
            assert message is not None, f"only {len(live)} live token events arrived"
            live.extend(decode_live(message["data"]))
        pubsub.close()
        assert [event.index for event in live] == list(range(len(responses)))
        events = read_stream(redis_client)
        assert of_type(events, "token.generated") == []
        assert len(of_type(events, "generation.completed")) == 1


class TestInstrumentPatching:
    def test_one_line_instrumentation_covers_load_and_generate(
        self, tiny_model_dir: Path, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """After instrument(), mlx_lm.load and mlx_lm.generate report, each generation once."""
        instrument(engine_emitter)
        from mlx_lm.generate import stream_generate as imported_after

        model, tokenizer = mlx_lm.load(str(tiny_model_dir))
        text = mlx_lm.generate(model, tokenizer, PROMPT, max_tokens=6)
        list(imported_after(model, tokenizer, PROMPT, max_tokens=6))
        _drain(engine_emitter)
        events = read_stream(redis_client)
        assert len(of_type(events, "model.loaded")) == 1
        started = of_type(events, "generation.started")
        completed = of_type(events, "generation.completed")
        assert len(started) == len(completed) == 2
        first_tokens = [t for t in of_type(events, "token.generated") if t.request_id == started[0].request_id]
        assert "".join(t.token for t in first_tokens) == text
        assert {c.model for c in completed} == {"tiny-llama"}

    def test_uninstrument_restores_the_originals(self, engine_emitter: Emitter) -> None:
        """Every patched module attribute goes back to mlx-lm's own function."""
        import mlx_lm.generate  # noqa: F401 - the module, shadowed by the function on mlx_lm
        import sys

        generate_module = sys.modules["mlx_lm.generate"]
        instrument(engine_emitter)
        assert mlx_lm.load is not _ORIGINAL_LOAD
        assert generate_module.stream_generate is not _ORIGINAL_STREAM
        assert uninstrument() is True
        assert mlx_lm.load is _ORIGINAL_LOAD
        assert generate_module.stream_generate is _ORIGINAL_STREAM
        assert mlx_lm.stream_generate is _ORIGINAL_STREAM
        assert uninstrument() is False

    def test_instrument_again_retargets(
        self, tiny_model: Any, redis_url: str, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """A second instrument() replaces the first: events go to the new emitter only."""
        model, tokenizer = tiny_model
        with Emitter("first-engine", redis_url, strict=True, hash_secret="s") as first:
            instrument(first)
            second = instrument(engine_emitter)
            assert telemetry_mlx.current_instrumentation() is second
            list(mlx_lm.stream_generate(model, tokenizer, PROMPT, max_tokens=3))
            _drain(first)
        _drain(engine_emitter)
        completed = of_type(read_stream(redis_client), "generation.completed")
        assert [c.service for c in completed] == ["test-engine"]
        uninstrument()
        assert mlx_lm.stream_generate is _ORIGINAL_STREAM


class TestRuntimeStatus:
    def test_heartbeat_reports_until_stopped(
        self, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """The heartbeat thread emits runtime.status periodically and stops on request."""
        telemetry = Instrumentation(engine_emitter)
        heartbeat = telemetry.heartbeat(interval=0.05)
        wake = threading.Event()
        statuses: list[Any] = []
        for _ in range(200):
            _drain(engine_emitter)
            statuses = of_type(read_stream(redis_client), "runtime.status")
            if len(statuses) >= 3:
                break
            wake.wait(0.05)
        heartbeat.stop()
        assert len(statuses) >= 3
        assert {(s.status, s.models_loaded, s.active_tasks) for s in statuses} == {("ready", 0, 0)}
        _drain(engine_emitter)
        settled = len(of_type(read_stream(redis_client), "runtime.status"))
        wake.wait(0.3)
        _drain(engine_emitter)
        assert len(of_type(read_stream(redis_client), "runtime.status")) == settled

    def test_models_loaded_and_unloaded(
        self, tiny_model_dir: Path, engine_emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """runtime.status counts live models; model_unloaded reports by name and forgets it."""
        telemetry = Instrumentation(engine_emitter)
        model, _ = telemetry.load(str(tiny_model_dir))
        telemetry.runtime_status()
        telemetry.model_unloaded(model, reason="evicted")
        telemetry.runtime_status("shutdown")
        _drain(engine_emitter)
        events = read_stream(redis_client)
        (unloaded,) = of_type(events, "model.unloaded")
        assert (unloaded.model, unloaded.reason) == ("tiny-llama", "evicted")
        assert [(s.status, s.models_loaded) for s in of_type(events, "runtime.status")] == [
            ("ready", 1),
            ("shutdown", 0),
        ]


class TestPercentile:
    def test_nearest_rank(self) -> None:
        """Nearest-rank percentiles of a known series."""
        values = [float(v) for v in range(1, 101)]
        assert percentile(values, 50) == 50.0
        assert percentile(values, 99) == 99.0
        assert percentile([3.0], 99) == 3.0
        with pytest.raises(ValueError):
            percentile([], 50)


class TestOverheadBench:
    def test_reports_both_rates_and_the_per_token_cost(self, tiny_model_dir: Path, redis_url: str) -> None:
        """A smoke run of the benchmark function: every figure is there and sane (no timing asserts)."""
        from collector.bench.mlx_overhead import measure_overhead, overhead_row

        result = measure_overhead(
            redis_url, rounds=2, max_tokens=4, warmup=1, hot_path_calls=200, model_dir=str(tiny_model_dir)
        )
        assert result["plain_tokens_per_second"] > 0
        assert result["instrumented_tokens_per_second"] > 0
        assert result["hot_path_us"] > 0
        assert result["per_token_cost_us"] >= result["hot_path_us"]
        assert result["token_events"] == "live"
        assert result["events_dropped"] == 0
        row = overhead_row(result)
        assert row.baseline == result["plain_cpu_us_per_token"]
        assert row.passed in (True, False)
