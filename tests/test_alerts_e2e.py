"""Alerts end to end: real `telemetry-collector run` processes, a real Redis, real traffic.

Windows and resolve periods are short here so a test takes seconds; the rules
are otherwise what an operator would write in the TOML file.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from collector.embedded import RedisProcess
from emitters import Emitter
from emitters.events import Event
from tests.support.alert_processes import NAMES, add, alerts_of, clean_env, collectors, drained, settle  # noqa: F401 - fixture
from tests.support.alerts import Receiver, custom, error_event
from tests.support.installed import console_script
from tests.support.waiting import wait_for

def criticals(count: int, service: str = "api") -> list[Event]:
    return [error_event(time.time(), service=service, severity="critical", message=f"fatal #{n}") for n in range(count)]


BURST_CONFIG = """
[alerts]
group_wait = "0s"
group_interval = "1s"
resolve_after = "2s"
cooldown = "0s"
repeat_interval = "1h"
disable = ["new-error-kind", "service-errors"]

[[alerts.rules]]
name = "critical-errors"
kind = "rate"
filter = { severity = "critical" }
window = "8s"
threshold = 10
severity = "critical"
"""


@pytest.mark.slow
class TestRateAlertProcess:
    def test_burst_fires_once_holds_and_resolves(self, collectors: Any, redis_client: redis.Redis, tmp_path: Path) -> None:
        """11 critical errors fire one alert; 20 more do not fire again; once quiet, one resolved notice."""
        collector = collectors(BURST_CONFIG)
        add(redis_client, criticals(11))
        wait_for(lambda: alerts_of(redis_client, "critical-errors"), timeout=30, what="the alert")
        add(redis_client, criticals(20))
        settle(redis_client)
        (firing,) = alerts_of(redis_client, "critical-errors")
        assert firing.status == "firing" and firing.value >= 11 and firing.labels == {"severity": "critical"}
        wait_for(lambda: alerts_of(redis_client, "critical-errors", "resolved"), timeout=60, what="the resolution")
        statuses = [alert.status for alert in alerts_of(redis_client, "critical-errors")]
        assert statuses == ["firing", "resolved"]
        assert collector.stop() == 0
        lines = [line for path in (tmp_path / "logs").glob("alerts-*.jsonl") for line in path.read_text().splitlines()]
        assert len(lines) == 2
        assert '"event": "alert_firing"' in collector.output() and '"level": "error"' in collector.output()


NEW_KIND_CONFIG = """
[alerts]
disable = ["critical-errors", "service-errors"]
"""


def parse_failure() -> ValueError:
    try:
        int("not a number")
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def lookup_failure() -> KeyError:
    try:
        {}["missing"]
    except KeyError as exc:
        return exc
    raise AssertionError("unreachable")


@pytest.mark.slow
class TestNewErrorKindProcess:
    def test_first_sighting_fires_once_even_across_restart(self, collectors: Any, redis_server: RedisProcess, redis_client: redis.Redis) -> None:
        """A never-seen exception fires at once; again, it does not; after a collector restart, still not."""
        emitter = Emitter("engine", redis_server.url, hash_secret="e2e")
        try:
            first = collectors(NEW_KIND_CONFIG, "c1")
            emitter.error(parse_failure())
            emitter.flush()
            (alert,) = wait_for(lambda: alerts_of(redis_client, "new-error-kind", "firing"), timeout=30, what="the new-kind alert")
            assert alert.labels["error_type"] == "ValueError" and alert.labels["service"] == "engine"
            emitter.error(parse_failure())
            emitter.flush()
            settle(redis_client)
            assert len(alerts_of(redis_client, "new-error-kind", "firing")) == 1
            assert first.stop() == 0
            collectors(NEW_KIND_CONFIG, "c1")  # the same collector, restarted
            emitter.error(parse_failure())
            emitter.flush()
            settle(redis_client)
            assert len(alerts_of(redis_client, "new-error-kind", "firing")) == 1
            emitter.error(lookup_failure())  # the restarted collector does evaluate: a new kind fires
            emitter.flush()
            wait_for(lambda: len(alerts_of(redis_client, "new-error-kind", "firing")) == 2, timeout=30, what="the KeyError alert")
            assert alerts_of(redis_client, "new-error-kind", "firing")[1].labels["error_type"] == "KeyError"
        finally:
            emitter.close()


SHARED_CONFIG = """
[alerts]
disable = ["new-error-kind", "service-errors"]
"""


@pytest.mark.slow
class TestSharedBurstProcess:
    def test_two_collectors_one_alert(self, collectors: Any, redis_client: redis.Redis) -> None:
        """Two collectors in one group split a burst of critical errors between them and fire one alert."""
        collectors(SHARED_CONFIG, "c1", "--batch-size", "1")
        collectors(SHARED_CONFIG, "c2", "--batch-size", "1")
        add(redis_client, criticals(30))
        settle(redis_client)
        wait_for(
            lambda: all(int(redis_client.hget(NAMES.heartbeat(name), "written") or 0) > 0 for name in ("c1", "c2")),
            timeout=10,
            what="both heartbeats to show written events",
        )
        written = [int(redis_client.hget(NAMES.heartbeat(name), "written") or 0) for name in ("c1", "c2")]
        assert sum(written) == 30
        assert len(alerts_of(redis_client, "critical-errors")) == 1


VALUE_ABSENCE_CONFIG = """
[alerts]
defaults = false
resolve_after = "1s"
cooldown = "0s"

[[alerts.rules]]
name = "ttft-p95"
kind = "value"
filter = { type = "generation.completed" }
field = "ttft_ms"
aggregate = "p95"
threshold = 2000
window = "8s"
group_by = ["model"]

[[alerts.rules]]
name = "engine-silent"
kind = "absence"
filter = { type = "runtime.status" }
period = "3s"
"""


@pytest.mark.slow
class TestValueAndAbsenceProcess:
    def test_p95_ttft_and_absence_fire_and_resolve(self, collectors: Any, redis_server: RedisProcess, redis_client: redis.Redis) -> None:
        """Slow generations fire p95 TTFT; a silent engine fires absence; normal traffic resolves both."""
        collectors(VALUE_ABSENCE_CONFIG)
        engine = Emitter("engine-a", redis_server.url, hash_secret="e2e")
        try:
            engine.runtime_status("ready", 1)
            for n in range(24):
                ttft = 3000.0 if n % 6 == 0 else 300.0
                engine.generation_completed("tiny", f"r{n}", 10, 20, ttft + 500, ttft_ms=ttft)
            engine.flush()
            (slow,) = wait_for(lambda: alerts_of(redis_client, "ttft-p95"), timeout=30, what="the p95 alert")
            assert slow.value == 3000.0 and slow.labels == {"model": "tiny", "severity": "warning"}
            (silent,) = wait_for(lambda: alerts_of(redis_client, "engine-silent"), timeout=30, what="the absence alert")
            assert silent.labels == {"service": "engine-a", "severity": "warning"} and silent.value > 3

            pause = threading.Event()

            def healthy_traffic_resolves_both() -> bool:
                pause.wait(0.3)  # a steady trickle, not a flood
                engine.runtime_status("ready", 1)
                engine.generation_completed("tiny", "fast", 10, 20, 400.0, ttft_ms=200.0)
                engine.flush()
                return all(alerts_of(redis_client, rule, "resolved") for rule in ("ttft-p95", "engine-silent"))

            wait_for(healthy_traffic_resolves_both, timeout=60, what="both resolutions")
        finally:
            engine.close()
        for rule in ("ttft-p95", "engine-silent"):
            assert [alert.status for alert in alerts_of(redis_client, rule)] == ["firing", "resolved"]


WEBHOOK_CONFIG = """
[alerts]
disable = ["new-error-kind", "service-errors"]
group_wait = "0s"

[alerts.webhook]
url = "{url}"
retries = 10
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(statuses=[500])
    yield server
    server.close()


def written_ids(directory: Path, stem: str) -> set[str]:
    return {json.loads(line)["id"] for path in directory.glob(f"{stem}-*.jsonl") for line in path.read_text().splitlines()}


@pytest.mark.slow
class TestWebhookProcess:
    def test_failing_webhook_is_retried_while_events_flow(self, collectors: Any, receiver: Receiver, redis_client: redis.Redis, tmp_path: Path) -> None:
        """The receiver answers 500: events keep being written and acked; once it answers 200 the alert arrives."""
        collectors(WEBHOOK_CONFIG.format(url=receiver.url))
        add(redis_client, criticals(11))
        wait_for(lambda: len(receiver.requests) >= 2, timeout=30, what="two failed webhook attempts")
        traffic = [custom(time.time(), "job.created", queue="q") for _ in range(100)]
        add(redis_client, traffic)
        wait_for(
            lambda: {event.id for event in traffic} <= written_ids(tmp_path / "logs", "events"),
            timeout=30,
            what="events written while the webhook fails",
        )
        assert drained(redis_client) or wait_for(lambda: drained(redis_client), timeout=30)
        attempts_while_failing = len(receiver.requests)
        receiver.statuses = [200]
        wait_for(lambda: len(receiver.requests) > attempts_while_failing, timeout=60, what="a retry after recovery")
        path, _, body = receiver.requests[-1]
        assert path == "/api/v2/alerts"
        assert body[0]["labels"] == {"alertname": "critical-errors", "severity": "critical"}
        assert body[0]["annotations"]["threshold"] == "10"
        assert all(request[2][0]["labels"]["alertname"] == "critical-errors" for request in receiver.requests)


INVALID = {
    "unknown kind": ('kind = "ratio"\nwindow = "1m"\nthreshold = 1', "Invalid value 'ratio' - at `$.alerts.rules[0].kind`"),
    "negative window": ('kind = "rate"\nwindow = "-1m"\nthreshold = 1', "- at `$.alerts.rules[0].window`"),
    "zero window": ('kind = "rate"\nwindow = "0s"\nthreshold = 1', "window: must be > 0, got 0ms - at `$.alerts.rules[0]`"),
    "bad glob": (
        'kind = "rate"\nwindow = "1m"\nthreshold = 1\nfilter = { type = "generation.[" }',
        "type: bad glob 'generation.[': unclosed '[' - at `$.alerts.rules[0].filter`",
    ),
    "unknown aggregate": (
        'kind = "value"\nfield = "ttft_ms"\naggregate = "p42"\nwindow = "1m"\nthreshold = 1',
        "Invalid enum value 'p42' - at `$.alerts.rules[0].aggregate`",
    ),
}


class TestInvalidRuleAtStart:
    @pytest.mark.parametrize("case", sorted(INVALID))
    def test_run_and_check_config_exit_2_with_the_path(self, case: str, tmp_path: Path) -> None:
        """An invalid rule stops `run` and `check-config` with exit 2 and the rule's field path."""
        body, expected = INVALID[case]
        config = tmp_path / "bad.toml"
        config.write_text(f'[[alerts.rules]]\nname = "broken"\n{body}\n')
        for argv in (["run", "--config", str(config), "--redis-url", "redis://127.0.0.1:9/0"], ["check-config", str(config)]):
            done = subprocess.run([console_script(), *argv], capture_output=True, text=True, timeout=60, env=clean_env())
            assert done.returncode == 2, done.stderr
            assert expected in done.stderr
