"""The stock mlx_lm.server, instrumented, driven over real HTTP with the collector running.

One server and one collector per module (starting them is most of the cost);
everything is real: the tiny model built offline, redis-server, the
``telemetry-collector run`` daemon writing JSONL, HTTP clients on threads.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

pytest.importorskip("mlx_lm")

pytestmark = pytest.mark.mlx

from emitters import decode  # noqa: E402
from emitters.streams import PAYLOAD_FIELD  # noqa: E402
from tests.mlx_fixtures import tiny_model_dir  # noqa: E402,F401  (fixture)
from tests.support.mlx_server import ROOT, CollectorRun, ServerProcess, jsonl_events, wait_for  # noqa: E402

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
MAX_TOKENS = 12
CANCELLED_MAX_TOKENS = 2000


def _chat(index: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"Request {index}: tell me about the quick brown fox."}],
        "max_tokens": MAX_TOKENS + index,
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _completion(index: int) -> dict[str, Any]:
    return {"prompt": f"Completion {index}: time to first token measures", "max_tokens": MAX_TOKENS + index}


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, _shared_redis: Any) -> Iterator[dict[str, Any]]:  # noqa: F811
    """Twelve requests through one instrumented server: replies, and what the collector wrote."""
    tmp = tmp_path_factory.mktemp("mlx-server")
    redis_url = _shared_redis.url
    _shared_redis.client().flushall()
    collector = CollectorRun(redis_url, tmp / "jsonl", tmp / "collector.log").start()
    server = ServerProcess(tiny_model_dir, redis_url, tmp / "server.log").start()
    try:
        requests = [("/v1/chat/completions", _chat(i, stream=i % 2 == 0), {}) for i in range(7)]
        requests += [("/v1/completions", _completion(i), {}) for i in range(3)]
        requests.append(("/v1/completions", _completion(3), {"traceparent": TRACEPARENT}))
        with ThreadPoolExecutor(len(requests) + 1) as pool:
            cancelled = pool.submit(
                server.post_and_hang_up,
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "go on forever"}], "max_tokens": CANCELLED_MAX_TOKENS,
                 "stream": True},
            )  # fmt: skip
            futures = [pool.submit(server.post, path, body, headers) for path, body, headers in requests]
            replies = [future.result(timeout=120) for future in futures]
            cancelled_id = cancelled.result(timeout=120)
        ids = {reply["id"] for reply in replies} | {cancelled_id}

        def all_completed() -> list[dict[str, Any]]:
            events = jsonl_events(collector.jsonl_dir)
            done = {event.get("request_id") for event in events if event["type"] in ("generation.completed", "error")}
            if not ids <= done:
                return []
            # ...and a runtime.status sent after the last of them, so it covers the whole batch.
            last = max(event["ts"] for event in events if event["type"] == "generation.completed")
            if not any(e["type"] == "runtime.status" and e["ts"] > last for e in events):
                return []
            # With #13's span.ended, every request span must have closed too.
            spans = [e for e in events if e["type"] == "span.ended" and e.get("name", "").startswith("POST")]
            return events if not spans or len(spans) >= len(ids) else []

        events = wait_for(all_completed, 60, "every request's generation.completed in the collector's JSONL")
    finally:
        # Not asserted: mlx occasionally aborts (SIGABRT) while the interpreter exits, stock server too.
        server.stop()
        collector.stop()
    yield {"replies": replies, "traceparent_reply": replies[-1], "cancelled_id": cancelled_id, "events": events,
           "server_log": (tmp / "server.log").read_text()}  # fmt: skip


def _of(events: list[dict[str, Any]], event_type: str, request_id: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == event_type and event.get("request_id") == request_id]


class TestInstrumentedServer:
    def test_one_started_and_one_completed_per_request_with_the_replys_usage(self, served: dict[str, Any]) -> None:
        """Counts equal what the server put in each reply's usage (the judge)."""
        for reply in served["replies"]:
            started = _of(served["events"], "generation.started", reply["id"])
            completed = _of(served["events"], "generation.completed", reply["id"])
            assert len(started) == 1 and len(completed) == 1, reply["id"]
            usage, done = reply["usage"], completed[0]
            assert started[0]["prompt_tokens"] == usage["prompt_tokens"] == done["prompt_tokens"]
            assert done["generation_tokens"] == usage["completion_tokens"]
            assert done["cached_prompt_tokens"] == usage["prompt_tokens_details"]["cached_tokens"]
            assert done["finish_reason"] in ("length", "stop")
            assert 0 < done["ttft_ms"] <= done["duration_ms"]
            assert done["itl_p50_ms"] <= done["itl_p99_ms"]
            assert done["tokens_per_second"] > 0 and done["prefill_ms"] >= 0 and done["queue_wait_ms"] >= 0
            assert done["prefill_tokens"] == usage["prompt_tokens"] - usage["prompt_tokens_details"]["cached_tokens"]

    def test_the_batched_path_decoded_several_requests_together(self, served: dict[str, Any]) -> None:
        completed = [event for event in served["events"] if event["type"] == "generation.completed"]
        assert max(event.get("decode_batch_max", 0) for event in completed) > 1
        statuses = [event for event in served["events"] if event["type"] == "runtime.status"]
        assert max(event.get("decode_batch_max", 0) for event in statuses) > 1
        assert all(event["decode_concurrency"] == 32 for event in statuses if "decode_concurrency" in event)

    def test_traceparent_request_continues_the_callers_trace(self, served: dict[str, Any]) -> None:
        request_id = served["traceparent_reply"]["id"]
        for event_type in ("generation.started", "generation.completed"):
            (event,) = _of(served["events"], event_type, request_id)
            assert event["trace_id"] == CALLER_TRACE
        others = [reply["id"] for reply in served["replies"][:-1]]
        assert all(_of(served["events"], "generation.completed", rid)[0]["trace_id"] != CALLER_TRACE for rid in others)

    def test_request_span_is_the_generations_parent_and_the_callers_child(self, served: dict[str, Any]) -> None:
        """Contract decision 3: the route's span, remote parent = the caller's span (needs #13's span.ended)."""
        request_id = served["traceparent_reply"]["id"]
        spans = [event for event in served["events"] if event["type"] == "span.ended"]
        if not spans:
            pytest.skip("span.ended is not emitted by this emitter yet (#13)")
        (completed,) = _of(served["events"], "generation.completed", request_id)
        (span,) = [event for event in spans if event["span_id"] == completed["span_id"]]
        assert span["name"] == "POST /v1/completions" and span["trace_id"] == CALLER_TRACE
        assert span["parent_span_id"] == CALLER_SPAN and span["parent_remote"] is True

    def test_request_cancelled_mid_stream_completes_once_as_cancelled(self, served: dict[str, Any]) -> None:
        assert len(_of(served["events"], "generation.started", served["cancelled_id"])) == 1
        (done,) = _of(served["events"], "generation.completed", served["cancelled_id"])
        assert done["finish_reason"] == "cancelled"
        assert 1 <= done["generation_tokens"] < CANCELLED_MAX_TOKENS

    def test_memory_and_occupancy_in_runtime_status(self, served: dict[str, Any]) -> None:
        statuses = [event for event in served["events"] if event["type"] == "runtime.status"]
        assert {"memory_gb", "memory_cache_gb", "peak_memory_gb"} <= statuses[-1].keys()
        busy = [event for event in statuses if "requests_running" in event]
        assert busy and all(event["requests_waiting"] >= 0 for event in busy)

    def test_every_hook_was_installed(self, served: dict[str, Any]) -> None:
        assert "could not hook" not in served["server_log"]


def test_sequential_path_with_a_draft_model_reports_speculative_acceptance(
    tiny_model_dir: Path, tmp_path: Path, redis_server: Any  # noqa: F811
) -> None:
    """With a draft model mlx_lm.server serves one request at a time through stream_generate."""
    server = ServerProcess(
        tiny_model_dir, redis_server.url, tmp_path / "server.log", "--draft-model", str(tiny_model_dir),
        "--num-draft-tokens", "3",
    ).start()  # fmt: skip
    try:
        with ThreadPoolExecutor(2) as pool:
            replies = list(pool.map(lambda i: server.post("/v1/completions", _completion(i)), range(2)))
        client = redis_server.client()
        ids = {reply["id"] for reply in replies}

        def completed() -> list[dict[str, Any]]:
            events = [_decoded(fields) for _, fields in client.xrange("telemetry:events")]
            done = [event for event in events if event["type"] == "generation.completed"]
            return done if {event["request_id"] for event in done} >= ids else []

        done = {event["request_id"]: event for event in wait_for(completed, 30, "two generations")}
    finally:
        server.stop()
    for reply in replies:
        event = done[reply["id"]]
        assert event["generation_tokens"] == reply["usage"]["completion_tokens"]
        assert event["prompt_tokens"] == reply["usage"]["prompt_tokens"]
        # The tiny model drafting for itself: greedy drafts are accepted.
        assert event["draft_tokens"] > 0 and 0 < event["draft_acceptance"] <= 1
        assert event["decode_batch_max"] == 1 and event["prefill_ms"] >= 0


def _decoded(fields: dict[bytes, bytes]) -> dict[str, Any]:
    event = decode(fields[PAYLOAD_FIELD.encode()])
    return {**msgspec.to_builtins(event), "type": event.type}


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--telemetry-status-interval", "0"], "--telemetry-status-interval"),
        (["--telemetry-redis-url", "http://localhost:6379"], "--telemetry-redis-url"),
        (["--telemetry-service", "has spaces"], "--telemetry-service"),
    ],
)
def test_bad_telemetry_flag_exits_2_with_one_line(argv: list[str], names: str) -> None:
    """A bad telemetry setting stops the server before it loads anything: exit 2, one line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "emitters.mlx.server", "--model", "unused", *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "hash secret" not in line]
    assert len(lines) == 1 and names in lines[0] and "Traceback" not in result.stderr, result.stderr
