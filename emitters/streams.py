"""Redis key names shared by emitters, collectors and operator tools."""

from __future__ import annotations

from typing import NamedTuple

# The single stream field that holds the msgpack-encoded event.
PAYLOAD_FIELD = "event"


class StreamNames(NamedTuple):
    events: str
    errors: str
    dead: str
    alerts: str
    live: str  # pub/sub channel, not a stream
    heartbeat_prefix: str  # `{prefix}:collector:{consumer}` hashes with a TTL

    def heartbeat(self, consumer: str) -> str:
        return f"{self.heartbeat_prefix}{consumer}"


def stream_names(prefix: str = "telemetry") -> StreamNames:
    return StreamNames(
        events=f"{prefix}:events",
        errors=f"{prefix}:errors",
        dead=f"{prefix}:dead",
        alerts=f"{prefix}:alerts",
        live=f"{prefix}:live",
        heartbeat_prefix=f"{prefix}:collector:",
    )
