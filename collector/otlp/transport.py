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

import gzip
import importlib.metadata
import http.client
import ssl
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any, Callable, NamedTuple, Optional, Protocol
from urllib.parse import urlsplit

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from collector.otlp.config import OtlpSettings, Signal, SignalSettings
from collector.sinks import SinkAuthError, SinkUnavailable

__all__ = [
    "ExportResult",
    "Rejected",
    "Failed",
    "TooLarge",
    "Transport",
    "GrpcTransport",
    "HttpTransport",
    "make_transport",
    "USER_AGENT",
    "MAX_RESPONSE_BYTES",
]

try:
    _VERSION = importlib.metadata.version("mlx-telemetry")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = "0.0.0"
USER_AGENT = f"mlx-telemetry-collector/{_VERSION}"
MAX_RESPONSE_BYTES = 64 * 1024
# Fastest gzip: OTLP compresses well even so (20,000 records: 10.8 MB to 2.0 MB), and level 6 took
# twice the CPU (5.8 vs 2.6 us a record) for 10% fewer bytes.
_GZIP_LEVEL = 1
_SERVICES: dict[Signal, tuple[Any, str, type]] = {
    "logs": (logs_service_pb2, "LogsService", logs_service_pb2.ExportLogsServiceResponse),
    "traces": (trace_service_pb2, "TraceService", trace_service_pb2.ExportTraceServiceResponse),
    "metrics": (metrics_service_pb2, "MetricsService", metrics_service_pb2.ExportMetricsServiceResponse),
}
_REJECTED_FIELDS: dict[Signal, str] = {
    "logs": "rejected_log_records",
    "traces": "rejected_spans",
    "metrics": "rejected_data_points",
}
_AUTH_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_PERMANENT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
_RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_WRONG_ENDPOINT_HTTP = frozenset({404, 405})
# A connection the server closed while idle fails on reuse before any reply.
_STALE_CONNECTION = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


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
    target = settings.per_signal[signal]
    if settings.protocol == "grpc":
        return GrpcTransport(target, settings.max_retry_after)
    return HttpTransport(target, settings.max_retry_after)


class _Scrubber:
    """Removes header values (the token among them) from text we did not write."""

    def __init__(self, headers: dict[str, str]) -> None:
        secrets = set(headers.values())
        secrets |= {value.split(" ", 1)[1] for value in headers.values() if " " in value}
        self._secrets = sorted((secret for secret in secrets if len(secret) >= 4), key=len, reverse=True)

    def __call__(self, text: str, limit: int = 300) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:limit]


def _partial(signal: Signal, response: Any) -> ExportResult:
    if not response.HasField("partial_success"):
        return ExportResult()
    partial = response.partial_success
    return ExportResult(getattr(partial, _REJECTED_FIELDS[signal]), partial.error_message)


class GrpcTransport:
    """Unary calls on the generated services' method paths, sending our bytes as they are."""

    def __init__(self, settings: SignalSettings, max_retry_after: float) -> None:
        self._settings = settings
        self._max_retry_after = max_retry_after
        self._scrub = _Scrubber(settings.headers)
        self._channel = _channel(settings)
        self._metadata = tuple(settings.headers.items())
        self._calls: dict[Signal, Callable[..., Any]] = {}
        for signal, (module, service_name, response_type) in _SERVICES.items():
            method = module.DESCRIPTOR.services_by_name[service_name].methods_by_name["Export"]
            # No request serializer: the payload is already a serialized request.
            self._calls[signal] = self._channel.unary_unary(
                f"/{method.containing_service.full_name}/{method.name}",
                request_serializer=None,
                response_deserializer=response_type.FromString,
            )

    def export(self, signal: Signal, payload: bytes) -> ExportResult:
        try:
            response = self._calls[signal](payload, metadata=self._metadata, timeout=self._settings.timeout)
        except grpc.RpcError as exc:
            raise self._error(signal, exc) from None
        return _partial(signal, response)

    def _error(self, signal: Signal, exc: grpc.RpcError) -> Exception:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details = self._scrub(exc.details() or "")  # type: ignore[attr-defined]
        where = f"OTLP/gRPC {signal} export to {self._settings.endpoint}: {code.name}"
        if details:
            where += f" ({details})"
        if code in _AUTH_CODES:
            return SinkAuthError(f"{where}: the backend refused the credentials; check TELEMETRY_OTLP_TOKEN")
        if code in _PERMANENT_CODES:
            return Rejected(where)
        retry_after = _grpc_retry_after(exc)
        if retry_after is not None:
            retry_after = min(retry_after, self._max_retry_after)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return SinkUnavailable(f"{where}: no OTLP {signal} service at this endpoint; check otlp.endpoint")
        if code in _RETRYABLE_CODES or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None):
            return SinkUnavailable(where, retry_after=retry_after)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than" in details:
            return TooLarge(where)
        return Failed(where, retry_after)

    def close(self) -> None:
        self._channel.close()


def _channel(settings: SignalSettings) -> grpc.Channel:
    target = settings.target
    compression = grpc.Compression.Gzip if settings.compression == "gzip" else grpc.Compression.NoCompression
    options = [
        ("grpc.primary_user_agent", USER_AGENT),
        # While reconnecting, calls fail at once; gRPC's default backoff grows to 120 s, which
        # would hold export back long after the backend is up again. The daemon paces retries.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
    ]
    if settings.tls:
        root = _read(settings.certificate_file)
        key, chain = _read(settings.client_key_file), _read(settings.client_certificate_file)
        credentials = grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)
        return grpc.secure_channel(target, credentials, options=options, compression=compression)
    return grpc.insecure_channel(target, options=options, compression=compression)


def _read(path: Optional[str]) -> Optional[bytes]:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def _grpc_retry_after(exc: grpc.RpcError) -> Optional[float]:
    """The ``RetryInfo`` delay in the ``grpc-status-details-bin`` trailer, if any."""
    trailers = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


_Response = tuple[int, dict[str, str], bytes]  # status, headers (lower-case names), body
_RoundTrip = tuple[int, dict[str, str], bytes, bool]  # ... and whether the connection stays usable


class HttpTransport:
    """POST the signal's URL with ``application/x-protobuf`` over kept-alive connections.

    Exports may run at once (batches in flight): each takes an idle connection
    or opens one, and gives it back for the next when the server keeps it open.
    """

    def __init__(self, settings: SignalSettings, max_retry_after: float) -> None:
        self._settings = settings
        self._max_retry_after = max_retry_after
        self._scrub = _Scrubber(settings.headers)
        parts = urlsplit(settings.endpoint)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if settings.tls else 80)
        self._path = parts.path or "/"
        self._headers = {
            **settings.headers,
            "content-type": "application/x-protobuf",
            "user-agent": USER_AGENT,
        }
        if settings.compression == "gzip":
            self._headers["content-encoding"] = "gzip"
        self._ssl = None
        if settings.tls:
            self._ssl = ssl.create_default_context(cafile=settings.certificate_file)
            if settings.client_certificate_file:
                self._ssl.load_cert_chain(settings.client_certificate_file, settings.client_key_file)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def export(self, signal: Signal, payload: bytes) -> ExportResult:
        body = gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0) if self._settings.compression == "gzip" else payload
        url = self._settings.endpoint
        status, headers, data = self._post(signal, url, body)
        if 200 <= status < 300:
            return _partial(signal, _parse_response(signal, data))
        message = self._scrub(_status_message(data))
        where = f"OTLP/HTTP {signal} export to {url}: HTTP {status}" + (f" ({message})" if message else "")
        if status in (401, 403):
            raise SinkAuthError(f"{where}: the backend refused the credentials; check TELEMETRY_OTLP_TOKEN")
        if status in _WRONG_ENDPOINT_HTTP:
            raise SinkUnavailable(f"{where}: no OTLP receiver at this URL; check otlp.endpoint")
        if status == 413:
            raise TooLarge(where)
        retry_after = _parse_retry_after(headers.get("retry-after"))
        if retry_after is not None:
            retry_after = min(retry_after, self._max_retry_after)
        if status in _RETRYABLE_HTTP:
            raise SinkUnavailable(where, retry_after=retry_after)
        if 400 <= status < 500 and status != 408:  # 408: the request timed out, not bad data
            raise Rejected(where)
        raise Failed(where, retry_after)

    def _post(self, signal: Signal, url: str, body: bytes) -> _Response:
        connection, reused = self._checkout()
        try:
            reply = self._round_trip(connection, body)
        except _STALE_CONNECTION as exc:
            connection.close()
            if not reused:
                raise SinkUnavailable(f"OTLP/HTTP {signal} export to {url} failed: {exc!r}") from None
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise SinkUnavailable(f"OTLP/HTTP {signal} export to {url} failed: {exc!r}") from None
        else:
            return self._checkin(connection, reply)
        # The kept-alive connection had gone stale: one more try on a fresh one.
        connection = self._connect()
        try:
            return self._checkin(connection, self._round_trip(connection, body))
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise SinkUnavailable(f"OTLP/HTTP {signal} export to {url} failed: {exc!r}") from None

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle kept-alive connection (True) or a new one (False)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _checkin(self, connection: http.client.HTTPConnection, reply: _RoundTrip) -> _Response:
        status, headers, data, reusable = reply
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(connection)
                return status, headers, data
        connection.close()
        return status, headers, data

    def _connect(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._settings.timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._settings.timeout)

    def _round_trip(self, connection: http.client.HTTPConnection, body: bytes) -> _RoundTrip:
        """(status, headers, body, whether the connection can serve the next request)."""
        connection.request("POST", self._path, body=body, headers=self._headers)
        response = connection.getresponse()
        # A backend's reply is never trusted to be small: read a bounded prefix only.
        data = response.read(MAX_RESPONSE_BYTES + 1)
        headers = {name.lower(): value for name, value in response.getheaders()}
        # The rest of an oversized body is never read: such a connection is dropped.
        reusable = not response.will_close and len(data) <= MAX_RESPONSE_BYTES
        return response.status, headers, data[:MAX_RESPONSE_BYTES], reusable

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _parse_response(signal: Signal, data: bytes) -> Any:
    response_type = _SERVICES[signal][2]
    try:
        return response_type.FromString(data)
    except DecodeError:
        # A success whose body is not the protobuf response (some proxies): nothing partial to report.
        return response_type()


def _status_message(data: bytes) -> str:
    """The ``google.rpc.Status`` message of an error body, else its text."""
    if not data:
        return ""
    try:
        status = status_pb2.Status.FromString(data)
        if status.message:
            return status.message
    except DecodeError:
        pass
    return data.decode("utf-8", "replace").strip()


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
