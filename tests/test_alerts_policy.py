"""Notification policy with a fake clock against a real Redis: grouping timers, inhibition, silences."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from collector.alerts.notify import GroupState, Timing, plan_group
from collector.alerts.records import AlertRecord
from collector.alerts.silences import SilenceStore, parse_matcher
from collector.alerts.stage import AlertStage
from collector.embedded import RedisProcess
from emitters.streams import stream_names
from tests.support.alerts import FakeClock, LogCapture, alerts_config, custom, error_event, make_stage, records, status

SILENT = {"kind": "absence", "name": "engine-silent", "period": "10s"}


@pytest.fixture
def stages(redis_server: RedisProcess) -> Iterator[Any]:
    made: list[AlertStage] = []

    def make(clock: FakeClock, log: LogCapture, **raw: Any) -> AlertStage:
        stage = make_stage(redis_server.client(), alerts_config(defaults=False, **raw), clock=clock, log=log)
        made.append(stage)
        return stage

    yield make
    for stage in made:
        stage.close(timeout=1.0)


def run(stage: AlertStage, clock: FakeClock, seconds: float, step: float = 1.0) -> None:
    """Tick once per ``step`` for ``seconds`` of fake time."""
    end = clock.now + seconds
    while clock.now < end:
        clock.advance(min(step, end - clock.now))
        stage.tick()


class TestTimers:
    def test_group_wait_then_repeat_interval(self, stages: Any) -> None:
        """The first notification waits group_wait; an unchanged group repeats only after repeat_interval."""
        clock, log = FakeClock(), LogCapture()
        stage = stages(clock, log, rules=[SILENT], group_wait="30s", group_interval="1m", repeat_interval="10m")
        stage.write(records(status(clock.now, service="a")))
        run(stage, clock, 11)  # silent past its period: fires now
        assert stage.counters["firing"] == 1 and log.notified() == []
        run(stage, clock, 29)
        assert log.notified() == []
        run(stage, clock, 1)
        assert log.notified() == [("engine-silent", "firing")]
        run(stage, clock, 599, step=10)
        assert len(log.notified()) == 1
        run(stage, clock, 11, step=10)
        assert log.notified() == [("engine-silent", "firing")] * 2

    def test_a_change_waits_for_group_interval(self, stages: Any) -> None:
        """A new alert in a group that was notified goes out group_interval after the last notification."""
        clock, log = FakeClock(), LogCapture()
        stage = stages(clock, log, rules=[SILENT], group_wait="0s", group_interval="1m", repeat_interval="1h")
        stage.write(records(status(clock.now, service="a")))
        run(stage, clock, 11)
        sent_at = clock.now
        assert len(log.notified()) == 1
        stage.write(records(status(clock.now, service="b")))
        run(stage, clock, 11)  # b silent too: the group changed
        assert len(log.notified()) == 1
        run(stage, clock, sent_at + 59 - clock.now)
        assert len(log.notified()) == 1
        run(stage, clock, 2)
        services = sorted(fields["labels"]["service"] for _, event, fields in log.lines[-2:])
        assert len(log.notified()) == 3 and services == ["a", "b"]  # the whole group, both alerts

    def test_plan_is_pure(self) -> None:
        """The timers as a function: nothing sent before group_wait, a resolution leaves with the group."""
        timing = Timing(group_wait=30, group_interval=60, repeat_interval=3600)
        record = AlertRecord(rule="r", kind="rate", status="firing", labels={}, summary="s", value=1.0, threshold=0.0,
                             starts_at="x", ends_at=None, fingerprint="f1")  # fmt: skip
        waiting = plan_group(None, {"f1": record}, (), timing, 100.0)
        assert waiting is not None and waiting.send == [] and waiting.state == GroupState(first=100.0)
        sent = plan_group(waiting.state, {"f1": record}, (), timing, 130.0)
        assert sent is not None and sent.send == [record] and sent.state is not None and sent.state.sent == 130.0
        assert plan_group(sent.state, {}, (), timing, 150.0) is None  # the resolution waits for group_interval
        resolved = plan_group(sent.state, {}, (), timing, 190.0)
        assert resolved is not None and resolved.state is None and [r.status for r in resolved.send] == ["resolved"]
        assert plan_group(sent.state, {}, ("f1",), timing, 190.0) == (None, [])  # silenced: dropped, no resolution


RUNTIME_DOWN = {"kind": "rate", "name": "runtime-down", "filter": {"type": "runtime.down"}, "group_by": ["service"], "window": "10s", "threshold": 0}
ERROR_RATE = {"kind": "rate", "name": "error-rate", "filter": {"min_severity": "error"}, "group_by": ["service"], "window": "1m", "threshold": 2}
INHIBIT = [{"source_match": {"alertname": "runtime-down"}, "target_match": {"alertname": "error-rate"}, "equal": ["service"]}]


class TestInhibition:
    def test_runtime_down_holds_back_error_rate_of_its_service(self, stages: Any) -> None:
        """While runtime-down fires for a service its error-rate alert is not notified; once it resolves, it is."""
        clock, log = FakeClock(), LogCapture()
        stage = stages(clock, log, rules=[RUNTIME_DOWN, ERROR_RATE], inhibit_rules=INHIBIT, group_wait="0s",
                       group_interval="0s", resolve_after="0s", cooldown="0s")  # fmt: skip
        stage.write(records(custom(clock.now, "runtime.down", service="api"), custom(clock.now, "runtime.down", service="web"),
                            *(error_event(clock.now, service="api") for _ in range(3)),
                            *(error_event(clock.now, service="batch") for _ in range(3))))  # fmt: skip
        run(stage, clock, 2)
        assert stage.counters["firing"] == 4  # every alert fires in the shared state
        assert sorted(log.notified()) == [("error-rate", "firing"), ("runtime-down", "firing"), ("runtime-down", "firing")]
        assert [fields["labels"]["service"] for _, _, fields in log.lines if fields["rule"] == "error-rate"] == ["batch"]
        run(stage, clock, 10)  # runtime-down leaves its 10s window and resolves; the errors are still in theirs
        api = [fields["status"] for _, _, fields in log.lines if fields["rule"] == "error-rate" and fields["labels"]["service"] == "api"]
        assert api == ["firing"]
        assert ("runtime-down", "resolved") in log.notified()


class TestSilences:
    def test_matchers(self) -> None:
        """Alertmanager's operators; a bad matcher says how to write one."""
        labels = {"alertname": "error-rate", "rule": "error-rate", "service": "api"}
        assert parse_matcher("rule=error-rate").matches(labels)
        assert parse_matcher('service!="web"').matches(labels)
        assert parse_matcher("service=~a.*").matches(labels) and not parse_matcher("service=~p").matches(labels)
        with pytest.raises(ValueError, match="write label=value"):
            parse_matcher("rule")

    def test_silence_holds_and_its_expiry_lets_through(self, stages: Any, redis_server: RedisProcess) -> None:
        """A silence holds back a firing alert; expired, the alert is notified (every change in the stream)."""
        clock, log = FakeClock(), LogCapture()
        stage = stages(clock, log, rules=[ERROR_RATE], group_wait="0s", group_interval="0s")
        store = SilenceStore(redis_server.client(), stream_names("telemetry"))
        silence = store.create([parse_matcher("rule=error-rate")], duration=7200, comment="deploy", created_by="ops", now=clock.now)
        stage.write(records(*(error_event(clock.now, service="api") for _ in range(3))))
        run(stage, clock, 3)
        assert stage.counters["firing"] == 1 and log.notified() == []
        store.expire(silence.id, clock.now)
        run(stage, clock, 1)
        assert log.notified() == [("error-rate", "firing")]
        changes = [fields for _, fields in redis_server.client().xrange("telemetry:alerts") if b"silence" in fields]
        assert [b'"created"' in item[b"silence"] for item in changes] == [True, False]
