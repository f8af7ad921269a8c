"""Benchmark: events to OTLP log bytes, ours versus the OpenTelemetry SDK's encoder.

Both sides produce the same serialized ``ExportLogsServiceRequest`` content
for the same events: the SDK side gets ``ReadableLogRecord`` objects carrying
exactly the attributes, body, severity, ids and resource our translator
writes (built outside the timed section, so the SDK is timed only on
``encode_logs(...).SerializeToString()``), while ours is timed from the
decoded events to the bytes. Not a test: the ``bench`` command calls
:func:`bench_encoding`; :func:`sample_events` makes a representative mix.
"""

from __future__ import annotations

import random
import time
from typing import Any, Sequence

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from collector.otlp.translate import TranslateOptions, Translator
from emitters.events import (
    CustomEvent,
    ErrorEvent,
    Event,
    GenerationCompleted,
    GenerationStarted,
    ModelLoaded,
    RuntimeStatus,
)

__all__ = ["bench_encoding", "sample_events"]


def sample_events(count: int, *, seed: int = 0) -> list[Event]:
    """A serving-like mix: each generation is started + completed, with some
    model loads, runtime status, errors and custom job events, from 4 processes."""
    rng = random.Random(seed)
    processes = [(f"engine-{i % 2}", f"host-{i}", 1000 + i) for i in range(4)]
    events: list[Event] = []
    ts = 1_700_000_000_000_000_000
    while len(events) < count:
        service, host, pid = rng.choice(processes)
        trace_id = "%032x" % rng.getrandbits(128)
        span_id = "%016x" % rng.getrandbits(64)
        envelope: dict[str, Any] = dict(
            ts=ts, service=service, host=host, pid=pid, trace_id=trace_id, span_id=span_id, job_id=f"job-{rng.randrange(50)}"
        )
        ts += 1_000_000
        request_id = f"req-{rng.getrandbits(48):x}"
        kind = rng.random()
        if kind < 0.8:
            prompt_tokens, generated = rng.randrange(10, 2000), rng.randrange(1, 512)
            events.append(
                GenerationStarted(id="%032x" % rng.getrandbits(128), **envelope, model="llama-3.2-1b-4bit",
                                  request_id=request_id, prompt_tokens=prompt_tokens, max_tokens=512,
                                  temperature=0.7, top_p=0.95, prompt_chars=prompt_tokens * 4)
            )
            events.append(
                GenerationCompleted(id="%032x" % rng.getrandbits(128), **envelope, model="llama-3.2-1b-4bit",
                                    request_id=request_id, prompt_tokens=prompt_tokens, generation_tokens=generated,
                                    duration_ms=rng.uniform(50, 9000), ttft_ms=rng.uniform(5, 400),
                                    tokens_per_second=rng.uniform(20, 120), prompt_tps=rng.uniform(200, 2000),
                                    peak_memory_gb=rng.uniform(1, 8), finish_reason=rng.choice(("stop", "length")),
                                    attrs={"user.tier": "pro", "endpoint": "/v1/completions"})
            )
        elif kind < 0.85:
            events.append(
                ModelLoaded(id="%032x" % rng.getrandbits(128), **envelope, model="llama-3.2-1b-4bit",
                            model_path="/models/llama-3.2-1b-4bit", quantization="int4", parameters=1_230_000_000,
                            load_ms=rng.uniform(500, 3000))
            )
        elif kind < 0.9:
            events.append(
                RuntimeStatus(id="%032x" % rng.getrandbits(128), **envelope, status="busy", models_loaded=1,
                              active_tasks=rng.randrange(8), memory_gb=rng.uniform(1, 8))
            )
        elif kind < 0.95:
            events.append(
                ErrorEvent(id="%032x" % rng.getrandbits(128), **envelope, message=f"request {request_id} timed out",
                           error_type="TimeoutError", model="llama-3.2-1b-4bit", fingerprint="%016x" % rng.getrandbits(64),
                           stack="Traceback (most recent call last):\n  File \"engine.py\", line 10, in run\n"
                           "TimeoutError: timed out\n")
            )
        else:
            events.append(
                CustomEvent(id="%032x" % rng.getrandbits(128), **envelope, type="job.progress_updated",
                            attrs={"progress": rng.random(), "stage": "embedding", "items": rng.randrange(1000)})
            )
    return events[:count]


def bench_encoding(events: Sequence[Event], repeat: int = 5, *, options: TranslateOptions | None = None) -> dict[str, Any]:
    """Events/s of our encoding and of the SDK's ``encode_logs`` on the same events.

    Returns ``{"events", "repeat", "ours_events_per_s", "sdk_events_per_s",
    "ratio", "ours_bytes", "sdk_bytes"}``; the best of ``repeat`` runs counts
    for each side (least disturbed by other load on the machine).
    """
    if not events:
        raise ValueError("bench_encoding needs at least one event")
    translator = Translator(options or TranslateOptions(deployment_environment="bench"))
    observed_ns = time.time_ns()
    ours_payloads = translator.logs(events, observed_ns)
    sdk_records = _sdk_records(ours_payloads, translator.options)

    ours_best = sdk_best = float("inf")
    ours_bytes = sdk_bytes = 0
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        payloads = translator.logs(events, observed_ns)
        ours_best = min(ours_best, time.perf_counter() - started)
        ours_bytes = sum(map(len, payloads))

        started = time.perf_counter()
        payload = encode_logs(sdk_records).SerializeToString()
        sdk_best = min(sdk_best, time.perf_counter() - started)
        sdk_bytes = len(payload)

    ours_rate = len(events) / ours_best
    sdk_rate = len(events) / sdk_best
    return {
        "events": len(events),
        "repeat": max(1, repeat),
        "ours_events_per_s": round(ours_rate),
        "sdk_events_per_s": round(sdk_rate),
        "ratio": round(ours_rate / sdk_rate, 2),
        "ours_bytes": ours_bytes,
        "sdk_bytes": sdk_bytes,
    }


def _sdk_records(payloads: list[bytes], options: TranslateOptions) -> list[ReadableLogRecord]:
    """SDK log records with exactly the content of our payloads.

    Parsing our own output guarantees both sides encode the same attributes.
    """
    scope = InstrumentationScope(options.scope_name, options.scope_version)
    resources: dict[bytes, Resource] = {}
    records: list[ReadableLogRecord] = []
    for payload in payloads:
        request = ExportLogsServiceRequest.FromString(payload)
        for resource_logs in request.resource_logs:
            key = resource_logs.resource.SerializeToString()
            resource = resources.get(key)
            if resource is None:
                resource = resources[key] = Resource(_attributes(resource_logs.resource.attributes))
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    context = set_span_in_context(
                        NonRecordingSpan(
                            SpanContext(
                                int.from_bytes(record.trace_id, "big"),
                                int.from_bytes(record.span_id, "big"),
                                is_remote=False,
                                trace_flags=TraceFlags(TraceFlags.DEFAULT),
                            )
                        )
                    )
                    log_record = LogRecord(
                        timestamp=record.time_unix_nano,
                        observed_timestamp=record.observed_time_unix_nano,
                        context=context,
                        severity_text=record.severity_text,
                        severity_number=SeverityNumber(record.severity_number),
                        body=record.body.string_value,
                        attributes=_attributes(record.attributes),
                        event_name=record.event_name,
                    )
                    records.append(ReadableLogRecord(log_record, resource, scope))
    return records


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    return getattr(value, kind)
