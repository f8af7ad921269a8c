"""Every row of the README's OTLP environment-variable table, checked against the resolved settings.

The table is read from the README itself: a row without a case here, or a case
without its row, fails ``test_every_row_has_a_case``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from collector.otlp.config import OtlpConfig, OtlpSettings
from tests.tls import make_test_pki

README = Path(__file__).resolve().parent.parent / "README.md"


def table_rows() -> list[str]:
    text = README.read_text()
    table = text[text.index("<!-- otlp-env-table -->") : text.index("<!-- /otlp-env-table -->")]
    return re.findall(r"^\| `(OTEL_[A-Z_]+)` \|", table, flags=re.M)


def resolve(env: dict[str, str], **config: object) -> OtlpSettings:
    return OtlpConfig(**config).resolve(env)  # type: ignore[arg-type]


def endpoint(_: Path) -> None:
    settings = resolve({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert settings.enabled
    assert settings.per_signal["traces"].endpoint == "https://otlp.example:4318/v1/traces"
    grpc = resolve({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"})
    assert grpc.per_signal["logs"].target == "collector:4317" and not grpc.per_signal["logs"].tls


def per_signal_endpoint(signal: str) -> Callable[[Path], None]:
    def check(_: Path) -> None:
        env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://all:4318",
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT": "https://only.example/custom/path",
        }
        settings = resolve(env)
        assert settings.per_signal[signal].endpoint == "https://only.example/custom/path"  # used as given
        others = [name for name in ("logs", "traces", "metrics") if name != signal]
        assert all(settings.per_signal[other].endpoint == f"http://all:4318/v1/{other}" for other in others)
        alone = resolve({f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT": "http://x:4317"})
        assert alone.enabled  # a per-signal endpoint alone switches export on

    return check


def protocol(_: Path) -> None:
    assert resolve({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}).protocol == "http"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        resolve({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def headers(_: Path) -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=x%20y", "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=2"}
    settings = resolve(env)
    assert settings.per_signal["logs"].headers == {"a": "1", "b": "x y"}
    assert settings.per_signal["metrics"].headers == {"a": "2", "b": "x y"}


def compression(_: Path) -> None:
    settings = resolve({"OTEL_EXPORTER_OTLP_COMPRESSION": "none", "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION": "gzip"})
    assert settings.per_signal["logs"].compression == "gzip"
    assert settings.per_signal["traces"].compression == "none"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"):
        resolve({"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "zstd"})


def timeout(_: Path) -> None:
    settings = resolve({"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "500"})
    assert settings.per_signal["logs"].timeout == 2.5
    assert settings.per_signal["traces"].timeout == 0.5
    assert resolve({}, timeout=3).per_signal["traces"].timeout == 3  # config wins


def certificate(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    settings = resolve({"OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca_cert), "OTEL_EXPORTER_OTLP_ENDPOINT": "https://h:4317"})
    assert settings.per_signal["metrics"].certificate_file == str(pki.ca_cert)
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE: cannot read"):
        resolve({"OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE": str(tmp_path / "missing.pem")})


def client_key(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    env = {"OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key), "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert)}
    target = resolve(env).per_signal["logs"]
    assert (target.client_key_file, target.client_certificate_file) == (str(pki.client_key), str(pki.client_cert))
    with pytest.raises(ValueError, match="mTLS needs both"):
        resolve({"OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key)})


def insecure(_: Path) -> None:
    assert resolve({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}).per_signal["logs"].tls  # default: TLS
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317", "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true"}
    settings = resolve(env)
    assert not settings.per_signal["traces"].tls and settings.per_signal["logs"].tls
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_INSECURE: expected true or false"):
        resolve({"OTEL_EXPORTER_OTLP_INSECURE": "maybe"})


def resource_attributes(_: Path) -> None:
    settings = resolve({"OTEL_RESOURCE_ATTRIBUTES": "service.version=1.2.3,team=ml%20infra,k8s.pod.name=p"},
                       resource_attributes={"k8s.pod.name": "from-config"})
    assert settings.resource_attributes == {"service.version": "1.2.3", "team": "ml infra", "k8s.pod.name": "from-config"}


def metric_interval(_: Path) -> None:
    assert resolve({}).metric_export_interval == 60
    assert resolve({"OTEL_METRIC_EXPORT_INTERVAL": "15000"}).metric_export_interval == 15
    assert resolve({"OTEL_METRIC_EXPORT_INTERVAL": "15000"}, metric_export_interval=5).metric_export_interval == 5
    with pytest.raises(ValueError, match="OTEL_METRIC_EXPORT_INTERVAL"):
        resolve({"OTEL_METRIC_EXPORT_INTERVAL": "soon"})


def temporality(_: Path) -> None:
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    assert resolve({}).temporality == "delta"
    assert resolve({name: "Cumulative"}).temporality == "cumulative"
    assert resolve({name: "lowmemory"}).temporality == "delta"
    with pytest.raises(ValueError, match=name):
        resolve({name: "sometimes"})


def semconv(_: Path) -> None:
    assert not resolve({}).latest_genai
    assert resolve({"OTEL_SEMCONV_STABILITY_OPT_IN": "http,gen_ai_latest_experimental"}).latest_genai


CASES: dict[str, Callable[[Path], None]] = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": per_signal_endpoint("logs"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": per_signal_endpoint("traces"),
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": per_signal_endpoint("metrics"),
    "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    "OTEL_EXPORTER_OTLP_HEADERS": headers,
    "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
    "OTEL_EXPORTER_OTLP_TIMEOUT": timeout,
    "OTEL_EXPORTER_OTLP_CERTIFICATE": certificate,
    "OTEL_EXPORTER_OTLP_CLIENT_KEY": client_key,
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": client_key,
    "OTEL_EXPORTER_OTLP_INSECURE": insecure,
    "OTEL_RESOURCE_ATTRIBUTES": resource_attributes,
    "OTEL_METRIC_EXPORT_INTERVAL": metric_interval,
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": temporality,
    "OTEL_SEMCONV_STABILITY_OPT_IN": semconv,
}


def test_every_row_has_a_case() -> None:
    """The README table and the cases below name the same variables."""
    assert sorted(table_rows()) == sorted(CASES)


@pytest.mark.parametrize("variable", sorted(CASES))
def test_variable(variable: str, tmp_path: Path) -> None:
    """The variable's documented effect, its precedence and its error message."""
    CASES[variable](tmp_path)


def test_mtls_client_certificate_is_presented(tmp_path: Path) -> None:
    """A receiver that requires a client certificate accepts ours (OTEL_EXPORTER_OTLP_CLIENT_*), not none."""
    from collector.otlp.sink import OtlpSink
    from collector.records import Record
    from collector.sinks import SinkUnavailable
    from emitters.events import encode
    from tests.support.otlp_events import Workload
    from tests.support.otlp_receiver import Receiver

    pki = make_test_pki(tmp_path)
    receiver = Receiver().up(pki)
    work = Workload()
    work.outside()
    batch = [Record("events", f"1-{n}", event, encode(event)) for n, event in enumerate(work.events)]
    base = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"https://localhost:{receiver.port}",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": str(pki.ca_cert),
    }
    try:
        anonymous = OtlpSink(OtlpConfig(signals=["logs"], timeout=2).resolve(base))
        with pytest.raises(SinkUnavailable):
            anonymous.write(batch)
        anonymous.close()
        env = {
            **base,
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(pki.client_key),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(pki.client_cert),
            "OTEL_RESOURCE_ATTRIBUTES": "service.version=9.9.9",
        }
        sink = OtlpSink(OtlpConfig(signals=["logs"]).resolve(env))
        sink.write(batch)
        sink.close()
    finally:
        receiver.down()
    (request,) = receiver.logs
    resource = {pair.key: pair.value.string_value for pair in request.resource_logs[0].resource.attributes}
    assert resource["service.version"] == "9.9.9"
