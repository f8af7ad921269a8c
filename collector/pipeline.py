"""The config -> pipeline constructor shared by ``run`` and ``demo``: sinks, the alert stage, the collector."""

from __future__ import annotations

from typing import Any

import redis

from collector.alerts.stage import build_alert_stage
from collector.alerts.state import AlertState
from collector.config import Config
from collector.daemon import Collector, build_sinks
from emitters.streams import stream_names

__all__ = ["build_collector", "leave_group"]


def build_collector(config: Config, **options: Any) -> Collector:
    """A collector for ``config`` with every sink and stage the config turns on.

    ``options`` go to :class:`Collector` (``notifier``, ``client``). Raises
    ValueError naming the setting when one is only checkable now (OTEL_*
    variables, webhook secrets); nothing is left open then.
    """
    sinks = build_sinks(config)
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
    """
    names = stream_names(config.redis.stream_prefix)
    for key in (names.errors, names.events):
        try:
            client.xgroup_destroy(key, config.collector.group)
        except redis.ResponseError:
            pass  # the stream is gone: so is the group
    AlertState(client, names, config.collector.group).clear()
