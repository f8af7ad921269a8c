"""Redis key names shared by emitters, collectors and operator tools."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import msgspec

if TYPE_CHECKING:
    from emitters.events import Event

# The single stream field that holds the msgpack-encoded event.
PAYLOAD_FIELD = "event"


class StreamNames(NamedTuple):
    events: str
    errors: str
    dead: str
    alerts: str
    live: str  # pub/sub channel, not a stream; messages per decode_live
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


_live_decoder = msgspec.msgpack.Decoder(list[bytes])


def decode_live(message: bytes) -> "list[Event]":
    """The events in one ``{prefix}:live`` message: a msgpack array of encoded events.

    Emitters publish a batch's token events as one message. Raises
    ``msgspec.DecodeError`` (or ``ValidationError``) for a malformed message.
    """
    from emitters.events import decode

    return [decode(payload) for payload in _live_decoder.decode(message)]
