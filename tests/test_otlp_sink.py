"""OtlpSink against the real test backend over gRPC and HTTP: delivery and failure mapping."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import msgspec
import pytest
import structlog

from collector.bench.otlp_encoding import sample_events
from collector.config import dec_hook
from collector.embedded import free_port
from collector.otlp.config import OtlpConfig
from collector.otlp.sink import OtlpSink
from collector.otlp.spans import makes_span
from collector.records import Record
from collector.sinks import Sink, SinkAuthError, SinkRejected, SinkUnavailable
from emitters.events import Event, encode
from tests.otlp_backend import DATASET, TOKEN, OtlpBackend, attributes, otlp_backend  # noqa: F401 (fixture)
from tests.tls import make_test_pki


def as_records(events: list[Event]) -> list[Record]:
    return [
        Record("errors" if event.type == "error" else "events", f"{1700000000000 + n}-0", event, encode(event))
        for n, event in enumerate(events)
    ]


@pytest.fixture(params=["grpc", "http"])
def protocol(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_sink(otlp_backend: OtlpBackend, protocol: str) -> Iterator[Any]:
    sinks: list[OtlpSink] = []

    def make(**fields: Any) -> OtlpSink:
        fields.setdefault("endpoint", otlp_backend.endpoint(protocol))
        fields.setdefault("token", TOKEN)
        fields.setdefault("dataset", DATASET)
        config = msgspec.convert({"protocol": protocol, **fields}, OtlpConfig, dec_hook=dec_hook)
        sink = OtlpSink(config.resolve({}), collector_instance="test-collector")
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


@pytest.fixture
def batch() -> list[Record]:
    return as_records(sample_events(200, seed=3))


class TestDelivery:
    def test_is_a_sink(self, make_sink: Any) -> None:
        """OtlpSink satisfies the shared Sink protocol under the name otlp."""
        sink = make_sink()
        assert isinstance(sink, Sink)
        assert sink.name == "otlp"

    def test_every_signal_arrives_with_headers(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record], protocol: str
    ) -> None:
        """Each event is a log record, spans and metrics arrive, and every request carries the headers."""
        sink = make_sink(headers={"X-Tenant": "acme"})
        sink.write(batch)
        sink.close()  # closes the metric interval and exports it
        assert sorted(otlp_backend.event_ids()) == sorted(record.event.id for record in batch)
        span_events = [record.event for record in batch if makes_span(record.event)]
        assert sorted(span.span_id.hex() for _, span in otlp_backend.spans()) == sorted(e.id[:16] for e in span_events)
        names = {metric.name for _, _, metric in otlp_backend.metrics()}
        assert {"gen_ai.server.request.duration", "mlx.tokens.generated"} <= names
        assert "gen_ai.client.token.usage" not in names  # server-side counts are no client metric by default
        assert {item.signal for item in otlp_backend.received} == {"logs", "traces", "metrics"}
        for item in otlp_backend.received:
            assert item.transport == protocol
            assert item.headers["authorization"] == f"Bearer {TOKEN}"
            assert item.headers["dash0-dataset"] == DATASET
            assert item.headers["x-tenant"] == "acme"
        assert sink.stats.log_records == len(batch)
        assert sink.stats.spans == len(span_events)

    def test_resource_attributes_and_trace_ids(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """Records keep the event's trace id and sit under their process's resource."""
        make_sink(deployment_environment="test").write(batch)
        by_id = {record.event.id: record.event for record in batch}
        for resource, record in otlp_backend.log_records():
            event = by_id[attributes(record.attributes)["event.id"]]
            assert record.trace_id.hex() == event.trace_id
            assert resource["service.name"] == event.service
            assert resource["host.name"] == event.host
            assert resource["process.pid"] == event.pid
            assert resource["deployment.environment.name"] == "test"

    @pytest.mark.parametrize("compression", ["gzip", "none"])
    def test_http_compression(self, otlp_backend: OtlpBackend, batch: list[Record], compression: str) -> None:
        """HTTP bodies are gzipped (Content-Encoding: gzip) unless compression is none."""
        sink = OtlpSink(
            OtlpConfig(endpoint=otlp_backend.http_endpoint, protocol="http", token=TOKEN, compression=compression)
            .resolve({})
        )
        sink.write(batch)
        sink.close()
        encodings = {item.headers.get("content-encoding") for item in otlp_backend.received}
        assert encodings == ({"gzip"} if compression == "gzip" else {None})
        assert len(otlp_backend.event_ids()) == len(batch)

    def test_http_connection_is_kept_alive(self, otlp_backend: OtlpBackend) -> None:
        """Exports over HTTP reuse kept-alive connections: no TCP (or TLS) set-up per request.

        A batch sends its signals at once, so up to one connection per signal is opened, never more.
        """
        sink = OtlpSink(OtlpConfig(endpoint=otlp_backend.http_endpoint, protocol="http", token=TOKEN).resolve({}))
        for seed in range(10):
            sink.write(as_records(sample_events(50, seed=seed)))
        sink.close()
        assert len(otlp_backend.requests("logs")) == 10
        assert 1 <= otlp_backend.http_connections <= 3

    def test_large_batch_is_split(self, make_sink: Any, otlp_backend: OtlpBackend) -> None:
        """A batch over max_request_bytes goes out as several requests, every record once."""
        records = as_records(sample_events(2000, seed=4))
        make_sink(max_request_bytes=64 * 1024).write(records)
        assert len(otlp_backend.requests("logs")) > 3
        assert sorted(otlp_backend.event_ids()) == sorted(record.event.id for record in records)

    def test_signal_subset(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """signals = ["logs"] sends no traces or metrics."""
        make_sink(signals=["logs"]).write(batch)
        assert {item.signal for item in otlp_backend.received} == {"logs"}

    def test_wrong_http_path_is_retried_not_dead_lettered(self, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """A 404 means a wrong endpoint URL: transient with a hint, so entries stay pending."""
        sink = OtlpSink(OtlpConfig(endpoint=f"{otlp_backend.http_endpoint}/otlp", protocol="http", token=TOKEN).resolve({}))
        with pytest.raises(SinkUnavailable, match="HTTP 404.*check otlp.endpoint"):
            sink.write(batch)
        sink.close()


class TestTls:
    @pytest.fixture
    def tls_backend(self, tmp_path: Path) -> Iterator[OtlpBackend]:
        backend = OtlpBackend(tls=make_test_pki(tmp_path / "pki")).start()
        yield backend
        backend.stop()

    def test_https_endpoint_with_ca_file(self, tls_backend: OtlpBackend, batch: list[Record], protocol: str) -> None:
        """An https:// endpoint is TLS, verified against certificate_file."""
        assert tls_backend.tls is not None
        config = OtlpConfig(
            endpoint=tls_backend.endpoint(protocol),
            protocol=protocol,
            token=TOKEN,
            certificate_file=str(tls_backend.tls.ca_cert),
        )
        sink = OtlpSink(config.resolve({}))
        sink.write(batch)
        sink.close()
        assert len(tls_backend.event_ids()) == len(batch)

    def test_untrusted_certificate(self, tls_backend: OtlpBackend, batch: list[Record], protocol: str) -> None:
        """A server certificate the CA bundle does not vouch for: nothing is sent, the batch stays pending."""
        config = OtlpConfig(endpoint=tls_backend.endpoint(protocol), protocol=protocol, token=TOKEN, timeout=2)
        sink = OtlpSink(config.resolve({}))
        with pytest.raises(SinkUnavailable):
            sink.write(batch)
        sink.close()
        assert tls_backend.received == []


class TestTransientFailures:
    def test_unavailable_with_retry_after(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """UNAVAILABLE / 503 -> SinkUnavailable carrying the backend's RetryInfo / Retry-After."""
        otlp_backend.fail("unavailable", retry_after=7)
        with pytest.raises(SinkUnavailable) as caught:
            make_sink().write(batch)
        assert caught.value.retry_after == 7
        assert otlp_backend.received == []

    def test_retry_after_is_capped(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """A huge Retry-After is honoured only up to max_retry_after."""
        otlp_backend.fail("unavailable", retry_after=3600)
        with pytest.raises(SinkUnavailable) as caught:
            make_sink(max_retry_after="30s").write(batch)
        assert caught.value.retry_after == 30

    def test_throttled(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """RESOURCE_EXHAUSTED / 429 are transient."""
        otlp_backend.fail("throttled", retry_after=2)
        with pytest.raises(SinkUnavailable) as caught:
            make_sink().write(batch)
        assert caught.value.retry_after == 2

    def test_connection_refused(self, make_sink: Any, batch: list[Record]) -> None:
        """Nothing listening: transient, no hint."""
        with pytest.raises(SinkUnavailable) as caught:
            make_sink(endpoint=f"http://127.0.0.1:{free_port()}").write(batch)
        assert caught.value.retry_after is None

    def test_backend_down_then_back(self, otlp_backend: OtlpBackend, batch: list[Record], protocol: str) -> None:
        """The receiver goes away (connections refused) and comes back on its port: the next
        retry delivers within seconds; gRPC's reconnect backoff does not hold it back."""
        sink = OtlpSink(
            OtlpConfig(endpoint=otlp_backend.endpoint(protocol), protocol=protocol, token=TOKEN).resolve({})
        )
        sink.write(batch[:10])
        otlp_backend.stop()
        for _ in range(3):  # a few failed attempts push gRPC's channel into reconnect backoff
            with pytest.raises(SinkUnavailable):
                sink.write(batch[10:])
        revived = OtlpBackend(grpc_port=otlp_backend.grpc_port, http_port=otlp_backend.http_port).start()
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    sink.write(batch[10:])
                    break
                except SinkUnavailable:
                    assert time.monotonic() < deadline, "no delivery within 15 s of the backend's return"
                    revived.wait_for(lambda: False, timeout=0.5)
            assert sorted(revived.event_ids()) == sorted(record.event.id for record in batch[10:])
        finally:
            sink.close()
            revived.stop()

    def test_timeout(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """A backend slower than the timeout: the write gives up with SinkUnavailable."""
        otlp_backend.fail("slow", delay=5.0)
        started = time.monotonic()
        with pytest.raises(SinkUnavailable):
            make_sink(timeout="300ms").write(batch)
        assert time.monotonic() - started < 5.0

    def test_retry_sends_only_what_failed(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """Logs accepted before traces failed are not sent again when the batch is retried."""
        sink = make_sink()
        otlp_backend.fail("unavailable", signals=("traces",))
        with pytest.raises(SinkUnavailable):
            sink.write(batch)
        assert otlp_backend.requests("traces") == []
        otlp_backend.recover()
        sink.write(batch)
        assert len(otlp_backend.requests("logs")) == 1
        assert len(otlp_backend.requests("traces")) == 1
        assert sorted(otlp_backend.event_ids()) == sorted(record.event.id for record in batch)
        assert sink.stats.log_records == len(batch)

    def test_one_point_per_series_per_interval(self, make_sink: Any, otlp_backend: OtlpBackend) -> None:
        """Batches within one interval make one point per series; intervals follow each other without overlap."""
        sink = make_sink(metric_export_interval="400ms")
        for seed in (1, 2, 3, 4):
            sink.write(as_records(sample_events(50, seed=seed)))
            otlp_backend.wait_for(lambda: False, timeout=0.25)
        sink.close()
        points: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        for resource, scope, metric in otlp_backend.metrics():
            data = metric.histogram if metric.HasField("histogram") else metric.sum
            for point in data.data_points:
                series = (resource["service.instance.id"], metric.name, tuple(sorted(attributes(point.attributes).items())))
                points.setdefault(series, []).append((point.start_time_unix_nano, point.time_unix_nano))
        assert points
        for series, spans in points.items():
            assert len(spans) == len(set(spans)), f"{series}: two points for one interval"
            ordered = sorted(spans)
            assert all(end <= start for (_, end), (start, _) in zip(ordered, ordered[1:])), f"{series}: overlap"
        assert len(otlp_backend.requests("metrics")) >= 2  # several intervals, not one per batch (4)
        assert len(otlp_backend.requests("metrics")) <= 4


class TestPermanentFailures:
    def test_invalid_rejects_the_whole_batch(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """INVALID_ARGUMENT / 400 on logs and traces -> SinkRejected with every record, tried once."""
        otlp_backend.fail("invalid")
        with pytest.raises(SinkRejected) as caught:
            make_sink().write(batch)
        assert caught.value.records == batch
        assert "INVALID_ARGUMENT" in caught.value.reason or "HTTP 400" in caught.value.reason
        assert sorted(attempt.signal for attempt in otlp_backend.attempts) == ["logs", "traces"]

    def test_rejected_traces_reject_only_span_records(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]
    ) -> None:
        """A 400 on spans dead-letters the records that made spans; logs and metrics are delivered."""
        otlp_backend.fail("invalid", signals=("traces",))
        with pytest.raises(SinkRejected) as caught:
            make_sink().write(batch)
        assert caught.value.records == [record for record in batch if makes_span(record.event)]
        assert len(otlp_backend.event_ids()) == len(batch)

    def test_rejected_metrics_are_counted_not_retried(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]
    ) -> None:
        """A 400 on an interval's metrics: its points are dropped, counted and logged; batches flow on."""
        otlp_backend.fail("invalid", signals=("metrics",))
        sink = make_sink()
        sink.write(batch)
        with structlog.testing.capture_logs() as logs:
            sink.close()
        assert sink.metrics is not None and sink.metrics.stats.points_dropped > 0
        assert any(entry["event"] == "otlp_metrics_dropped" for entry in logs)

    def test_http_500_forever_is_dead_lettered_after_bounded_tries(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]
    ) -> None:
        """INTERNAL / 500 is not retryable per the spec: max_attempts tries, then SinkRejected with the status."""
        otlp_backend.fail("internal", signals=("logs",))
        sink = make_sink(max_attempts=3)
        for attempt in (1, 2):
            with pytest.raises(SinkUnavailable, match=f"try {attempt} of 3"):
                sink.write(batch)
        with pytest.raises(SinkRejected) as caught:
            sink.write(batch)
        assert caught.value.records == batch
        assert "INTERNAL" in caught.value.reason or "HTTP 500" in caught.value.reason
        assert "after 3 tries" in caught.value.reason
        assert sum(1 for attempt in otlp_backend.attempts if attempt.signal == "logs") == 3
        with pytest.raises(SinkUnavailable, match="try 1 of 3"):  # the next batch is tried afresh
            sink.write(as_records(sample_events(5, seed=9)))
        assert sum(1 for attempt in otlp_backend.attempts if attempt.signal == "logs") == 4

    def test_exhausted_without_retry_info_is_bounded(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record], protocol: str
    ) -> None:
        """gRPC RESOURCE_EXHAUSTED without RetryInfo is not retried forever (with it, it is: test_throttled)."""
        if protocol != "grpc":
            pytest.skip("a gRPC status")
        otlp_backend.fail("throttled", signals=("logs",))
        sink = make_sink(max_attempts=2)
        with pytest.raises(SinkUnavailable):
            sink.write(batch)
        with pytest.raises(SinkRejected, match="RESOURCE_EXHAUSTED"):
            sink.write(batch)

    def test_too_large_splits_down_to_single_records(self, make_sink: Any, otlp_backend: OtlpBackend) -> None:
        """413 halves the request until it fits; every record arrives once, nothing is dead-lettered."""
        records = as_records(sample_events(40, seed=5))
        otlp_backend.fail("too_large", rejected=6, signals=("logs",))
        sink = make_sink()
        sink.write(records)
        assert sorted(otlp_backend.event_ids()) == sorted(record.event.id for record in records)
        assert sink.stats.split_requests >= 4
        assert all(len(item.request.resource_logs[0].scope_logs[0].log_records) <= 6 for item in otlp_backend.requests("logs"))

    def test_record_too_large_alone_is_the_only_one_dead_lettered(self, make_sink: Any, otlp_backend: OtlpBackend) -> None:
        """When even single records are refused as too large, each goes to the dead letters; a batch of one."""
        records = as_records(sample_events(3, seed=6))
        otlp_backend.fail("too_large", rejected=0, signals=("logs",))
        with pytest.raises(SinkRejected) as caught:
            make_sink().write(records)
        assert caught.value.records == records


class TestAuth:
    @pytest.mark.parametrize("kind", ["unauthenticated", "forbidden"])
    def test_refused_credentials(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record], kind: str
    ) -> None:
        """401/403 and UNAUTHENTICATED/PERMISSION_DENIED -> SinkAuthError with a clear message."""
        otlp_backend.fail(kind)  # type: ignore[arg-type]
        with pytest.raises(SinkAuthError, match="refused the credentials; check TELEMETRY_OTLP_TOKEN"):
            make_sink().write(batch)

    def test_wrong_token_never_shown(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """A wrong token is refused, and appears neither in the error nor in any log line."""
        secret = "wrong-token-9f8e7d"
        with structlog.testing.capture_logs() as logs:
            sink = make_sink(token=secret)
            with pytest.raises(SinkAuthError) as caught:
                sink.write(batch)
        assert secret not in str(caught.value)
        assert logs, "the sink logs its settings on start"
        assert secret not in repr(logs)
        assert {attempt.status for attempt in otlp_backend.attempts} == {"bad_token"}

    def test_backend_echo_is_scrubbed(self, otlp_backend: OtlpBackend, batch: list[Record], protocol: str) -> None:
        """Even if the backend echoes our credentials in its error, the message shows ***."""
        otlp_backend.token = "expected"
        sink = OtlpSink(
            OtlpConfig(endpoint=otlp_backend.endpoint(protocol), protocol=protocol, token="wrong token").resolve({})
        )
        with pytest.raises(SinkAuthError) as caught:
            sink.write(batch)
        sink.close()
        # The backend's message says "missing or wrong bearer token": "wrong token" is scrubbed.
        assert "wrong token" not in str(caught.value)


class TestPartialSuccess:
    def test_partial_success_is_logged_and_counted(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]
    ) -> None:
        """A success reply reporting dropped items is accepted, logged as a warning and counted."""
        otlp_backend.fail("partial", rejected=3, signals=("logs",))
        sink = make_sink()
        with structlog.testing.capture_logs() as logs:
            sink.write(batch)
        warnings = [entry for entry in logs if entry["event"] == "otlp_partial_success"]
        assert len(warnings) == 1
        assert warnings[0]["rejected"] == 3
        assert warnings[0]["signal"] == "logs"
        assert sink.stats.partially_rejected == 3

    def test_partial_success_message_is_logged_even_with_nothing_rejected(
        self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]
    ) -> None:
        """The spec: a partial_success with rejected = 0 but a message is a warning worth logging."""
        otlp_backend.fail("partial", rejected=0, signals=("logs",))
        with structlog.testing.capture_logs() as logs:
            make_sink().write(batch)
        (warning,) = [entry for entry in logs if entry["event"] == "otlp_partial_success"]
        assert warning["rejected"] == 0 and warning["backend_message"]


class TestProtocolDetails:
    def test_user_agent_names_the_version(self, make_sink: Any, otlp_backend: OtlpBackend, batch: list[Record]) -> None:
        """Every request says who sent it, with the version."""
        from collector.otlp.options import VERSION

        make_sink().write(batch)
        for item in otlp_backend.received:
            assert f"mlx-telemetry-collector/{VERSION}" in item.headers["user-agent"]

    def test_response_body_is_capped(self, batch: list[Record]) -> None:
        """A backend answering with an endless body: at most MAX_RESPONSE_BYTES are read, the error is short."""
        import http.server
        import threading

        from collector.otlp.transport import MAX_RESPONSE_BYTES

        class Flood(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(400)
                self.send_header("Content-Length", str(50 * MAX_RESPONSE_BYTES))
                self.end_headers()
                try:
                    self.wfile.write(b"x" * (50 * MAX_RESPONSE_BYTES))
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flood)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            sink = OtlpSink(
                OtlpConfig(endpoint=f"http://127.0.0.1:{server.server_port}", protocol="http", signals=["logs"]).resolve({})
            )
            with pytest.raises(SinkRejected) as caught:
                sink.write(batch)
            sink.close()
        finally:
            server.shutdown()
        assert len(caught.value.reason) < 1000
