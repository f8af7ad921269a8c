"""The config -> collector constructor shared by `run` and `demo`, and leaving a one-off consumer group."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis

from collector.alerts.channels import JsonlChannel, WebhookChannel
from collector.config import load_config
from collector.pipeline import build_collector, leave_group
from emitters.streams import stream_names
from tests.support.alert_processes import add, drained
from tests.support.alerts import error_event
from tests.support.waiting import wait_for

NAMES = stream_names("telemetry")


def config_for(redis_url: str, tmp_path: Path, group: str, **extra: object):  # type: ignore[no-untyped-def]
    overrides = {
        "redis.url": redis_url,
        "jsonl.dir": str(tmp_path / "logs"),
        "collector.group": group,
        "collector.block_ms": 50,
        "collector.heartbeat_interval": "200ms",
        **extra,
    }
    return load_config(overrides=overrides, environ={})


class TestBuildCollector:
    def test_sinks_and_alert_stage_from_the_config(self, redis_url: str, tmp_path: Path) -> None:
        """One constructor: the JSONL sink, and an alert stage of the collector's group with channels from config."""
        config = config_for(redis_url, tmp_path, "g1", **{"alerts.webhook": {"url": "http://127.0.0.1:9"}})
        collector = build_collector(config)
        try:
            stage = collector.alert_engine
            assert stage is not None and stage.state.group == "g1"
            assert [sink.name for sink in collector.sinks] == ["jsonl"]
            channels = [worker.channel for worker in stage.delivery.workers]
            assert [type(channel) for channel in channels] == [JsonlChannel, WebhookChannel]
        finally:
            for sink in collector.sinks:
                sink.close()
            stage.close(timeout=1)

    def test_unusable_setting_is_a_value_error_naming_it(self, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A webhook secret missing at start-up is reported with its setting (run exits 2 with it)."""
        monkeypatch.setenv("HOOK_TOKEN", "x")
        config = config_for(redis_url, tmp_path, "g1", **{"alerts.webhook": {"url": "http://127.0.0.1:9", "headers_env": {"Authorization": "HOOK_TOKEN"}}})
        monkeypatch.delenv("HOOK_TOKEN")
        with pytest.raises(ValueError, match="HOOK_TOKEN"):
            build_collector(config)


class TestLeaveGroup:
    def test_one_off_group_leaves_no_trace(self, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
        """The demo's group reads and alerts on its own, then is removed with its alert state; the other group stays."""
        redis_client.xgroup_create(NAMES.errors, "telemetry-collectors", id="0", mkstream=True)
        config = config_for(redis_url, tmp_path, "telemetry-demo")
        collector = build_collector(config)
        thread = threading.Thread(target=collector.run, daemon=True)
        thread.start()
        try:
            add(redis_client, [error_event(time.time(), severity="critical") for _ in range(12)])
            wait_for(lambda: drained(redis_client, "telemetry-demo"), what="the demo group to drain")
            wait_for(lambda: redis_client.keys("telemetry:alerts:telemetry-demo:*"), what="the demo group's alert state")
        finally:
            collector.request_stop()
            thread.join(30)
        leave_group(redis_client, config)
        groups = [group["name"] for key in (NAMES.errors, NAMES.events) for group in redis_client.xinfo_groups(key)]
        assert groups == [b"telemetry-collectors"]
        assert redis_client.keys("telemetry:alerts:telemetry-demo:*") == []
        assert redis_client.xinfo_groups(NAMES.errors)[0]["lag"] == 12  # the real collectors still get every entry
