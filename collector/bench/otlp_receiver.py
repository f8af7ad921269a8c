"""A minimal OTLP/HTTP receiver for the bench: accepts, counts log records, answers 200.

The test suite's receiver (tests/otlp_backend.py) checks credentials and injects
faults; the bench only needs a fast, local peer that really parses requests.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest


class OtlpReceiver:
    def __init__(self) -> None:
        receiver = self
        self.log_records = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as OTLP receivers (the OpenTelemetry Collector's, Dash0's) answer: an
            # HTTP/1.0 peer would make both exporters pay a TCP connect per request.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/logs":
                    request = ExportLogsServiceRequest.FromString(body)
                    count = sum(len(scope.log_records) for rl in request.resource_logs for scope in rl.scope_logs)
                    with receiver._lock:
                        receiver.log_records += count
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "OtlpReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
