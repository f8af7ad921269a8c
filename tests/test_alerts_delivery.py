"""Alert delivery through real sockets and files: webhook (Alertmanager and JSON), JSONL, OTLP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest

from collector.alerts.config import WebhookConfig
from collector.alerts.channels import JsonlChannel, OtlpChannel, WebhookChannel
from collector.alerts.delivery import ChannelWorker
from collector.alerts.records import AlertRecord
from collector.alerts.stage import AlertStage
from collector.durations import dec_hook
from collector.embedded import RedisProcess
from collector.otlp.config import OtlpConfig
from collector.otlp.transport import ExportResult, Rejected
from collector.sinks import SinkUnavailable
from tests.support.alerts import FakeClock, LogCapture, Receiver, alerts_config, error_event, make_stage, records, stream_alerts
from tests.support.waiting import wait_for
from tests.otlp_backend import TOKEN, OtlpBackend, attributes, otlp_backend  # noqa: F401 - fixture



@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def webhook(url: str, **raw: Any) -> WebhookConfig:
    return msgspec.convert({"url": url, **raw}, WebhookConfig, dec_hook=dec_hook)


def record(rule: str = "service-errors", **overrides: Any) -> AlertRecord:
    fields: dict[str, Any] = dict(
        rule=rule, kind="rate", status="firing", labels={"service": "api", "severity": "warning"},
        summary="6 events", value=6.0, threshold=5.0, starts_at="2024-05-01T12:00:00.000Z", ends_at=None, fingerprint="a" * 16,
    )
    fields.update(overrides)
    return AlertRecord(**fields)


def engine_with(redis_server: RedisProcess, clock: FakeClock, **raw: Any) -> AlertStage:
    """A stage with the channels the pipeline would build: JSONL in ``jsonl_dir``, the configured webhook."""
    jsonl_dir, log = raw.pop("jsonl_dir", None), raw.pop("log", None)
    config = alerts_config(**{"group_wait": "0s", "group_interval": "0s", **raw})
    channels: list[Any] = []
    if jsonl_dir is not None:
        channels.append(JsonlChannel(str(jsonl_dir), max_bytes=1 << 20, retention_days=14))
    if config.webhook is not None:
        channels.append(WebhookChannel(config.webhook, hold=config.hold_for))
    return make_stage(redis_server.client(), config, clock=clock, channels=channels, log=log)


def fire_critical(engine: AlertStage, clock: FakeClock, count: int = 11) -> None:
    engine.write(records(*(error_event(clock.now, severity="critical", service="api") for _ in range(count))))
    engine.tick()


class TestWebhook:
    def test_alertmanager_payload_with_labels(self, redis_server: RedisProcess, receiver: Receiver) -> None:
        """A local Alertmanager stand-in receives POST /api/v2/alerts with the alert's labels and annotations."""
        clock = FakeClock()
        engine = engine_with(redis_server, clock, disable=["new-error-kind"], webhook={"url": receiver.url, "generator_url": "http://grafana.local/d/x"})
        try:
            fire_critical(engine, clock)
            wait_for(lambda: len(receiver.requests) >= 1, what="the webhook call")
        finally:
            engine.close(timeout=5)
        alerts = [alert for _, _, body in receiver.requests for alert in body]
        paths = {path for path, _, _ in receiver.requests}
        assert paths == {"/api/v2/alerts"}
        by_name = {alert["labels"]["alertname"]: alert for alert in alerts}
        assert set(by_name) == {"critical-errors", "service-errors"}
        critical = by_name["critical-errors"]
        assert critical["labels"] == {"alertname": "critical-errors", "severity": "critical"}
        assert by_name["service-errors"]["labels"] == {"alertname": "service-errors", "service": "api", "severity": "warning"}
        assert critical["annotations"]["value"] == "11" and critical["annotations"]["threshold"] == "10"
        assert critical["startsAt"] < critical["endsAt"]
        assert critical["generatorURL"] == "http://grafana.local/d/x"

    def test_500_is_retried_until_accepted(self, redis_server: RedisProcess, receiver: Receiver) -> None:
        """When the receiver answers 500 the alert is sent again, and it arrives once the receiver recovers."""
        receiver.statuses = [500, 500, 200]
        clock = FakeClock()
        engine = engine_with(redis_server, clock, defaults=False, rules=[{"kind": "rate", "name": "burst", "window": "1m", "threshold": 10}], webhook={"url": receiver.url, "retries": 3})
        try:
            fire_critical(engine, clock)
            wait_for(lambda: engine.delivery.stats()["webhook"]["sent"] == 1, what="delivery after two 500s")
        finally:
            engine.close(timeout=5)
        assert len(receiver.requests) == 3
        assert all(body[0]["labels"]["alertname"] == "burst" for _, _, body in receiver.requests)
        assert engine.delivery.stats()["webhook"]["lost"] == {}

    def test_hung_webhook_blocks_nothing(self, redis_server: RedisProcess, receiver: Receiver, tmp_path: Path) -> None:
        """With the receiver hanging, events keep being evaluated and other channels keep delivering."""
        receiver.hold.clear()
        clock = FakeClock()
        engine = engine_with(redis_server, clock, jsonl_dir=tmp_path, webhook={"url": receiver.url, "timeout": "20s"})
        try:
            fire_critical(engine, clock)
            for round_ in range(5):
                clock.advance(1)
                engine.write(records(error_event(clock.now, error_type=f"Kind{round_}Error")))
                engine.tick()
            client = redis_server.client()
            assert len([alert for alert in stream_alerts(client) if alert.rule == "new-error-kind"]) == 6
            lines = wait_for(lambda: _jsonl_alerts(tmp_path) if len(_jsonl_alerts(tmp_path)) >= 8 else None, what="JSONL alerts")
            assert {line["rule"] for line in lines} == {"critical-errors", "service-errors", "new-error-kind"}
            assert engine.delivery.stats()["webhook"]["sent"] == 0
        finally:
            receiver.hold.set()
            engine.close(timeout=5)

    def test_client_error_is_not_retried(self, receiver: Receiver) -> None:
        """A 400 is final: one request, counted as rejected."""
        receiver.statuses = [400]
        worker = ChannelWorker(WebhookChannel(webhook(receiver.url), hold=lambda rule: 60.0), queue_size=10, retries=5, log=LogCapture(), backoff=0.01)
        worker.put(record())
        wait_for(lambda: worker.lost["rejected"] == 1, what="the rejection")
        worker.close(timeout=2)
        assert len(receiver.requests) == 1

    def test_retries_exhausted_count_as_failed(self, receiver: Receiver) -> None:
        """A receiver that keeps failing gets retries+1 attempts, then the alert is counted lost."""
        receiver.statuses = [503]
        log = LogCapture()
        worker = ChannelWorker(WebhookChannel(webhook(receiver.url), hold=lambda rule: 60.0), queue_size=10, retries=2, log=log, backoff=0.01)
        worker.put(record())
        wait_for(lambda: worker.lost["failed"] == 1, what="giving up")
        worker.close(timeout=2)
        assert len(receiver.requests) == 3
        assert [fields["retrying"] for level, event, fields in log.lines if event == "alert_delivery_failed"] == [True, True, False]

    def test_full_queue_drops_and_counts(self, receiver: Receiver) -> None:
        """Publishing never waits: past the queue's bound, alerts are dropped and counted."""
        receiver.hold.clear()
        worker = ChannelWorker(WebhookChannel(webhook(receiver.url), hold=lambda rule: 60.0), queue_size=2, retries=0, log=LogCapture())
        worker.put(record())
        wait_for(lambda: worker.queued() == 0, what="the worker to take the first alert")
        for _ in range(5):
            worker.put(record())
        assert worker.lost["queue_full"] == 3 and worker.queued() == 2
        receiver.hold.set()
        worker.close(timeout=5)
        assert worker.sent == 3

    def test_close_cuts_retry_waits_short(self, receiver: Receiver) -> None:
        """Closing during a long backoff gives up at once and counts the alert as lost to shutdown."""
        receiver.statuses = [500]
        worker = ChannelWorker(WebhookChannel(webhook(receiver.url), hold=lambda rule: 60.0), queue_size=10, retries=5, log=LogCapture(), backoff=60.0, max_backoff=60.0)
        worker.put(record())
        wait_for(lambda: len(receiver.requests) == 1, what="the first attempt")
        worker.close(timeout=5)
        assert worker.lost["shutdown"] == 1

    def test_plain_json_with_secret_header(self, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        """The json format POSTs the records to the URL as given, with headers from the environment."""
        monkeypatch.setenv("HOOK_TOKEN", "Bearer s3cret")
        channel = WebhookChannel(webhook(f"{receiver.url}/hooks/alerts?team=ml", format="json", headers_env={"Authorization": "HOOK_TOKEN"}), hold=lambda rule: 60.0)
        channel.send([record(), record(status="resolved", ends_at="2024-05-01T12:05:00.000Z")])
        ((path, headers, body),) = receiver.requests
        assert path == "/hooks/alerts?team=ml"
        assert headers["Authorization"] == "Bearer s3cret"
        assert [item["status"] for item in body] == ["firing", "resolved"]
        assert body[0]["labels"] == {"service": "api", "severity": "warning"}


def _jsonl_alerts(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("alerts-*.jsonl")) for line in path.read_text().splitlines()]


class TestJsonlAndLog:
    def test_alerts_file_and_log_levels(self, redis_server: RedisProcess, tmp_path: Path) -> None:
        """Notifications land in alerts-YYYY-MM-DD.jsonl; the log says error for critical, warning, then info."""
        clock = FakeClock()
        log = LogCapture()
        engine = engine_with(redis_server, clock, jsonl_dir=tmp_path, log=log, resolve_after="0s", disable=["new-error-kind"])
        try:
            fire_critical(engine, clock)
            clock.advance(61)
            engine.tick()
        finally:
            engine.close(timeout=5)
        (path,) = tmp_path.glob("alerts-*.jsonl")
        assert path.name.startswith("alerts-20") and path.stat().st_mode & 0o777 == 0o640
        lines = _jsonl_alerts(tmp_path)
        assert sorted((line["rule"], line["status"]) for line in lines) == [
            ("critical-errors", "firing"), ("critical-errors", "resolved"), ("service-errors", "firing"), ("service-errors", "resolved"),
        ]
        levels = {(fields["rule"], event): level for level, event, fields in log.lines if event.startswith("alert_")}
        assert levels == {
            ("critical-errors", "alert_firing"): "error",
            ("service-errors", "alert_firing"): "warning",
            ("critical-errors", "alert_resolved"): "info",
            ("service-errors", "alert_resolved"): "info",
        }


class _FlakyTransport:
    """Injects OTLP faults: unavailable first, then accepts; or rejects for good."""

    def __init__(self, failures: int, *, reject: bool = False) -> None:
        self.failures = failures
        self.reject = reject
        self.payloads: list[bytes] = []

    def export(self, signal: str, payload: bytes) -> ExportResult:
        if self.reject:
            raise Rejected("400 bad request")
        if self.failures:
            self.failures -= 1
            raise SinkUnavailable("503", retry_after=0.01)
        self.payloads.append(payload)
        return ExportResult(rejected=0, message="")

    def close(self) -> None:
        pass


def _otlp_channel(transport: _FlakyTransport) -> OtlpChannel:
    return OtlpChannel(OtlpConfig(endpoint="http://127.0.0.1:9", protocol="http").resolve({}), transport=transport)  # type: ignore[arg-type]


class TestOtlpChannel:
    def test_alert_reaches_an_otlp_backend_as_a_log_record(self, redis_server: RedisProcess, otlp_backend: OtlpBackend) -> None:
        """With OTLP on, a firing alert arrives at a real OTLP receiver as a log record with severity."""
        settings = OtlpConfig(endpoint=otlp_backend.http_endpoint, protocol="http", token=TOKEN).resolve({})
        clock = FakeClock()
        engine = make_stage(redis_server.client(), alerts_config(disable=["new-error-kind"], group_wait="0s"), clock=clock, channels=[OtlpChannel(settings)])
        try:
            fire_critical(engine, clock)
            assert otlp_backend.wait_for(lambda: len(otlp_backend.log_records()) >= 2)
        finally:
            engine.close(timeout=5)
        found = {attributes(record.attributes)["alert.rule"]: (resource, record) for resource, record in otlp_backend.log_records()}
        resource, critical = found["critical-errors"]
        attrs = attributes(critical.attributes)
        assert attrs["event.name"] == "alert.firing" and attrs["alert.status"] == "firing"
        assert critical.severity_text.lower().startswith(("fatal", "crit"))
        assert resource["service.name"] == "telemetry-collector"
        assert otlp_backend.requests("metrics") == []

    def test_transient_failure_is_retried(self) -> None:
        """A 503 from the OTLP backend is retried; the alert goes out as one logs request."""
        transport = _FlakyTransport(failures=1)
        worker = ChannelWorker(_otlp_channel(transport), queue_size=10, retries=3, log=LogCapture(), backoff=0.01)
        worker.put(record(labels={"severity": "critical"}))
        wait_for(lambda: worker.sent == 1, what="the OTLP export")
        worker.close(timeout=2)
        (payload,) = transport.payloads
        assert b"alert.firing" in payload and b"a" * 16 in payload

    def test_permanent_rejection_is_not_retried(self) -> None:
        """A rejected export is final and counted."""
        worker = ChannelWorker(_otlp_channel(_FlakyTransport(0, reject=True)), queue_size=10, retries=3, log=LogCapture(), backoff=0.01)
        worker.put(record())
        wait_for(lambda: worker.lost["rejected"] == 1, what="the rejection")
        worker.close(timeout=2)
        assert worker.attempts == 1
