"""The sinks a config turns on, built in delivery order."""

from __future__ import annotations

import os
import socket

from collector.config import Config
from collector.redisconn import connect
from collector.sinks import Sink
from collector.sinks.jsonl import JsonlSink

__all__ = ["build_sinks", "consumer_name"]


def consumer_name(config: Config) -> str:
    """The configured consumer name, else ``<host>-<pid>`` (unique per running process)."""
    return config.collector.consumer or f"{socket.gethostname()}-{os.getpid()}"


def build_sinks(config: Config) -> list[Sink]:
    """The sinks the config enables, in delivery order.

    Raises ValueError naming the setting when the OTLP settings (which may come
    from ``OTEL_EXPORTER_OTLP_*``) are unusable.
    """
    sinks: list[Sink] = []
    if config.jsonl.enabled:
        sinks.append(
            JsonlSink(
                config.jsonl.dir,
                max_bytes=config.jsonl.max_bytes,
                retention_days=config.jsonl.retention_days or None,
            )
        )
    otlp = config.otlp.resolve()
    if otlp.enabled:
        # Imported only when used: the protobuf modules weigh on start-up time and memory.
        from collector.otlp.metric_store import RedisMetricStore
        from collector.otlp.sink import OtlpSink

        # -- #12: metric intervals persist next to the streams, so a crash loses no point.
        instance = consumer_name(config)
        store = None
        if config.redis.url is not None:
            store = RedisMetricStore(connect(config.redis.url), config.redis.stream_prefix, instance)
        sinks.append(OtlpSink(otlp, collector_instance=instance, store=store))
    return sinks
