"""An independent OTLP/gRPC receiver: the generated opentelemetry-proto services, nothing of ours.

Deliberately separate from ``tests/otlp_backend.py`` (whose quirks the sink
might have learnt): each request is kept as the generated class parsed it,
and the checks a backend such as Dash0 makes are left to the tests
(:mod:`tests.support.otlp_checks`). ``down()`` closes the port (a real
outage: connections refused), ``up()`` serves again on the same port;
``fail(code)`` answers every request with a gRPC status instead.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any, Callable, Optional

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

__all__ = ["Receiver"]


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.logs: list[logs_service_pb2.ExportLogsServiceRequest] = []
        self.traces: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.refused = 0  # requests answered with the failure status
        self._failure: Optional[grpc.StatusCode] = None
        self._lock = threading.Lock()
        self._server: Optional[grpc.Server] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self, pki: Optional[Any] = None) -> "Receiver":
        """Serve (again) on the port; with ``pki`` (tests.tls.Pki) over TLS requiring a client certificate."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), server)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), server)
        if pki is None:
            self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            credentials = grpc.ssl_server_credentials(
                [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
                root_certificates=pki.ca_cert.read_bytes(),
                require_client_auth=True,
            )
            self.port = server.add_secure_port(f"localhost:{self.port}", credentials)
        server.start()
        self._server = server
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def fail(self, code: Optional[grpc.StatusCode]) -> None:
        self._failure = code

    def _take(self, into: list[Any], request: Any, context: grpc.ServicerContext) -> None:
        failure = self._failure
        if failure is not None:
            with self._lock:
                self.refused += 1
            context.abort(failure, "receiver told to fail")
        with self._lock:
            into.append(request)

    # -- what arrived -------------------------------------------------------------------------------

    def log_records(self) -> list[Any]:
        with self._lock:
            return [r for req in self.logs for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]

    def spans(self) -> list[Any]:
        with self._lock:
            return [s for req in self.traces for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def metric_points(self) -> list[tuple[Any, Any, Any, Any]]:
        """(resource, scope, metric, point) for every data point."""
        with self._lock:
            requests = list(self.metrics)
        points = []
        for request in requests:
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        data = metric.histogram if metric.HasField("histogram") else metric.sum
                        points.extend((rm.resource, sm.scope, metric, point) for point in data.data_points)
        return points


class _Service:
    def __init__(self, receiver: Receiver, pick: Callable[[Receiver], list[Any]], response: Any) -> None:
        self._receiver = receiver
        self._pick = pick
        self._response = response

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (generated name)
        self._receiver._take(self._pick(self._receiver), request, context)
        return self._response()


class _Logs(_Service, logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        super().__init__(receiver, lambda r: r.logs, logs_service_pb2.ExportLogsServiceResponse)


class _Traces(_Service, trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        super().__init__(receiver, lambda r: r.traces, trace_service_pb2.ExportTraceServiceResponse)


class _Metrics(_Service, metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: Receiver) -> None:
        super().__init__(receiver, lambda r: r.metrics, metrics_service_pb2.ExportMetricsServiceResponse)
