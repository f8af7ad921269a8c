"""The alert stage against a real redis-server, driven in-process with a controlled clock."""

from __future__ import annotations

import json
import math
import random
import threading
from typing import Any, Iterator

import pytest
import redis

from collector.alerts.records import AlertRecord
from collector.alerts.stage import AlertStage
from collector.embedded import RedisProcess
from tests.support.alerts import (
    FakeClock,
    make_stage,
    alerts_config,
    completed,
    custom,
    error_event,
    records,
    status,
    stream_alerts,
)



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(redis_server: RedisProcess, clock: FakeClock) -> Iterator[Any]:
    engines: list[AlertStage] = []

    def make(**raw: Any) -> AlertStage:
        engine = make_stage(redis_server.client(), alerts_config(**raw), clock=clock)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close(timeout=1.0)


def of_rule(client: redis.Redis, rule: str) -> list[AlertRecord]:
    return [alert for alert in stream_alerts(client) if alert.rule == rule]


def burst(clock: FakeClock, count: int, **fields: Any) -> list[Any]:
    return records(*(error_event(clock.now, severity="critical", **fields) for _ in range(count)))


class TestRateLifecycle:
    def test_eleven_critical_errors_fire_once(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """11 critical errors within a minute fire the built-in rule exactly once; 10 would not."""
        engine = make_engine()
        engine.write(burst(clock, 10))
        engine.tick()
        assert of_rule(redis_client, "critical-errors") == []
        engine.write(burst(clock, 1))
        clock.advance(1)
        engine.tick()
        (alert,) = of_rule(redis_client, "critical-errors")
        assert (alert.status, alert.value, alert.threshold, alert.kind) == ("firing", 11.0, 10.0, "rate")
        assert alert.labels == {"severity": "critical"}
        assert alert.ends_at is None

    def test_no_refire_before_repeat_interval_then_repeat(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """More errors keep the alert firing silently; after repeat_interval it is sent once more."""
        engine = make_engine(repeat_interval="30s")
        engine.write(burst(clock, 11))
        engine.tick()
        for _ in range(10):
            clock.advance(2)
            engine.write(burst(clock, 5))
            engine.tick()
        assert len(of_rule(redis_client, "critical-errors")) == 1
        clock.advance(11)
        engine.write(burst(clock, 5))
        engine.tick()
        first, repeat = of_rule(redis_client, "critical-errors")
        assert repeat.status == "firing" and repeat.starts_at == first.starts_at and repeat.value > 11

    def test_resolves_once_quiet_for_resolve_after(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Once the window empties and stays clear for resolve_after, one resolved notice follows."""
        engine = make_engine(resolve_after="20s")
        engine.write(burst(clock, 11))
        engine.tick()
        clock.advance(61)  # the burst has left the one-minute window: clear from now on
        engine.tick()
        clock.advance(19)
        engine.tick()
        assert [alert.status for alert in of_rule(redis_client, "critical-errors")] == ["firing"]
        clock.advance(2)
        engine.tick()
        engine.tick()
        firing, resolved = of_rule(redis_client, "critical-errors")
        assert resolved.status == "resolved" and resolved.value == 0.0
        assert resolved.starts_at == firing.starts_at and resolved.ends_at is not None
        assert resolved.fingerprint == firing.fingerprint

    def test_breach_during_resolve_period_keeps_it_firing(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """A new breach before resolve_after has passed cancels the pending resolution."""
        engine = make_engine(resolve_after="20s")
        engine.write(burst(clock, 11))
        engine.tick()
        clock.advance(61)
        engine.tick()
        clock.advance(10)
        engine.write(burst(clock, 11))
        engine.tick()
        clock.advance(15)
        engine.tick()
        assert [alert.status for alert in of_rule(redis_client, "critical-errors")] == ["firing"]

    def test_cooldown_stops_flapping(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """After a resolution, a breach within the cooldown does not fire; after it, it does."""
        engine = make_engine(resolve_after="0s", cooldown="5m")
        engine.write(burst(clock, 11))
        engine.tick()
        clock.advance(61)
        engine.tick()
        assert [alert.status for alert in of_rule(redis_client, "critical-errors")] == ["firing", "resolved"]
        clock.advance(60)
        engine.write(burst(clock, 11))
        engine.tick()
        assert len(of_rule(redis_client, "critical-errors")) == 2
        clock.advance(241)
        engine.write(burst(clock, 11))
        engine.tick()
        assert [alert.status for alert in of_rule(redis_client, "critical-errors")] == ["firing", "resolved", "firing"]

    def test_groups_alert_separately(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """`service-errors` groups by service: only the noisy service alerts, labelled with its name."""
        engine = make_engine()
        engine.write(records(*(error_event(clock.now, service="api") for _ in range(6))))
        engine.write(records(*(error_event(clock.now, service="batch") for _ in range(5))))
        engine.tick()
        (alert,) = of_rule(redis_client, "service-errors")
        assert alert.labels == {"service": "api", "severity": "warning"}

    def test_stream_entry_is_plain_json(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Any Redis client can read an alert: JSON in the `alert` field, with every record field."""
        engine = make_engine()
        engine.write(burst(clock, 11))
        engine.tick()
        entries = redis_client.xrange("telemetry:alerts")
        payloads = [json.loads(fields[b"alert"]) for _, fields in entries]
        assert all(set(payload) == {
            "rule", "kind", "status", "labels", "summary", "value", "threshold", "starts_at", "ends_at", "fingerprint", "group"
        } for payload in payloads)


class TestNewErrorKinds:
    def test_first_sighting_fires_at_once_and_only_once(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """A never-seen error kind fires during observe (no tick needed); the same kind again does not."""
        engine = make_engine()
        engine.write(records(error_event(clock.now, error_type="KeyError", message="missing 'x'")))
        (alert,) = of_rule(redis_client, "new-error-kind")
        assert alert.labels["error_type"] == "KeyError" and alert.labels["service"] == "engine"
        assert "new KeyError in engine" in alert.summary
        clock.advance(5)
        engine.write(records(error_event(clock.now, error_type="KeyError", message="missing 'y'")))
        engine.tick()
        assert len(of_rule(redis_client, "new-error-kind")) == 1
        engine.write(records(error_event(clock.now, error_type="OSError", message="disk full")))
        assert [alert.labels["error_type"] for alert in of_rule(redis_client, "new-error-kind")] == ["KeyError", "OSError"]

    def test_restart_neither_refires_nor_forgets(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """A second engine (a restarted collector) on the same Redis does not fire a known kind again."""
        first = make_engine(resolve_after="5s")
        first.write(records(error_event(clock.now, error_type="KeyError")))
        first.close()
        restarted = make_engine(resolve_after="5s")
        clock.advance(3)
        restarted.write(records(error_event(clock.now, error_type="KeyError")))
        restarted.tick()
        clock.advance(6)
        restarted.tick()
        statuses = [alert.status for alert in of_rule(redis_client, "new-error-kind")]
        assert statuses == ["firing", "resolved"]  # the restarted one also remembered it was firing

    def test_regression_after_silence(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """A kind silent for longer than regression_after fires again, as a regression."""
        rule = {"kind": "new", "name": "kinds", "group_by": ["error_type"], "regression_after": "1h"}
        engine = make_engine(defaults=False, resolve_after="0s", cooldown="0s", rules=[rule])
        engine.write(records(error_event(clock.now, error_type="KeyError")))
        clock.advance(1)
        engine.tick()
        clock.advance(1800)
        engine.write(records(error_event(clock.now, error_type="KeyError")))
        assert [alert.status for alert in of_rule(redis_client, "kinds")] == ["firing", "resolved"]
        clock.advance(3601)
        engine.write(records(error_event(clock.now, error_type="KeyError")))
        *_, regression = of_rule(redis_client, "kinds")
        assert regression.status == "firing" and "is back in engine after more than 1h" in regression.summary
        assert regression.value == pytest.approx(3601, abs=1)


class TestSharedState:
    def test_two_engines_sharing_a_burst_fire_once(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Two collectors each seeing part of a burst add up to one breach and one alert."""
        one, two = make_engine(), make_engine()
        one.write(burst(clock, 6))
        two.write(burst(clock, 5))
        for _ in range(5):
            one.tick()
            two.tick()
            clock.advance(1)
        assert len(of_rule(redis_client, "critical-errors")) == 1

    def test_concurrent_ticks_fire_once(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Engines ticking at the same moment in several threads still produce one notification."""
        engines = [make_engine() for _ in range(4)]
        engines[0].write(burst(clock, 11))
        start = threading.Barrier(len(engines))

        def tick(engine: AlertStage) -> None:
            start.wait()
            engine.tick()

        threads = [threading.Thread(target=tick, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(of_rule(redis_client, "critical-errors")) == 1


TTFT = {
    "kind": "value",
    "name": "ttft-p95",
    "filter": {"type": "generation.completed"},
    "field": "ttft_ms",
    "aggregate": "p95",
    "op": ">",
    "threshold": 2000,
    "window": "5m",
    "group_by": ["model"],
}


class TestValueRules:
    def test_p95_ttft_fires_and_resolves(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """p95 TTFT over 2000 ms fires per model; once the slow requests leave the window it resolves."""
        engine = make_engine(defaults=False, resolve_after="10s", rules=[TTFT])
        engine.write(records(*(completed(clock.now, ttft_ms=300.0 + i) for i in range(20))))
        engine.tick()
        assert of_rule(redis_client, "ttft-p95") == []
        engine.write(records(*(completed(clock.now, ttft_ms=2500.0) for _ in range(3))))
        clock.advance(1)
        engine.tick()
        (alert,) = of_rule(redis_client, "ttft-p95")
        assert alert.value == 2500.0 and alert.labels == {"model": "tiny", "severity": "warning"}
        clock.advance(301)
        engine.write(records(*(completed(clock.now, ttft_ms=250.0) for _ in range(5))))
        engine.tick()
        clock.advance(11)
        engine.tick()
        alerts = of_rule(redis_client, "ttft-p95")
        assert [alert.status for alert in alerts] == ["firing", "resolved"]
        assert alerts[-1].value == 250.0

    def test_avg_below_threshold(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """`avg tokens_per_second < 5` fires on slow generations, and never on an empty window."""
        rule = {"kind": "value", "name": "slow", "field": "tokens_per_second", "aggregate": "avg", "op": "<", "threshold": 5, "window": "1m"}
        engine = make_engine(defaults=False, rules=[rule])
        engine.tick()
        assert of_rule(redis_client, "slow") == []
        engine.write(records(*(completed(clock.now, ttft_ms=1, tokens_per_second=tps) for tps in (2.0, 4.0, 6.0))))
        clock.advance(1)
        engine.tick()
        (alert,) = of_rule(redis_client, "slow")
        assert alert.value == 4.0 and alert.threshold == 5.0

    def test_reservoir_is_capped_and_exact_stats_stay_exact(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """A slice keeps at most max_samples values, while count and max stay exact."""
        rule = {**TTFT, "name": "cap", "aggregate": "max", "max_samples": 10, "group_by": []}
        engine = make_engine(defaults=False, rules=[rule])
        engine.write(records(*(completed(clock.now, ttft_ms=float(i)) for i in range(100))))
        engine.write(records(*(completed(clock.now, ttft_ms=5000.0 + i) for i in range(3))))
        lists = list(redis_client.scan_iter("telemetry:alerts:telemetry-collectors:samples:cap:*"))
        assert len(lists) == 1 and redis_client.llen(lists[0]) == 10
        engine.tick()
        (alert,) = of_rule(redis_client, "cap")
        assert alert.value == 5002.0


    def test_reservoir_is_algorithm_r_over_first_deliveries(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Ids looked up and samples pushed in bulk keep the reservoir what Algorithm R gives value by value,
        repeats and redeliveries skipped (the state draws one uniform per value written, in order)."""
        rule = {**TTFT, "name": "fair", "aggregate": "p50", "max_samples": 10, "group_by": []}
        engine = make_engine(defaults=False, rules=[rule])
        first = records(*(completed(clock.now, ttft_ms=float(i)) for i in range(25)))
        second = records(*(completed(clock.now, ttft_ms=100.0 + i) for i in range(30)))
        writes = [first, first[:5] + second + second[:3]]
        random.seed(7)
        for batch in writes:
            engine.write(batch)
        uniforms = random.Random(7)
        sample: list[float] = []
        counted: set[str] = set()
        for batch in writes:
            for item in batch:
                u = uniforms.random()
                if item.event.id in counted:
                    continue
                counted.add(item.event.id)
                if len(sample) < 10:
                    sample.append(item.event.ttft_ms)  # type: ignore[union-attr]
                elif (j := math.floor(u * len(counted))) < 10:
                    sample[j] = item.event.ttft_ms  # type: ignore[union-attr]
        (samples,) = redis_client.scan_iter("telemetry:alerts:telemetry-collectors:samples:fair:*")
        assert [float(value) for value in redis_client.lrange(samples, 0, -1)] == sample
        engine.tick()
        assert engine.state.snapshot(engine.rules, clock.now).measures["fair"]["[]"].value in sample

    def test_values_at_the_float_limit_do_not_wedge_the_state(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Values whose sum overflows a float still count (max fires) and leave nothing stuck pending."""
        rule = {**TTFT, "name": "huge", "aggregate": "max", "threshold": 1e300, "group_by": []}
        engine = make_engine(defaults=False, rules=[rule])
        engine.write(records(*(completed(clock.now, ttft_ms=1.7e308) for _ in range(2))))
        engine.write(records(completed(clock.now, ttft_ms=1.7e308)))
        engine.tick()
        (alert,) = of_rule(redis_client, "huge")
        assert alert.value == 1.7e308
        assert engine.stats()["pending"] == 0 and engine.counters["state_errors"] == 0


class TestAbsence:
    def test_silent_service_fires_and_recovers(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """A service that stops sending runtime.status fires after the period; sending again resolves it."""
        rule = {"kind": "absence", "name": "engine-silent", "filter": {"type": "runtime.status"}, "period": "30s"}
        engine = make_engine(defaults=False, resolve_after="5s", rules=[rule])
        engine.write(records(status(clock.now, service="engine-a"), status(clock.now, service="engine-b")))
        for _ in range(4):
            clock.advance(10)
            engine.write(records(status(clock.now, service="engine-b")))
            engine.tick()
        (alert,) = of_rule(redis_client, "engine-silent")
        assert alert.labels == {"service": "engine-a", "severity": "warning"}
        assert alert.value == 40.0 and alert.threshold == 30.0  # 30s of silence is not yet more than 30s
        engine.write(records(status(clock.now, service="engine-a")))
        clock.advance(1)
        engine.tick()  # clear from here on
        clock.advance(6)
        engine.tick()
        resolved = of_rule(redis_client, "engine-silent")[-1]
        assert resolved.status == "resolved" and "engine-a is sending again" in resolved.summary

    def test_restarted_collector_listens_a_period_before_judging(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """After a restart, no service is called silent before a full period of listening; a firing absence alert stays as it is."""
        rule = {"kind": "absence", "name": "silent", "filter": {"type": "runtime.status"}, "period": "30s"}
        first = make_engine(defaults=False, resolve_after="0s", rules=[rule])
        first.write(records(*(status(clock.now, service=name) for name in ("a", "b", "c"))))
        clock.advance(40)
        first.write(records(status(clock.now, service="a"), status(clock.now, service="b")))
        first.tick()
        first.close()
        clock.advance(60)  # the collector is down; a and b keep sending into the backlog
        restarted = make_engine(defaults=False, resolve_after="0s", rules=[rule])
        clock.advance(1)
        restarted.tick()
        restarted.write(records(status(clock.now, service="a"), status(clock.now, service="b")))
        clock.advance(30)
        restarted.tick()
        alerts = of_rule(redis_client, "silent")
        assert [(alert.labels["service"], alert.status) for alert in alerts] == [("c", "firing")]

    def test_never_seen_service_does_not_fire(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Only services seen before can be missed: an empty Redis fires nothing."""
        rule = {"kind": "absence", "name": "quiet", "period": "1s"}
        engine = make_engine(defaults=False, rules=[rule])
        clock.advance(100)
        engine.tick()
        assert stream_alerts(redis_client) == []


class TestLag:
    def test_lag_near_maxlen_fires_critical(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Unacked entries at 80% of MAXLEN fire the built-in collector-lag rule; an uncapped stream never does."""
        engine = make_engine(resolve_after="0s")
        engine.observe_lag("events", 100, 0)
        engine.observe_lag("events", 500, 10_000)
        engine.tick()
        assert of_rule(redis_client, "collector-lag") == []
        clock.advance(1)
        engine.observe_lag("errors", 8_500, 10_000)
        engine.tick()
        (alert,) = of_rule(redis_client, "collector-lag")
        assert alert.labels == {"stream": "errors", "severity": "critical"} and alert.value == 0.85
        assert "85%" in alert.summary
        clock.advance(62)
        engine.observe_lag("errors", 0, 10_000)
        engine.tick()
        assert of_rule(redis_client, "collector-lag")[-1].status == "resolved"


class TestRedisOutage:
    def test_observations_survive_a_redis_outage(self, redis_process: RedisProcess, clock: FakeClock) -> None:
        """With Redis down observe() does not raise; what it saw is written and fires once Redis is back."""
        engine = make_stage(redis_process.client(socket_timeout=2), alerts_config(), clock=clock)
        try:
            redis_process.stop()
            engine.write(burst(clock, 11, error_type="KeyError"))
            engine.tick()
            assert engine.stats()["pending"] > 0 and engine.counters["state_errors"] >= 1
            redis_process.start()
            clock.advance(1)
            engine.tick()
            client = redis_process.client()
            rules = sorted(alert.rule for alert in stream_alerts(client))
            assert rules == ["critical-errors", "new-error-kind", "service-errors"]
            assert engine.stats()["pending"] == 0
        finally:
            engine.close(timeout=1.0)

    def test_custom_events_count_too(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Rules match custom event types and their attrs like typed ones."""
        rule = {"kind": "rate", "name": "failed-jobs", "filter": {"type": "job.*", "fields": {"outcome": "failed"}}, "window": "1m", "threshold": 2, "group_by": ["queue"]}
        engine = make_engine(defaults=False, rules=[rule])
        engine.write(records(*(custom(clock.now, "job.finished", outcome="failed", queue="q1") for _ in range(3))))
        engine.write(records(*(custom(clock.now, "job.finished", outcome="ok", queue="q1") for _ in range(5))))
        engine.tick()
        (alert,) = of_rule(redis_client, "failed-jobs")
        assert alert.value == 3.0 and alert.labels["queue"] == "q1"


class TestCountedOnce:
    def test_a_redelivered_batch_adds_nothing(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """The same entries written again (a redelivery, a claim) leave counts and value statistics as they were."""
        rule = {**TTFT, "name": "ttft-count", "aggregate": "count", "threshold": 100, "group_by": []}
        engine = make_engine(rules=[rule], disable=["new-error-kind"])
        errors, slow = burst(clock, 6), records(*(completed(clock.now, ttft_ms=3000.0) for _ in range(4)))
        for _ in range(3):
            engine.write(errors + slow)
        engine.write(burst(clock, 5))
        engine.tick()
        (critical,) = of_rule(redis_client, "critical-errors")
        assert critical.value == 11.0
        stats = engine.state.snapshot(engine.rules, clock.now).measures["ttft-count"]
        assert stats["[]"].value == 4.0

    def test_large_batches_count_each_entry_once(self, make_engine: Any, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Keys go to the slice's id set in chunks: a group past a chunk, repeats inside a batch and
        a redelivered batch still count each entry once; the collector's own observations always count."""
        jobs = {"kind": "rate", "name": "jobs", "filter": {"type": "job.done"}, "group_by": ["queue"], "window": "1m", "threshold": 1e9}
        losses = {"kind": "rate", "name": "loss-reports", "filter": {"type": "collector.entries_lost"}, "window": "1m", "threshold": 1e9}
        engine = make_engine(rules=[jobs, losses], defaults=False)
        batch = records(*(custom(clock.now, "job.done", queue="q1") for _ in range(2300)), *(custom(clock.now, "job.done", queue="q2") for _ in range(300)))
        engine.write(batch + batch[:700])
        engine.write(batch[1500:])
        engine.observe_loss("events", 3)
        engine.observe_loss("events", 3)
        engine.tick()
        measures = engine.state.snapshot(engine.rules, clock.now).measures
        assert {group: measure.value for group, measure in measures["jobs"].items()} == {'["q1"]': 2300.0, '["q2"]': 300.0}
        assert measures["loss-reports"]["[]"].value == 2.0

    def test_groups_keep_separate_state(self, redis_server: RedisProcess, clock: FakeClock, redis_client: redis.Redis) -> None:
        """Two consumer groups seeing the same events each count them, and each fires its own alert."""
        stages = [make_stage(redis_server.client(), alerts_config(disable=["new-error-kind"]), group=group, clock=clock) for group in ("a", "b")]
        try:
            batch = burst(clock, 11)
            for stage in stages:
                stage.write(batch)
                stage.tick()
        finally:
            for stage in stages:
                stage.close(timeout=1.0)
        fired = of_rule(redis_client, "critical-errors")
        assert sorted((alert.group, alert.value) for alert in fired) == [("a", 11.0), ("b", 11.0)]
