"""The [otlp] section: precedence, OTEL_EXPORTER_OTLP_* variables, secrets, CLI options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
from click.testing import CliRunner

from collector.config import ConfigError, dec_hook, load_config, redacted
from collector.otlp.cli import cli_options, options_to_overrides
from collector.otlp.config import OtlpConfig, parse_headers


def convert(**fields: Any) -> OtlpConfig:
    return msgspec.convert(fields, OtlpConfig, strict=False, dec_hook=dec_hook)


class TestResolve:
    def test_defaults_are_off(self) -> None:
        """With no endpoint anywhere, export is off; gRPC to localhost:4317, gzip, 10 s."""
        settings = OtlpConfig().resolve({})
        assert settings.enabled is False
        assert (settings.endpoint, settings.protocol, settings.compression, settings.timeout) == (
            "http://localhost:4317",
            "grpc",
            "gzip",
            10.0,
        )
        assert settings.headers == {}
        assert settings.signals == ("logs", "traces", "metrics")

    def test_an_endpoint_switches_export_on(self) -> None:
        """Setting an endpoint is the intent to export; enabled=false still wins."""
        assert OtlpConfig(endpoint="https://otlp.example:4317").resolve({}).enabled is True
        assert OtlpConfig(endpoint="https://otlp.example:4317", enabled=False).resolve({}).enabled is False

    def test_otel_variables_fill_unset_fields(self) -> None:
        """OTEL_EXPORTER_OTLP_* apply to whatever the config leaves unset."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://ingress.example.com:4318/",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20abc123,Dash0-Dataset=prod",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        }
        settings = OtlpConfig().resolve(env)
        assert settings.enabled is True
        assert settings.endpoint == "https://ingress.example.com:4318"
        assert settings.tls is True
        assert settings.protocol == "http"
        assert settings.headers == {"authorization": "Bearer abc123", "dash0-dataset": "prod"}
        assert settings.compression == "none"
        assert settings.timeout == 2.5

    def test_config_beats_otel_variables(self) -> None:
        """Values in the config (file, TELEMETRY_* or flags) override the OTEL ones."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-team=a,x-keep=1",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }
        config = OtlpConfig(endpoint="http://ours:4318", protocol="http", headers={"X-Team": "b"}, dataset="ds")
        settings = config.resolve(env)
        assert settings.endpoint == "http://ours:4318"
        assert settings.protocol == "http"
        assert settings.headers == {"x-team": "b", "x-keep": "1", "dash0-dataset": "ds"}

    def test_token_sources(self, tmp_path: Path) -> None:
        """Token: config/flag > TELEMETRY_OTLP_TOKEN > TELEMETRY_OTLP_TOKEN_FILE > token_file; sent as Bearer."""
        token_file = tmp_path / "token"
        token_file.write_text("from-file\n")
        other = tmp_path / "other"
        other.write_text("from-config-file\n")
        assert OtlpConfig(token_file=str(other)).resolve({}).headers["authorization"] == "Bearer from-config-file"
        env_file = {"TELEMETRY_OTLP_TOKEN_FILE": str(token_file)}
        assert OtlpConfig(token_file=str(other)).resolve(env_file).headers["authorization"] == "Bearer from-file"
        env = {**env_file, "TELEMETRY_OTLP_TOKEN": "from-env"}
        assert OtlpConfig().resolve(env).headers["authorization"] == "Bearer from-env"
        assert OtlpConfig(token="from-flag").resolve(env).headers["authorization"] == "Bearer from-flag"

    def test_token_overrides_an_authorization_header(self) -> None:
        """A configured token replaces an Authorization header from OTEL_EXPORTER_OTLP_HEADERS."""
        env = {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer old"}
        assert OtlpConfig(token="new").resolve(env).headers == {"authorization": "Bearer new"}

    def test_bad_certificate_file(self, tmp_path: Path) -> None:
        """A CA bundle that is missing or not PEM is an error naming the field or variable."""
        with pytest.raises(ValueError, match="otlp.certificate_file: cannot read"):
            OtlpConfig(certificate_file=str(tmp_path / "missing.pem")).resolve({})
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate")
        with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_CERTIFICATE: .* is not a PEM CA bundle"):
            OtlpConfig().resolve({"OTEL_EXPORTER_OTLP_CERTIFICATE": str(garbage)})

    def test_unreadable_token_file(self, tmp_path: Path) -> None:
        """A token file that cannot be read is an error naming the field or variable."""
        with pytest.raises(ValueError, match="otlp.token_file: cannot read"):
            OtlpConfig(token_file=str(tmp_path / "missing")).resolve({})
        with pytest.raises(ValueError, match="TELEMETRY_OTLP_TOKEN_FILE: cannot read"):
            OtlpConfig().resolve({"TELEMETRY_OTLP_TOKEN_FILE": str(tmp_path / "missing")})

    @pytest.mark.parametrize(
        ("env", "message"),
        [
            ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json is not supported"),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"}, "OTEL_EXPORTER_OTLP_ENDPOINT: expected http://"),
            ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds"),
            ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION: must be gzip or none"),
            ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS: expected KEY=VALUE"),
        ],
    )
    def test_bad_otel_variables(self, env: dict[str, str], message: str) -> None:
        """A bad OTEL_* value is an error naming the variable."""
        with pytest.raises(ValueError, match=message):
            OtlpConfig().resolve(env)


class TestValidation:
    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"endpoint": "ftp://localhost:4317"}, "otlp.endpoint: expected http://host:port"),
            ({"endpoint": "https://user:pw@host:4317"}, "otlp.endpoint: must not carry credentials"),
            ({"timeout": 0}, "otlp.timeout: must be > 0"),
            ({"headers": ["Authorization Bearer x"]}, "otlp.headers: expected KEY=VALUE"),
            ({"headers": {"bad name": "v"}}, "otlp.headers: invalid header name"),
            ({"signals": ["logs", "logs"]}, "otlp.signals: each signal may be listed once"),
            ({"max_request_bytes": 10}, "otlp.max_request_bytes: must be >= 1024"),
            ({"max_attempts": 0}, "otlp.max_attempts: must be >= 1"),
        ],
    )
    def test_bad_values_name_the_field(self, fields: dict[str, Any], message: str) -> None:
        """Validation errors name the otlp.<field> at fault."""
        with pytest.raises(msgspec.ValidationError, match=message):
            convert(**fields)

    def test_header_forms(self) -> None:
        """Headers come as a table, repeated KEY=VALUE items or one comma-separated string."""
        assert parse_headers({"X-A": "1"}) == {"x-a": "1"}
        assert parse_headers(["X-A=1", "x-b=2=3", "x-c=a,b%20"]) == {"x-a": "1", "x-b": "2=3", "x-c": "a,b%20"}
        assert parse_headers("x-a=1, x-b=%20two%2C") == {"x-a": "1", "x-b": " two,"}

    def test_bad_header_does_not_echo_its_value(self) -> None:
        """A malformed header item may hold a secret: the error must not repeat it."""
        with pytest.raises(ValueError) as caught:
            parse_headers(["Bearer supersecret"])
        assert "supersecret" not in str(caught.value)

    def test_reprs_hide_secrets(self) -> None:
        """Neither the config's nor the resolved settings' repr shows the token or header values."""
        config = OtlpConfig(endpoint="http://h:4317", token="tok-secret-1", headers={"x-api-key": "key-secret-2"})
        settings = config.resolve({})
        for text in (repr(config), repr(settings), str(settings.describe())):
            assert "tok-secret-1" not in text
            assert "key-secret-2" not in text
        assert "x-api-key" in repr(settings)


class TestLoadConfig:
    def test_environment_and_file(self, tmp_path: Path) -> None:
        """TELEMETRY_OTLP_* and the [otlp] table reach OtlpConfig through the collector's loader."""
        path = tmp_path / "collector.toml"
        path.write_text('[otlp]\nendpoint = "http://file:4317"\ndataset = "from-file"\nheaders = { "X-A" = "1" }\n')
        env = {"TELEMETRY_OTLP_DATASET": "from-env", "TELEMETRY_OTLP_TIMEOUT": "3s", "TELEMETRY_OTLP_TOKEN": "t0k3n"}
        config = load_config(path, environ=env)
        assert config.otlp.endpoint == "http://file:4317"
        assert config.otlp.dataset == "from-env"
        assert config.otlp.timeout == 3.0
        assert config.otlp.headers == {"x-a": "1"}
        shown = str(redacted(config))
        assert "t0k3n" not in shown

    def test_bad_value_exits_with_field_path(self) -> None:
        """A bad protocol is reported with its path and origin."""
        with pytest.raises(ConfigError, match=r"otlp\.protocol.*TELEMETRY_OTLP_PROTOCOL"):
            load_config(None, environ={"TELEMETRY_OTLP_PROTOCOL": "carrier-pigeon"})

    def test_headers_from_environment(self) -> None:
        """TELEMETRY_OTLP_HEADERS holds comma-separated pairs."""
        config = load_config(None, environ={"TELEMETRY_OTLP_HEADERS": "x-a=1,x-b=2"})
        assert config.otlp.headers == {"x-a": "1", "x-b": "2"}


class TestCliOptions:
    def run(self, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        captured: dict[str, Any] = {}

        @click.command()
        def command(**params: Any) -> None:
            captured.update(options_to_overrides(params))

        for decorator in reversed(cli_options()):
            command = decorator(command)
        result = CliRunner().invoke(command, args, env=env or {}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return captured

    def test_flags_map_to_config_paths(self) -> None:
        """Every --otlp-* flag lands on its otlp.<field>, headers repeatable."""
        overrides = self.run(
            [
                "--otlp-endpoint", "https://x:4317",
                "--otlp-protocol", "http",
                "--otlp-header", "a=1",
                "--otlp-header", "b=2",
                "--otlp-token", "tok",
                "--otlp-dataset", "ds",
                "--otlp-compression", "none",
                "--otlp-timeout", "1500ms",
                "--otlp-environment", "prod",
                "--no-otlp",
            ]
        )
        assert overrides == {
            "otlp.endpoint": "https://x:4317",
            "otlp.protocol": "http",
            "otlp.headers": ["a=1", "b=2"],
            "otlp.token": "tok",
            "otlp.dataset": "ds",
            "otlp.compression": "none",
            "otlp.timeout": 1.5,
            "otlp.deployment_environment": "prod",
            "otlp.enabled": False,
        }

    def test_unset_flags_leave_config_alone(self) -> None:
        """No flags, no overrides: the environment, file and defaults still decide."""
        assert self.run([]) == {}

    def test_envvars(self) -> None:
        """Flags read TELEMETRY_OTLP_* (the token included) when not given."""
        overrides = self.run([], env={"TELEMETRY_OTLP_TOKEN": "tok", "TELEMETRY_OTLP_ENDPOINT": "http://e:1"})
        assert overrides == {"otlp.token": "tok", "otlp.endpoint": "http://e:1"}

    def test_bad_timeout_is_a_usage_error(self) -> None:
        """A bad --otlp-timeout fails in click with the option named."""

        @click.command()
        def command(**params: Any) -> None:
            pass

        for decorator in reversed(cli_options()):
            command = decorator(command)
        result = CliRunner().invoke(command, ["--otlp-timeout", "soon"])
        assert result.exit_code == 2
        assert "--otlp-timeout" in result.output
