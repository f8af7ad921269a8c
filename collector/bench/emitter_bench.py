"""Rows 1 and 2: the cost of emit() to the host, and the emitter's throughput into Redis."""

from __future__ import annotations

import time
from typing import Any, Callable

import redis

from collector.bench.report import Row, median, percentile
from emitters import Emitter
from emitters.events import GenerationCompleted
from emitters.streams import PAYLOAD_FIELD

_COMPLETED_FIELDS: dict[str, Any] = {
    "ttft_ms": 41.5,
    "tokens_per_second": 87.2,
    "prompt_tps": 950.0,
    "peak_memory_gb": 2.4,
    "finish_reason": "stop",
}


def completed_call(emitter: Emitter) -> Callable[[int], None]:
    """The typical hot-path call, a generation.completed with its aggregates, as
    written in an engine: literal arguments, one call, nothing in between."""

    def emit(index: int) -> None:
        emitter.generation_completed(
            "llama-3b-4bit", "req-1", 118, 256, 2140.5,
            ttft_ms=41.5, tokens_per_second=87.2, prompt_tps=950.0, peak_memory_gb=2.4, finish_reason="stop",
        )  # fmt: skip

    return emit


def _otel_logger() -> tuple[Callable[[int], None], Callable[[], None]]:
    """An SDK Logger with a BatchLogRecordProcessor and a no-op exporter."""
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult

    class NoopExporter(LogRecordExporter):
        def export(self, batch: Any) -> LogRecordExportResult:
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(NoopExporter()))
    logger = provider.get_logger("mlx-telemetry-bench")

    def emit(index: int) -> None:
        logger.emit(
            LogRecord(
                timestamp=time.time_ns(),
                severity_number=SeverityNumber.INFO,
                body="generation.completed",
                attributes={
                    "gen_ai.request.model": "llama-3b-4bit", "request_id": "req-1", "prompt_tokens": 118,
                    "generation_tokens": 256, "duration_ms": 2140.5, "ttft_ms": 41.5, "tokens_per_second": 87.2,
                    "prompt_tps": 950.0, "peak_memory_gb": 2.4, "finish_reason": "stop",
                },
            )
        )  # fmt: skip

    return emit, provider.shutdown


def _per_call_ns(call: Callable[[int], None], calls: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for index in range(calls):
        start = clock()
        call(index)
        samples.append(clock() - start)
    return samples


def bench_emit_hot_path(redis_url: str, *, calls: int, repeats: int) -> Row:
    """Row 1: ns per call, ours vs the OTel SDK, interleaved blocks in one process."""
    emitter = Emitter("bench", redis_url, buffer_size=calls * 2, hash_secret="bench", events_maxlen=calls * 2)
    otel_emit, otel_shutdown = _otel_logger()
    ours_call = completed_call(emitter)
    try:
        for warm in (ours_call, otel_emit):
            _per_call_ns(warm, min(calls, 2_000))
        emitter.flush(30)
        ours: list[float] = []
        theirs: list[float] = []
        ours_medians, theirs_medians = [], []
        for _ in range(repeats):
            block = _per_call_ns(ours_call, calls)
            emitter.flush(30)  # the worker ships between blocks, as it would between requests
            ours += block
            ours_medians.append(median(block))
            block = _per_call_ns(otel_emit, calls)
            theirs += block
            theirs_medians.append(median(block))
        dropped = sum(emitter.stats()["dropped"].values())
    finally:
        emitter.close(10)
        otel_shutdown()
    ours.sort()
    theirs.sort()
    return Row(
        name="1 emit() hot path, median",
        figure=median(ours_medians),
        baseline=median(theirs_medians),
        unit="ns",
        baseline_label="OTel Logger.emit+BatchLogRecordProcessor",
        target=0.1,
        direction="<=",
        detail={
            "ours_p99_ns": percentile(ours, 0.99),
            "otel_p99_ns": percentile(theirs, 0.99),
            "p99_ratio": percentile(ours, 0.99) / percentile(theirs, 0.99),
            "dropped": dropped,
        },
    )


def bench_emitter_throughput(redis_url: str, *, events: int, repeats: int) -> Row:
    """Row 2: emit->Redis events/s vs a bare pipelined XADD loop of the same payloads."""
    client = redis.Redis.from_url(redis_url)
    stream = "bench:throughput"
    batch = 500
    ours_rates, bare_rates = [], []
    try:
        for _ in range(repeats):
            client.delete(stream, f"{stream}:errors")
            emitter = Emitter(
                "bench", redis_url, stream_prefix="bench:tp", buffer_size=events, batch_size=batch,
                events_maxlen=events * 2, hash_secret="bench",
            )  # fmt: skip
            start = time.perf_counter()
            emit = completed_call(emitter)
            for index in range(events):
                emit(index)
            if not emitter.flush(120):
                raise RuntimeError(f"emitter did not drain: {emitter.stats()}")
            ours_rates.append(events / (time.perf_counter() - start))
            if emitter.stats()["sent"] != events:
                raise RuntimeError(f"emitter lost events: {emitter.stats()}")
            emitter.close(5)
            # The bare loop ships what the emitter shipped: the same encoded payloads.
            payloads = [fields[PAYLOAD_FIELD.encode()] for _, fields in client.xrange("bench:tp:events")]
            client.delete("bench:tp:events")
            start = time.perf_counter()
            for offset in range(0, len(payloads), batch):
                pipe = client.pipeline(transaction=False)
                for payload in payloads[offset : offset + batch]:
                    pipe.xadd(stream, {PAYLOAD_FIELD: payload}, maxlen=events * 2, approximate=True)
                pipe.execute()
            bare_rates.append(len(payloads) / (time.perf_counter() - start))
            client.delete(stream)
    finally:
        client.close()
    return Row(
        name="2 emitter throughput into Redis",
        figure=median(ours_rates),
        baseline=median(bare_rates),
        unit="ev/s",
        baseline_label="bare pipelined XADD",
        target=0.8,
        direction=">=",
    )


def sample_completed_payload() -> bytes:
    """One encoded generation.completed, for benches that need raw stream entries."""
    from emitters.events import encode

    return encode(
        GenerationCompleted(
            id="0" * 32, ts=time.time_ns(), service="bench", host="bench-host", pid=1,
            trace_id="1" * 32, span_id="2" * 16, model="llama-3b-4bit", request_id="req-0",
            prompt_tokens=118, generation_tokens=256, duration_ms=2140.5, **_COMPLETED_FIELDS,
        )  # fmt: skip
    )
