"""mlx-telemetry emitters: the wire contract and a non-blocking Redis client.

Importing this package stays light: no OpenTelemetry, structlog, click or
collector modules. ``emitters.mlx`` (mlx-lm instrumentation) is imported
explicitly by those who want it.
"""

from emitters.context import correlation
from emitters.emitter import Emitter
from emitters.events import (
    DROP_REASONS,
    ClientReport,
    CustomEvent,
    DecodeError,
    ErrorEvent,
    Event,
    GenerationCompleted,
    GenerationStarted,
    ModelInvalidated,
    ModelLoaded,
    ModelUnloaded,
    RuntimeStatus,
    SpanEnded,
    TokenGenerated,
    ValidationError,
    decode,
    encode,
)
from emitters.streams import PAYLOAD_FIELD, StreamNames, decode_live, stream_names

__all__ = [
    "Emitter",
    "DROP_REASONS",
    "correlation",
    "Event",
    "CustomEvent",
    "ErrorEvent",
    "GenerationCompleted",
    "GenerationStarted",
    "ModelInvalidated",
    "ModelLoaded",
    "ModelUnloaded",
    "RuntimeStatus",
    "SpanEnded",
    "ClientReport",
    "TokenGenerated",
    "DecodeError",
    "ValidationError",
    "decode",
    "encode",
    "PAYLOAD_FIELD",
    "StreamNames",
    "stream_names",
    "decode_live",
]
