"""`telemetry-collector alerts`: active and recent alerts from a real Redis."""

from __future__ import annotations

import json

import redis
from click.testing import CliRunner

from collector.cli import main
from collector.embedded import RedisProcess, free_port
from tests.support.alerts import FakeClock, alerts_config, error_event, make_stage, records


def fire_and_resolve(redis_server: RedisProcess, prefix: str = "telemetry") -> None:
    """service-errors fires for api and resolves; critical-errors fires and stays firing."""
    clock = FakeClock()
    engine = make_stage(redis_server.client(), alerts_config(resolve_after="0s", disable=["new-error-kind"]), clock=clock, prefix=prefix)
    engine.write(records(*(error_event(clock.now, service="api", severity="critical") for _ in range(11))))
    engine.tick()
    clock.advance(30)
    engine.write(records(*(error_event(clock.now, service="batch", severity="critical") for _ in range(11))))
    clock.advance(31)  # the api burst has left the window; the batch one is still in it
    engine.tick()
    engine.close(timeout=1)


class TestAlertsCommand:
    def test_json_lists_active_and_recent(self, redis_server: RedisProcess) -> None:
        """--json: the firing alerts with their state, and the notifications newest first."""
        fire_and_resolve(redis_server)
        result = CliRunner().invoke(main, ["alerts", "--redis-url", redis_server.url, "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.output)
        active = {(row["rule"], row["labels"].get("service")) for row in data["active"]}
        assert active == {("critical-errors", None), ("service-errors", "batch")}
        recent = [(row["rule"], row["status"], row["labels"].get("service")) for row in data["recent"]]
        assert recent[0][1] == "resolved" and recent[0][2] == "api"
        assert ("service-errors", "firing", "api") in recent and len(recent) == 4
        assert all(row["id"] for row in data["recent"])

    def test_table_and_active_only(self, redis_server: RedisProcess) -> None:
        """The table shows firing alerts first; --active leaves out the notifications."""
        fire_and_resolve(redis_server)
        full = CliRunner().invoke(main, ["alerts", "--redis-url", redis_server.url], env={"NO_COLOR": "1"})
        assert full.exit_code == 0, full.output
        assert full.output.startswith("Firing now: 2")
        assert "Latest notifications: 4" in full.output and "service=batch" in full.output
        active = CliRunner().invoke(main, ["alerts", "--redis-url", redis_server.url, "--active"])
        assert "Latest notifications" not in active.output and "critical-errors" in active.output

    def test_prefix_and_limit(self, redis_server: RedisProcess, redis_client: redis.Redis) -> None:
        """--stream-prefix reads another deployment's alerts; --limit caps the notifications."""
        fire_and_resolve(redis_server, prefix="staging")
        result = CliRunner().invoke(main, ["alerts", "--redis-url", redis_server.url, "--stream-prefix", "staging", "--limit", "1", "--json"])
        data = json.loads(result.output)
        assert len(data["recent"]) == 1 and len(data["active"]) == 2
        other = json.loads(CliRunner().invoke(main, ["alerts", "--redis-url", redis_server.url, "--json"]).output)
        assert other == {"group": "telemetry-collectors", "active": [], "silences": [], "recent": []}

    def test_unreachable_redis_is_one_line_exit_2(self) -> None:
        """Redis out of reach: one line on stderr and exit status 2, like the other tools."""
        result = CliRunner().invoke(main, ["alerts", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"])
        assert result.exit_code == 2
        assert result.output.startswith("Error: cannot reach Redis at redis://127.0.0.1:")
        assert len(result.output.strip().splitlines()) == 1
