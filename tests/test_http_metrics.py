"""/metrics, /healthz, /readyz and the token, against real collector and ui processes on a real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from collector.embedded import RedisProcess, free_port
from emitters import Emitter
from tests.support.live_view import LiveProcess, add_client_report, wait_for

EVENTS_SENT = 11
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def send_known_traffic(redis_url: str) -> None:
    """Generations of two models on two services, errors, a runtime status and two client reports."""
    with Emitter("engine-a", redis_url, strict=True) as a, Emitter("engine-b", redis_url, strict=True) as b:
        a.generation_completed("tiny", "req-1", 10, 11, 500.0, ttft_ms=100.0, finish_reason="stop")
        a.generation_completed("tiny", "req-2", 20, 21, 1000.0, ttft_ms=30.0, finish_reason="length")
        a.generation_completed("tiny", "req-3", 30, 1, 2000.0, ttft_ms=700.0, finish_reason="stop")
        b.generation_completed("big", "req-4", 5, 4, 90.0)
        for _ in range(2):
            a.error(ValueError("bad input 7"))
        b.error(KeyError("missing"))
        b.event("job.failed", severity="error", job_id="job-1")
        a.runtime_status("busy", 1, active_tasks=2, memory_gb=1.5, requests_waiting=3)
    client = redis.Redis.from_url(redis_url)
    try:
        add_client_report(client, "engine-a", dropped={"buffer_full": 3, "redis_unavailable": 2}, sent=100, reconnects=1, high_water=7)
        add_client_report(client, "engine-a", dropped={"buffer_full": 1}, sent=50, reconnects=0, high_water=4)
    finally:
        client.close()


def scrape(process: LiveProcess) -> Samples:
    status, text = process.get("/metrics")
    assert status == 200, text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def summed(*scrapes: Samples) -> Samples:
    """What `sum without (instance)` gives over several collectors."""
    total: Samples = {}
    for samples in scrapes:
        for key, value in samples.items():
            total[key] = total.get(key, 0.0) + value
    return total


def value(samples: Samples, name: str, **labels: str) -> Optional[float]:
    return samples.get((name, frozenset(labels.items())))


def family_total(samples: Samples, name: str) -> float:
    return sum(v for (sample, _), v in samples.items() if sample == name)


def check_known_metrics(samples: Samples) -> None:
    ttft = "gen_ai_server_time_to_first_token_seconds"
    tiny = {"model": "tiny", "service": "engine-a"}
    # TTFT 0.1, 0.03, 0.7 s: `le` includes its bound, so 0.1 is in le="0.1".
    assert value(samples, f"{ttft}_bucket", le="0.02", **tiny) == 0
    assert value(samples, f"{ttft}_bucket", le="0.04", **tiny) == 1
    assert value(samples, f"{ttft}_bucket", le="0.1", **tiny) == 2
    assert value(samples, f"{ttft}_bucket", le="0.5", **tiny) == 2
    assert value(samples, f"{ttft}_bucket", le="0.75", **tiny) == 3
    assert value(samples, f"{ttft}_bucket", le="+Inf", **tiny) == 3
    assert value(samples, f"{ttft}_count", **tiny) == 3
    assert value(samples, f"{ttft}_sum", **tiny) == pytest.approx(0.83)
    assert value(samples, f"{ttft}_count", model="big", service="engine-b") is None  # it had no TTFT
    # Time per output token: (0.5-0.1)/10 and (1.0-0.03)/20; one output token gives none.
    tpot = "gen_ai_server_time_per_output_token_seconds"
    assert value(samples, f"{tpot}_count", **tiny) == 2
    assert value(samples, f"{tpot}_sum", **tiny) == pytest.approx(0.04 + 0.0485)
    assert value(samples, f"{tpot}_bucket", le="0.05", **tiny) == 2
    duration = "gen_ai_server_request_duration_seconds"
    assert value(samples, f"{duration}_bucket", le="0.64", **tiny) == 1
    assert value(samples, f"{duration}_bucket", le="1.28", **tiny) == 2
    assert value(samples, f"{duration}_bucket", le="2.56", **tiny) == 3
    assert value(samples, f"{duration}_sum", **tiny) == pytest.approx(3.5)
    assert value(samples, f"{duration}_sum", model="big", service="engine-b") == pytest.approx(0.09)
    usage = "gen_ai_client_token_usage"
    assert value(samples, f"{usage}_bucket", le="16.0", token_type="input", **tiny) == 1
    assert value(samples, f"{usage}_bucket", le="64.0", token_type="input", **tiny) == 3
    assert value(samples, f"{usage}_sum", token_type="input", **tiny) == 60
    assert value(samples, f"{usage}_bucket", le="1.0", token_type="output", **tiny) == 1
    assert value(samples, f"{usage}_sum", token_type="output", **tiny) == 33
    assert value(samples, "mlx_requests_total", finish_reason="stop", **tiny) == 2
    assert value(samples, "mlx_requests_total", finish_reason="length", **tiny) == 1
    assert value(samples, "mlx_requests_total", model="big", service="engine-b", finish_reason="unknown") == 1
    assert value(samples, "mlx_tokens_generated_total", **tiny) == 33
    assert value(samples, "mlx_errors_total", service="engine-a", error_type="ValueError") == 2
    assert value(samples, "mlx_errors_total", service="engine-b", error_type="KeyError") == 1
    assert value(samples, "mlx_errors_total", service="engine-b", error_type="job.failed") == 1
    engine = {"service": "engine-a", "host": _host(samples)}
    assert value(samples, "telemetry_emitter_dropped_total", reason="buffer_full", **engine) == 4
    assert value(samples, "telemetry_emitter_dropped_total", reason="redis_unavailable", **engine) == 2
    assert value(samples, "telemetry_emitter_sent_total", **engine) == 150
    assert value(samples, "telemetry_emitter_reconnects_total", **engine) == 1


def check_engine_gauges(samples: Samples) -> None:
    """The newest runtime.status and client.report of engine-a, whichever collector took them."""
    engine = {"service": "engine-a", "host": _host(samples)}
    assert value(samples, "mlx_requests_running", **engine) == 2
    assert value(samples, "mlx_requests_waiting", **engine) == 3
    assert value(samples, "mlx_memory_bytes", **engine) == 1.5 * 1024**3
    assert value(samples, "mlx_models_loaded", **engine) == 1
    assert value(samples, "mlx_peak_memory_bytes", **engine) is None  # not in the report: no series
    assert value(samples, "telemetry_emitter_buffer_high_water", **engine) == 4  # the newer report's, not 7
    assert family_total(samples, "mlx_models_loaded") == 1  # engine-b sent no runtime.status


def _host(samples: Samples) -> str:
    return next(dict(labels)["host"] for (name, labels) in samples if name == "mlx_models_loaded")


@pytest.fixture
def processes() -> Iterator[list[LiveProcess]]:
    started: list[LiveProcess] = []
    yield started
    for process in started:
        process.stop()


def test_metrics_of_two_collectors_sum_to_the_traffic_sent(redis_url: str, tmp_path: Path, processes: list[LiveProcess]) -> None:
    """Two collectors share the group; their scrapes, parsed and summed, match the events exactly.

    Engine gauges are the fleet's newest report, the same from either collector, whichever took it.
    """
    for name in ("c1", "c2"):
        processes.append(LiveProcess.collector(redis_url, tmp_path / name, "--consumer", name))
    send_known_traffic(redis_url)

    def all_acked() -> Optional[list[Samples]]:
        scrapes = [scrape(process) for process in processes]
        return scrapes if family_total(summed(*scrapes), "telemetry_collector_acked_total") >= EVENTS_SENT else None

    scrapes = wait_for(all_acked, timeout=30, what="both collectors to ack every event")
    total = summed(*scrapes)
    check_known_metrics(total)
    for scrape_ in scrapes:
        check_engine_gauges(scrape_)
    for name, scrape_ in zip(("c1", "c2"), scrapes):
        assert value(scrape_, "telemetry_collector_status", consumer=name, status="running") == 1
        assert value(scrape_, "telemetry_redis_up") == 1
    assert family_total(total, "telemetry_collector_read_total") == EVENTS_SENT
    assert family_total(total, "telemetry_collector_dead_lettered_total") == 0
    assert family_total(total, "telemetry_collector_sink_failures_total") == 0
    # Stream figures are the same from every collector: max, not sum.
    assert value(scrapes[0], "telemetry_group_consumers", stream="events", group="telemetry-collectors") == 2
    assert value(scrapes[0], "telemetry_group_pending", stream="events", group="telemetry-collectors") is not None


def test_ui_serves_the_same_metrics_without_joining_a_group(redis_url: str, redis_client: redis.Redis, processes: list[LiveProcess]) -> None:
    """`ui` follows the streams with XREAD: same figures, and no consumer group appears."""
    ui = LiveProcess.ui(redis_url)
    processes.append(ui)
    send_known_traffic(redis_url)

    def observed() -> Optional[Samples]:
        samples = scrape(ui)
        done = family_total(samples, "mlx_requests_total") == 4 and family_total(samples, "mlx_errors_total") == 4
        done = done and family_total(samples, "telemetry_emitter_sent_total") == 150
        return samples if done else None

    samples = wait_for(observed, timeout=20, what="ui to observe the traffic")
    check_known_metrics(samples)
    check_engine_gauges(samples)
    assert redis_client.xinfo_groups("telemetry:events") == []
    assert redis_client.xinfo_groups("telemetry:errors") == []


def test_readyz_fails_while_redis_is_down_and_recovers(redis_process: RedisProcess, tmp_path: Path, processes: list[LiveProcess]) -> None:
    live = LiveProcess.collector(redis_process.url, tmp_path)
    processes.append(live)
    assert live.get("/readyz") == (200, "ready\n")
    redis_process.stop()
    status, body = wait_for(lambda: r if (r := live.get("/readyz"))[0] == 503 else None, timeout=20, what="/readyz to fail")
    assert body.startswith("redis unreachable")
    assert live.get("/healthz")[0] == 200  # alive all along
    redis_process.start()
    wait_for(lambda: True if live.get("/readyz")[0] == 200 else None, timeout=20, what="/readyz to recover")


def test_a_token_guards_everything_but_the_probes(redis_url: str, processes: list[LiveProcess]) -> None:
    ui = LiveProcess.ui(redis_url, "--http-host", "127.0.0.1", env={"TELEMETRY_HTTP_TOKEN": "s3cret"})
    processes.append(ui)
    assert ui.get("/metrics")[0] == 401
    assert ui.get("/api/overview", {"Authorization": "Bearer wrong"})[0] == 401
    assert ui.get("/metrics", {"Authorization": "Bearer s3cret"})[0] == 200
    assert ui.get("/api/overview", {"Cookie": "telemetry_token=s3cret"})[0] == 200
    assert ui.get("/healthz")[0] == 200
    assert ui.get("/readyz")[0] == 200



def test_readyz_fails_while_a_sink_holds_the_pipeline(redis_url: str, tmp_path: Path, processes: list[LiveProcess]) -> None:
    """An OTLP backend that is down pauses delivery (backpressure): not ready, though Redis answers."""
    backend = f"http://127.0.0.1:{free_port()}"
    live = LiveProcess.collector(redis_url, tmp_path, "--otlp-endpoint", backend, "--otlp-protocol", "http", "--otlp-timeout", "1s", "--shutdown-timeout", "1s")
    processes.append(live)
    assert live.get("/readyz")[0] == 200
    with Emitter("engine-a", redis_url, strict=True) as emitter:
        emitter.event("job.created", job_id="job-1")
    status, body = wait_for(lambda: r if (r := live.get("/readyz"))[0] == 503 else None, timeout=20, what="/readyz to fail")
    assert body == "sinks paused: collector status backpressure\n"
    samples = scrape(live)
    assert value(samples, "telemetry_collector_status", consumer=_consumer(samples), status="backpressure") == 1
    assert family_total(samples, "telemetry_collector_sink_failures_total") >= 1


def _consumer(samples: Samples) -> str:
    return next(dict(labels)["consumer"] for (name, labels) in samples if name == "telemetry_collector_status")
