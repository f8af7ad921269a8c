"""The config -> pipeline constructor shared by ``run`` and ``demo``: sinks, the alert stage, the collector."""

from __future__ import annotations

from typing import Any, Sequence

import redis
import structlog

from collector.alerts.stage import build_alert_stage
from collector.alerts.state import AlertState
from collector.config import Config
from collector.daemon import Collector, build_sinks
from collector.sinks import Sink
from emitters.streams import stream_names

__all__ = ["build_collector", "leave_group"]

log = structlog.get_logger("collector.pipeline")


def build_collector(config: Config, extra_sinks: Sequence[Sink] = (), **options: Any) -> Collector:
    """A collector for ``config`` with every sink and stage the config turns on.

    ``extra_sinks`` join the configured ones (the HTTP server's metrics stage).

    ``options`` go to :class:`Collector` (``notifier``, ``client``). Raises
    ValueError naming the setting when one is only checkable now (OTEL_*
    variables, webhook secrets); nothing is left open then.
    """
    sinks = [*build_sinks(config), *extra_sinks]
    try:
        alerts = build_alert_stage(config)
    except ValueError:
        for sink in sinks:
            sink.close()
        raise
    return Collector(config, sinks=sinks, alert_engine=alerts, **options)


def leave_group(client: redis.Redis, config: Config) -> None:
    """Remove ``collector.group`` from both streams, and its alert state: for a group used once (the demo).

    Entries the group had not acked stay in the streams for the other groups.
    With Redis out of reach the group stays (``health`` then shows it); one log line says so.
    """
    names = stream_names(config.redis.stream_prefix)
    group = config.collector.group
    try:
        for key in (names.errors, names.events):
            try:
                client.xgroup_destroy(key, group)
            except redis.ResponseError:
                pass  # the stream is gone: so is the group
        AlertState(client, names, group).clear()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("consumer_group_left_behind", group=group, error=str(exc),
                    fix=f"remove it with: redis-cli XGROUP DESTROY {names.events} {group} (and {names.errors})")
