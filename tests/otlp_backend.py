"""A real OTLP receiver for tests: gRPC and HTTP/protobuf, checking credentials like Dash0.

The gRPC side implements the three collector services from the
``opentelemetry-proto`` generated code; the HTTP side serves ``/v1/logs``,
``/v1/traces`` and ``/v1/metrics`` (protobuf bodies, gzip accepted) on
``http.server``. Both check ``Authorization: Bearer <token>`` (UNAUTHENTICATED
/ 401 otherwise), record the ``Dash0-Dataset`` header and keep every accepted
request for assertions. :meth:`OtlpBackend.fail` switches either side to a
failure for a while or until :meth:`OtlpBackend.recover`.

Use the ``otlp_backend`` fixture (import it into the test module).
"""

from __future__ import annotations

import gzip
import http.server
import socket
import ssl
import threading
import time
from concurrent import futures
from typing import Any, Callable, Iterator, Literal, NamedTuple, Optional

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration as ProtoDuration
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

from tests.tls import Pki

__all__ = ["OtlpBackend", "Received", "Failure", "attributes", "otlp_backend", "TOKEN", "DATASET"]

TOKEN = "test-token-5e2b7f"
DATASET = "test-dataset"

Signal = Literal["logs", "traces", "metrics"]
FailureKind = Literal[
    "unavailable", "throttled", "unauthenticated", "forbidden", "invalid", "slow", "partial", "internal", "too_large"
]

_REQUESTS: dict[Signal, Any] = {
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}
_RESPONSES: dict[Signal, Any] = {
    "logs": logs_service_pb2.ExportLogsServiceResponse,
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
}
_PARTIAL_FIELDS = {"logs": "rejected_log_records", "traces": "rejected_spans", "metrics": "rejected_data_points"}

# kind -> (gRPC status, HTTP status)
_STATUSES: dict[str, tuple[grpc.StatusCode, int]] = {
    "unavailable": (grpc.StatusCode.UNAVAILABLE, 503),
    "throttled": (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    "unauthenticated": (grpc.StatusCode.UNAUTHENTICATED, 401),
    "forbidden": (grpc.StatusCode.PERMISSION_DENIED, 403),
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, 400),
    "internal": (grpc.StatusCode.INTERNAL, 500),
    # As grpc servers say it of a message over their limit; HTTP: 413 Payload Too Large.
    "too_large": (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
}
_RECORDS = {"logs": ("resource_logs", "scope_logs", "log_records"), "traces": ("resource_spans", "scope_spans", "spans")}


class Received(NamedTuple):
    """One accepted request."""

    signal: Signal
    transport: Literal["grpc", "http"]
    headers: dict[str, str]  # lower-case names
    request: Any  # the parsed Export*ServiceRequest
    at: float  # time.monotonic() when it arrived


class Attempt(NamedTuple):
    """Every request, accepted or not, with the status it got."""

    signal: Signal
    transport: Literal["grpc", "http"]
    status: str  # "OK" or the failure kind / "bad_token"
    headers: dict[str, str]


class Failure(NamedTuple):
    kind: FailureKind
    until: Optional[float]  # time.monotonic() deadline; None until recover()
    retry_after: Optional[float]
    delay: float  # slow: seconds before answering
    signals: frozenset[str]
    rejected: int  # partial: items reported as rejected; too_large: most records a request may hold


def attributes(pairs: Any) -> dict[str, Any]:
    """KeyValue list to a dict of Python values (arrays as lists)."""
    return {pair.key: _value(pair.value) for pair in pairs}


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


class OtlpBackend:
    """gRPC + HTTP OTLP receiver on loopback with switchable failures."""

    def __init__(
        self, *, token: Optional[str] = TOKEN, tls: Optional[Pki] = None, grpc_port: int = 0, http_port: int = 0
    ) -> None:
        """``tls``: serve both sides over TLS with this test PKI's server certificate.
        Ports 0 pick free ones; give the old ports to bring a stopped backend back."""
        self.token = token
        self.tls = tls
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.received: list[Received] = []
        self.attempts: list[Attempt] = []
        self._failure: Optional[Failure] = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._grpc: Optional[grpc.Server] = None
        self._http: Optional[http.server.ThreadingHTTPServer] = None
        self._connections: set[socket.socket] = set()
        self._handling = 0
        self.most_at_once = 0  # requests handled at the same time, at most (exports in flight)
        self.http_connections = 0  # TCP connections the HTTP receiver accepted

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "OtlpBackend":
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="otlp-grpc"))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), self._grpc)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), self._grpc)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self), self._grpc)
        if self.tls is None:
            self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        else:
            key, cert = self.tls.server_key.read_bytes(), self.tls.server_cert.read_bytes()
            credentials = grpc.ssl_server_credentials([(key, cert)])
            self.grpc_port = self._grpc.add_secure_port(f"127.0.0.1:{self.grpc_port}", credentials)
        self._grpc.start()
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", self.http_port), _http_handler(self))
        self._http.daemon_threads = True
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="otlp-http", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop(grace=0).wait(5)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            # Kept-alive connections have their own handler threads: end them too,
            # or a "stopped" backend would keep answering on them.
            with self._lock:
                connections, self._connections = self._connections, set()
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by the client
                connection.close()

    @property
    def grpc_endpoint(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.http_port}"

    @property
    def _scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def endpoint(self, protocol: str) -> str:
        return self.grpc_endpoint if protocol == "grpc" else self.http_endpoint

    # -- failures ----------------------------------------------------------

    def fail(
        self,
        kind: FailureKind,
        *,
        duration: Optional[float] = None,
        retry_after: Optional[float] = None,
        delay: float = 0.0,
        signals: tuple[str, ...] = ("logs", "traces", "metrics"),
        rejected: int = 1,
    ) -> None:
        """Fail requests of ``signals`` with ``kind`` for ``duration`` seconds (None: until recover)."""
        until = None if duration is None else time.monotonic() + duration
        with self._lock:
            self._failure = Failure(kind, until, retry_after, delay, frozenset(signals), rejected)

    def recover(self) -> None:
        with self._lock:
            self._failure = None

    def _active_failure(self, signal: str) -> Optional[Failure]:
        with self._lock:
            failure = self._failure
            if failure is None or signal not in failure.signals:
                return None
            if failure.until is not None and time.monotonic() >= failure.until:
                self._failure = None
                return None
            return failure

    # -- assertions --------------------------------------------------------

    def requests(self, signal: Signal) -> list[Received]:
        with self._lock:
            return [item for item in self.received if item.signal == signal]

    def log_records(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, LogRecord) for every record received."""
        return self._items("logs", "resource_logs", "scope_logs", "log_records")

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, Span) for every span received."""
        return self._items("traces", "resource_spans", "scope_spans", "spans")

    def _items(self, signal: Signal, groups: str, scopes: str, items: str) -> list[tuple[dict[str, Any], Any]]:
        return [
            (attributes(group.resource.attributes), item)
            for received in self.requests(signal)
            for group in getattr(received.request, groups)
            for scope in getattr(group, scopes)
            for item in getattr(scope, items)
        ]

    def metrics(self) -> list[tuple[dict[str, Any], Any, Any]]:
        """(resource attributes, scope, Metric) for every metric received."""
        return [
            (attributes(resource_metrics.resource.attributes), scope_metrics.scope, metric)
            for item in self.requests("metrics")
            for resource_metrics in item.request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
        ]

    def event_ids(self) -> list[str]:
        """The ``event.id`` of every log record received (duplicates kept)."""
        return [attributes(record.attributes)["event.id"] for _, record in self.log_records()]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll ``condition`` after each request until true or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                self._lock.release()
                try:
                    if condition():
                        return True
                finally:
                    self._lock.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.2))

    # -- request handling (both transports) --------------------------------

    def handle(self, signal: Signal, transport: Literal["grpc", "http"], headers: dict[str, str], request: Any) -> Any:
        """Check, record and answer one request; raises _Failed for an error reply."""
        with self._lock:
            self._handling += 1
            self.most_at_once = max(self.most_at_once, self._handling)
        try:
            return self._handle(signal, transport, headers, request)
        finally:
            with self._lock:
                self._handling -= 1

    def _handle(self, signal: Signal, transport: Literal["grpc", "http"], headers: dict[str, str], request: Any) -> Any:
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            self._attempt(signal, transport, "bad_token", headers)
            raise _Failed("unauthenticated", "missing or wrong bearer token", None)
        failure = self._active_failure(signal)
        if failure is not None and failure.kind == "slow":
            self._stopping.wait(failure.delay)
        elif failure is not None and failure.kind == "too_large":
            if _record_count(signal, request) > failure.rejected:
                self._attempt(signal, transport, failure.kind, headers)
                raise _Failed(failure.kind, "received message larger than max", None)
        elif failure is not None and failure.kind != "partial":
            self._attempt(signal, transport, failure.kind, headers)
            raise _Failed(failure.kind, f"test backend failing: {failure.kind}", failure.retry_after)
        response = _RESPONSES[signal]()
        if failure is not None and failure.kind == "partial":
            setattr(response.partial_success, _PARTIAL_FIELDS[signal], failure.rejected)
            response.partial_success.error_message = "test backend dropped some items"
        with self._changed:
            self.received.append(Received(signal, transport, headers, request, time.monotonic()))
            self.attempts.append(Attempt(signal, transport, "OK", headers))
            self._changed.notify_all()
        return response

    def _attempt(self, signal: Signal, transport: Literal["grpc", "http"], status: str, headers: dict[str, str]) -> None:
        with self._changed:
            self.attempts.append(Attempt(signal, transport, status, headers))
            self._changed.notify_all()


def _record_count(signal: Signal, request: Any) -> int:
    if signal not in _RECORDS:
        return sum(len(m.metrics) for rm in request.resource_metrics for m in rm.scope_metrics)
    groups, scopes, items = _RECORDS[signal]
    return sum(len(getattr(scope, items)) for group in getattr(request, groups) for scope in getattr(group, scopes))


class _Failed(Exception):
    def __init__(self, kind: str, message: str, retry_after: Optional[float]) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after


def _rpc_status(failure: _Failed) -> status_pb2.Status:
    code, _ = _STATUSES[failure.kind]
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=failure.message)
    if failure.retry_after is not None:
        seconds = int(failure.retry_after)
        delay = ProtoDuration(seconds=seconds, nanos=int((failure.retry_after - seconds) * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


class _Servicer:
    signal: Signal

    def __init__(self, backend: OtlpBackend) -> None:
        self.backend = backend

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (generated name)
        headers = {key.lower(): value for key, value in context.invocation_metadata() if isinstance(value, str)}
        try:
            return self.backend.handle(self.signal, "grpc", headers, request)
        except _Failed as failure:
            status = _rpc_status(failure)
            context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            context.abort(_STATUSES[failure.kind][0], failure.message)


class _LogsServicer(_Servicer, logs_service_pb2_grpc.LogsServiceServicer):
    signal = "logs"


class _TraceServicer(_Servicer, trace_service_pb2_grpc.TraceServiceServicer):
    signal = "traces"


class _MetricsServicer(_Servicer, metrics_service_pb2_grpc.MetricsServiceServicer):
    signal = "metrics"


def _http_handler(backend: OtlpBackend) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real collectors do

        def setup(self) -> None:
            super().setup()
            with backend._lock:
                backend._connections.add(self.connection)
                backend.http_connections += 1

        def finish(self) -> None:
            with backend._lock:
                backend._connections.discard(self.connection)
            super().finish()

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            signal = self.path.rsplit("/", 1)[-1]
            if self.path not in ("/v1/logs", "/v1/traces", "/v1/metrics"):
                self._reply(404, b"not found", "text/plain")
                return
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self._reply(415, b"expected application/x-protobuf", "text/plain")
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            headers = {key.lower(): value for key, value in self.headers.items()}
            try:
                request = _REQUESTS[signal].FromString(body)  # type: ignore[index]
            except DecodeError:
                self._reply(400, b"body is not a protobuf request", "text/plain")
                return
            try:
                response = backend.handle(signal, "http", headers, request)  # type: ignore[arg-type]
            except _Failed as failure:
                extra = {} if failure.retry_after is None else {"Retry-After": str(round(failure.retry_after))}
                self._reply(_STATUSES[failure.kind][1], _rpc_status(failure).SerializeToString(), **extra)
                return
            self._reply(200, response.SerializeToString())

        def _reply(self, status: int, body: bytes, content_type: str = "application/x-protobuf", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output clean
            pass

    return Handler


@pytest.fixture
def otlp_backend() -> Iterator[OtlpBackend]:
    """A started backend on loopback expecting ``Bearer TOKEN``; stopped afterwards."""
    backend = OtlpBackend().start()
    yield backend
    backend.stop()

