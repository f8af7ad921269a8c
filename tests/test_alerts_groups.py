"""Alert state per consumer group, each stream entry counted once, silences obeyed by every collector:
real collectors, real faults, the real CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from collector.alerts.records import StoredAlert
from collector.embedded import RedisProcess
from emitters.events import Event
from tests.support.alert_processes import GROUP, NAMES, add, alerts_of, clean_env, collectors, settle  # noqa: F401 - fixture
from tests.support.alerts import Receiver, error_event
from tests.support.installed import console_script
from tests.support.waiting import wait_for

# The built-in critical-errors rule alone: more than 10 critical errors in 1m.
CONFIG = """
[alerts]
repeat_interval = "1h"
disable = ["new-error-kind", "service-errors", "collector-lag"]
"""


def criticals(count: int) -> list[Event]:
    return [error_event(time.time(), service="api", severity="critical", message=f"fatal #{n}") for n in range(count)]


def window_count(client: redis.Redis, group: str, rule: str = "critical-errors") -> int:
    """What the group's window holds for ``rule``, summed over its slices."""
    keys = client.scan_iter(match=f"{NAMES.alerts}:{group}:rate:{rule}:*")
    return sum(int(n) for key in keys for n in client.hgetall(key).values())


def stored(client: redis.Redis, group: str, rule: str = "critical-errors") -> list[StoredAlert]:
    import msgspec

    raw = client.hgetall(f"{NAMES.alerts}:{group}:state").values()
    return [alert for alert in (msgspec.json.decode(item, type=StoredAlert) for item in raw) if alert.record.rule == rule]


@pytest.mark.slow
class TestTwoGroups:
    def test_each_group_fires_once_with_the_full_count(self, collectors: Any, redis_client: redis.Redis) -> None:
        """Two groups read the same 12 critical errors: each group's rule fires once, counting 12, not 24."""
        collectors(CONFIG, "a1", "--group", "group-a")
        collectors(CONFIG, "b1", "--group", "group-b")
        add(redis_client, criticals(12))
        settle(redis_client, 2.5, "group-a", "group-b")
        fired = alerts_of(redis_client, "critical-errors", "firing")
        assert sorted((alert.group, alert.value) for alert in fired) == [("group-a", 12.0), ("group-b", 12.0)]
        assert window_count(redis_client, "group-a") == window_count(redis_client, "group-b") == 12


@pytest.mark.slow
class TestRedelivery:
    def test_entries_redelivered_after_sigkill_count_once(
        self, collectors: Any, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Entries counted but not acked when the collector died are redelivered on restart and not counted again.

        The collector's Redis user may not XACK (an ACL), so every entry it
        counts stays pending; it is SIGKILLed, the right is given back, and a
        restart with the same consumer name reads its pending entries again.
        """
        redis_client.execute_command("ACL", "SETUSER", "collector", "on", ">pw", "~*", "&*", "+@all", "-xack")
        env = {"TELEMETRY_REDIS_USERNAME": "collector", "TELEMETRY_REDIS_PASSWORD": "pw"}
        first = collectors(CONFIG, "c1", env=env)
        add(redis_client, criticals(12))
        wait_for(lambda: window_count(redis_client, GROUP) == 12, timeout=30, what="the errors counted")
        assert redis_client.xpending(NAMES.errors, GROUP)["pending"] == 12
        assert first.process is not None
        first.process.kill()
        first.process.wait()

        redis_client.execute_command("ACL", "SETUSER", "collector", "+xack")
        collectors(CONFIG, "c1", env=env)
        settle(redis_client)
        logged = [json.loads(line)["id"] for path in (tmp_path / "logs").glob("errors-*.jsonl") for line in path.read_text().splitlines()]
        assert len(logged) == 24 and len(set(logged)) == 12  # every entry went through the sinks twice
        assert window_count(redis_client, GROUP) == 12
        (alert,) = stored(redis_client, GROUP)
        assert alert.status == "firing" and alert.record.value == 12.0
        assert len(alerts_of(redis_client, "critical-errors")) == 1


SILENCED_CONFIG = """
[alerts]
group_wait = "0s"
group_interval = "1s"
disable = ["new-error-kind", "service-errors", "collector-lag"]

[alerts.webhook]
url = "{url}"
format = "json"
"""


def cli(redis_url: str, *args: str) -> str:
    done = subprocess.run(
        [console_script(), "alerts", *args, "--redis-url", redis_url], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
class TestSilenceAcrossCollectors:
    def test_cli_silence_holds_two_collectors_until_it_expires(
        self, collectors: Any, redis_server: RedisProcess, redis_client: redis.Redis
    ) -> None:
        """A silence set by one `alerts silence` process holds back the webhook in two running collectors;
        `alerts expire` lets both through; both changes are in the alerts stream."""
        receiver = Receiver()
        try:
            for name, group in (("a1", "group-a"), ("b1", "group-b")):
                collectors(SILENCED_CONFIG.format(url=receiver.url), name, "--group", group)
            silence_id = cli(redis_server.url, "silence", "--matcher", "rule=critical-errors", "--for", "1h",
                             "--comment", "maintenance", "--author", "ops").strip()  # fmt: skip
            add(redis_client, criticals(12))
            settle(redis_client, 3.0, "group-a", "group-b")
            fired = alerts_of(redis_client, "critical-errors", "firing")
            assert sorted(alert.group for alert in fired) == ["group-a", "group-b"]
            assert receiver.requests == []
            shown = json.loads(cli(redis_server.url, "--group", "group-a", "--json"))
            assert [row["silenced_by"] for row in shown["active"]] == [silence_id]
            assert [row["id"] for row in shown["silences"]] == [silence_id]

            assert cli(redis_server.url, "expire", silence_id).strip() == f"expired {silence_id}"
            bodies = wait_for(lambda: receiver.requests if len(receiver.requests) >= 2 else None, timeout=30, what="both collectors' webhooks")
            sent = sorted((alert["group"], alert["rule"], alert["value"]) for _, _, body in bodies for alert in body)
            assert sent == [("group-a", "critical-errors", 12.0), ("group-b", "critical-errors", 12.0)]
        finally:
            receiver.close()
        changes = [json.loads(fields[b"silence"]) for _, fields in redis_client.xrange(NAMES.alerts) if b"silence" in fields]
        assert [(change["action"], change["silence"]["id"]) for change in changes] == [("created", silence_id), ("expired", silence_id)]
        assert changes[0]["silence"]["comment"] == "maintenance" and changes[0]["silence"]["created_by"] == "ops"
