"""Sending serialized OTLP requests over gRPC or HTTP/protobuf, one transport per signal.

Every outcome becomes one of the errors below, as the OTLP exporter
specification classifies it:

=============================================  =============================================
success (gRPC OK, HTTP 2xx)                    :class:`ExportResult` (partial success kept)
retryable: HTTP 429, 502, 503, 504; gRPC       :class:`~collector.sinks.SinkUnavailable`,
CANCELLED, DEADLINE_EXCEEDED, ABORTED,         retried without bound, after ``retry_after``
OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS, and      from ``Retry-After`` / ``RetryInfo`` when
RESOURCE_EXHAUSTED *with* RetryInfo; timeouts  given
and refused connections
UNAUTHENTICATED, PERMISSION_DENIED, 401, 403   :class:`~collector.sinks.SinkAuthError` (pause)
HTTP 413, gRPC "message larger than max"       :class:`TooLarge`: split the request
INVALID_ARGUMENT, HTTP 400 and other 4xx       :class:`Rejected`: dead-letter now
everything else (HTTP 408, 500, 501, 505..,    :class:`Failed`: a bounded number of tries
gRPC INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED     (``otlp.max_attempts``), then dead-letter
without RetryInfo, ...)
=============================================  =============================================

One deliberate exception: 404/405 and gRPC UNIMPLEMENTED say the *endpoint*
is wrong, not the data; dead-lettering every batch until someone fixes the
URL would be worse than holding them pending, so they are retried with a
message saying so.

Header values (the token) never appear in an error message; anything the
backend says is scrubbed of them and cut to 300 characters; at most
``MAX_RESPONSE_BYTES`` of a response body is read.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, NamedTuple, Optional, Protocol

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.otlp.config import OtlpSettings, Signal

__all__ = [
    "ExportResult",
    "Rejected",
    "Failed",
    "TooLarge",
    "Transport",
    "make_transport",
    "Scrubber",
    "partial_success",
    "SERVICES",
    "USER_AGENT",
    "MAX_RESPONSE_BYTES",
]

try:
    _VERSION = importlib.metadata.version("mlx-telemetry")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"
USER_AGENT = f"mlx-telemetry-collector/{_VERSION}"
MAX_RESPONSE_BYTES = 64 * 1024
SERVICES: dict[Signal, tuple[Any, str, type]] = {
    "logs": (logs_service_pb2, "LogsService", logs_service_pb2.ExportLogsServiceResponse),
    "traces": (trace_service_pb2, "TraceService", trace_service_pb2.ExportTraceServiceResponse),
    "metrics": (metrics_service_pb2, "MetricsService", metrics_service_pb2.ExportMetricsServiceResponse),
}
_REJECTED_FIELDS: dict[Signal, str] = {
    "logs": "rejected_log_records",
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
}


class ExportResult(NamedTuple):
    """An accepted request; ``rejected`` items were dropped by the backend (partial success)."""

    rejected: int = 0
    message: str = ""


class Rejected(Exception):
    """The backend refused this request for good (bad data, not a bad moment)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Failed(Exception):
    """Not retryable per the spec, yet maybe a bad moment: tried a bounded number of times."""

    def __init__(self, reason: str, retry_after: Optional[float] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TooLarge(Exception):
    """The backend refused the request's size: send it in smaller parts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transport(Protocol):
    def export(self, signal: Signal, payload: bytes) -> ExportResult:
        """Send one serialized ``Export*ServiceRequest``; raise on anything but success."""

    def close(self) -> None: ...


def make_transport(settings: OtlpSettings, signal: Signal) -> Transport:
    # Imported for the protocol in use only: gRPC's runtime alone weighs several MB.
    target = settings.per_signal[signal]
    if settings.protocol == "grpc":
        from collector.otlp.grpc_transport import GrpcTransport

        return GrpcTransport(target, settings.max_retry_after)
    from collector.otlp.http_transport import HttpTransport

    return HttpTransport(target, settings.max_retry_after)


class Scrubber:
    """Removes header values (the token among them) from text we did not write."""

    def __init__(self, headers: dict[str, str]) -> None:
        secrets = set(headers.values())
        secrets |= {value.split(" ", 1)[1] for value in headers.values() if " " in value}
        self._secrets = sorted((secret for secret in secrets if len(secret) >= 4), key=len, reverse=True)

    def __call__(self, text: str, limit: int = 300) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:limit]


def partial_success(signal: Signal, response: Any) -> ExportResult:
    """What an accepted export's response says the backend dropped, if anything."""
    if not response.HasField("partial_success"):
        return ExportResult()
    answer = response.partial_success
    return ExportResult(getattr(answer, _REJECTED_FIELDS[signal]), answer.error_message)
