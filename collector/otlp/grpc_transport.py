"""OTLP over gRPC: unary calls of the generated services, our serialized bytes sent as they are."""

from __future__ import annotations

from typing import Any, Callable, Optional

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from collector.otlp.config import Signal, SignalSettings
from collector.otlp.transport import (
    SERVICES,
    USER_AGENT,
    ExportResult,
    Failed,
    Rejected,
    Scrubber,
    TooLarge,
    partial_success,
)
from collector.sinks import SinkAuthError, SinkUnavailable

__all__ = ["GrpcTransport"]

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

class GrpcTransport:
    """Unary calls on the generated services' method paths, sending our bytes as they are."""

    def __init__(self, settings: SignalSettings, max_retry_after: float) -> None:
        self._settings = settings
        self._max_retry_after = max_retry_after
        self._scrub = Scrubber(settings.headers)
        self._channel = _channel(settings)
        self._metadata = tuple(settings.headers.items())
        self._calls: dict[Signal, Callable[..., Any]] = {}
        for signal, (module, service_name, response_type) in SERVICES.items():
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
        return partial_success(signal, response)

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
