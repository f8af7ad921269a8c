"""The typed collector config: precedence, durations, errors with field paths, redaction, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import (
    CLI_SETTINGS,
    Config,
    ConfigError,
    cli_settings,
    load_config,
    redacted,
)
from collector.durations import Duration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "collector.example.toml"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``telemetry-collector ARGS`` in a fresh interpreter, as an operator would run it."""
    return subprocess.run(
        [sys.executable, "-c", "from collector.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class TestLoadConfig:
    def test_defaults_are_valid_and_documented_values(self) -> None:
        """With nothing configured: embedded Redis, group telemetry-collectors, 60s claim idle, JSONL on."""
        config = load_config(environ={})
        assert config.redis.url is None and config.redis.use_embedded
        assert config.redis.stream_prefix == "telemetry"
        assert config.collector.group == "telemetry-collectors"
        assert config.collector.consumer is None
        assert config.collector.batch_size == 500
        assert config.collector.claim_idle == 60.0
        assert config.collector.events_retention == 24 * 3600
        assert config.collector.errors_retention == 7 * 24 * 3600
        assert config.jsonl.enabled and config.jsonl.dir == "./logs"

    def test_toml_file_values_are_used(self, tmp_path: Path) -> None:
        """Every section of a TOML file lands in the typed config."""
        path = write(
            tmp_path / "c.toml",
            '[redis]\nurl = "redis://r:6379/1"\nstream_prefix = "app"\n'
            '[collector]\nbatch_size = 50\nclaim_idle = "90s"\n'
            '[jsonl]\ndir = "/tmp/x"\nmax_bytes = 2048\n[log]\nformat = "json"\n',
        )
        config = load_config(path, environ={})
        assert config.redis.url == "redis://r:6379/1" and not config.redis.use_embedded
        assert config.redis.stream_prefix == "app"
        assert (config.collector.batch_size, config.collector.claim_idle) == (50, 90.0)
        assert (config.jsonl.dir, config.jsonl.max_bytes, config.log.format) == ("/tmp/x", 2048, "json")

    def test_precedence_flags_over_env_over_file_over_defaults(self, tmp_path: Path) -> None:
        """A flag beats TELEMETRY_*, which beats the file, which beats the default."""
        path = write(tmp_path / "c.toml", '[collector]\nbatch_size = 10\nblock_ms = 20\ngroup = "from-file"\n')
        env = {"TELEMETRY_BATCH_SIZE": "30", "TELEMETRY_BLOCK_MS": "40"}
        config = load_config(path, {"collector.batch_size": 50}, environ=env)
        assert config.collector.batch_size == 50  # flag
        assert config.collector.block_ms == 40  # env over file
        assert config.collector.group == "from-file"  # file over default
        assert config.collector.max_deliveries == 10  # default

    def test_empty_environment_variable_counts_as_unset(self, tmp_path: Path) -> None:
        """`TELEMETRY_REDIS_URL=` (as compose files often write it) does not wipe the file's URL."""
        path = write(tmp_path / "c.toml", '[redis]\nurl = "redis://file:6379/0"\n')
        assert load_config(path, environ={"TELEMETRY_REDIS_URL": ""}).redis.url == "redis://file:6379/0"

    def test_boolean_environment_values(self) -> None:
        """TELEMETRY_JSONL=false turns the JSONL sink off, TELEMETRY_EMBEDDED=true forces embedded."""
        config = load_config(environ={"TELEMETRY_JSONL": "false", "TELEMETRY_EMBEDDED": "true"})
        assert config.jsonl.enabled is False and config.redis.embedded is True

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("250ms", 0.25), ("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800), ("45", 45), ("1.5s", 1.5)],
    )
    def test_durations_parse_in_every_unit(self, text: str, seconds: float) -> None:
        """Durations accept ms, s, m, h, d and bare seconds, from env and file alike."""
        assert load_config(environ={"TELEMETRY_CLAIM_IDLE": text}).collector.claim_idle == pytest.approx(seconds)

    def test_numeric_durations_in_toml(self, tmp_path: Path) -> None:
        """A TOML number is seconds; the value keeps the Duration type."""
        config = load_config(write(tmp_path / "c.toml", "[collector]\nshutdown_timeout = 12\n"), environ={})
        assert config.collector.shutdown_timeout == 12.0
        assert isinstance(config.collector.shutdown_timeout, Duration)

    @pytest.mark.parametrize(
        ("toml", "path", "rule"),
        [
            ("[collector]\nbatch_size = 0", "$.collector.batch_size", ">= 1"),
            ('[collector]\nbatch_size = "many"', "$.collector.batch_size", "Expected `int`"),
            ('[collector]\nclaim_idle = "soon"', "$.collector.claim_idle", "expected a duration"),
            ("[collector]\nclaim_idle = 0", "$.collector.claim_idle", "> 0"),
            ('[redis]\nurl = "http://x"', "$.redis.url", "regex"),
            ('[redis]\nstream_prefix = "a b"', "$.redis.stream_prefix", "regex"),
            ('[log]\nlevel = "loud"', "$.log.level", "Invalid enum value"),
            ("[collector]\nbatch_sise = 5", "$.collector", "unknown field `batch_sise`"),
            ('[alerts]\ndisable = ["nope"]', "$.alerts", "not a built-in rule"),
            ('[otlp]\nendpoint = "ftp://x"', "$.otlp", "otlp.endpoint"),
        ],
    )
    def test_bad_values_name_the_field_path_and_the_rule(self, tmp_path: Path, toml: str, path: str, rule: str) -> None:
        """Each error names where the value is (`$.section.field`) and what rule it broke."""
        with pytest.raises(ConfigError) as caught:
            load_config(write(tmp_path / "c.toml", toml + "\n"), environ={})
        message = str(caught.value)
        assert f"`{path}`" in message and rule in message, message

    def test_unknown_section_is_named(self, tmp_path: Path) -> None:
        """A misspelt top-level table is an error naming it (msgspec gives no path at the root)."""
        with pytest.raises(ConfigError, match="unknown field `colector`"):
            load_config(write(tmp_path / "c.toml", "[colector]\nbatch_size = 1\n"), environ={})

    def test_error_says_where_the_bad_value_came_from(self, tmp_path: Path) -> None:
        """The message names the file, the variable or the flag that supplied the value."""
        path = write(tmp_path / "c.toml", "[collector]\nmax_deliveries = 0\n")
        with pytest.raises(ConfigError, match=r"max_deliveries` \(in .*c\.toml\)"):
            load_config(path, environ={})
        with pytest.raises(ConfigError, match=r"\(from \$TELEMETRY_BATCH_SIZE\)"):
            load_config(environ={"TELEMETRY_BATCH_SIZE": "-1"})
        with pytest.raises(ConfigError, match=r"\(from --block-ms\)"):
            load_config(overrides={"collector.block_ms": 0}, environ={})

    def test_unreadable_files_are_config_errors(self, tmp_path: Path) -> None:
        """A missing file and broken TOML are ConfigErrors naming the file."""
        with pytest.raises(ConfigError, match="not found"):
            load_config(tmp_path / "missing.toml", environ={})
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(write(tmp_path / "bad.toml", "[collector\n"), environ={})

    def test_a_scalar_where_a_section_belongs(self, tmp_path: Path) -> None:
        """`collector = 5` in the file plus a flag for collector.* is an error, not a crash."""
        with pytest.raises(ConfigError, match=r"\$\.collector"):
            load_config(write(tmp_path / "c.toml", "collector = 5\n"), {"collector.batch_size": 5}, environ={})

    def test_every_cli_setting_points_at_a_real_field(self) -> None:
        """Each flag's dotted path exists in Config, and each env name is TELEMETRY_*."""
        defaults = Config()
        for setting in cli_settings():
            section, name = setting.path.split(".")
            assert name in getattr(defaults, section).__struct_fields__, setting
            assert setting.envvar.startswith("TELEMETRY_"), setting
        flags = {setting.flag.split("/")[0] for setting in CLI_SETTINGS}
        for required in ("--redis-url", "--embedded", "--stream-prefix", "--group", "--consumer", "--jsonl-dir",
                         "--batch-size", "--block-ms", "--claim-idle", "--max-deliveries", "--log-format",
                         "--log-level", "--jsonl-max-bytes", "--shutdown-timeout"):  # fmt: skip
            assert required in flags

    def test_example_config_is_valid(self) -> None:
        """deploy/collector.example.toml loads as it is shipped."""
        config = load_config(EXAMPLE, environ={})
        assert config.redis.url is not None


class TestRedaction:
    def test_password_in_url_never_shown(self) -> None:
        """redacted() and repr() hide the Redis password; the rest of the URL stays readable."""
        config = load_config(environ={"TELEMETRY_REDIS_URL": "redis://alice:s3cret-pw@db:6379/0"})
        shown = json.dumps(redacted(config))
        assert "s3cret-pw" not in shown and "db:6379" in shown
        assert "s3cret-pw" not in repr(config) and "s3cret-pw" not in str(config.redis)

    def test_otlp_token_masked(self) -> None:
        """A token given through the environment is masked in the dump."""
        config = load_config(environ={"TELEMETRY_OTLP_TOKEN": "tok-123456"})
        shown = redacted(config)
        assert shown["otlp"]["token"] == "***"
        assert "tok-123456" not in json.dumps(shown)


class TestCommands:
    def test_check_config_prints_the_effective_config(self, tmp_path: Path) -> None:
        """Exit 0 and the merged config as JSON, environment applied, password masked."""
        path = write(tmp_path / "c.toml", '[redis]\nurl = "redis://:hunter22@db:6379/0"\n[collector]\nbatch_size = 7\n')
        done = cli("check-config", str(path), env={"TELEMETRY_GROUP": "from-env"})
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["collector"]["batch_size"] == 7 and shown["collector"]["group"] == "from-env"
        assert shown["collector"]["claim_idle"] == "1m"
        assert "hunter22" not in done.stdout + done.stderr

    def test_check_config_exits_2_with_the_field_path(self, tmp_path: Path) -> None:
        """A bad value: exit 2, the path and rule on stderr, nothing on stdout."""
        path = write(tmp_path / "c.toml", "[collector]\nbatch_size = 0\n")
        done = cli("check-config", str(path))
        assert done.returncode == 2
        assert "`$.collector.batch_size`" in done.stderr and ">= 1" in done.stderr
        assert done.stdout == ""

    def test_run_exits_2_on_a_bad_flag_value(self, tmp_path: Path) -> None:
        """`run --max-deliveries 0` stops before touching Redis, naming the path and the flag."""
        done = cli("run", "--max-deliveries", "0", "--redis-url", "redis://127.0.0.1:1/0")
        assert done.returncode == 2
        assert "`$.collector.max_deliveries`" in done.stderr and "--max-deliveries" in done.stderr

    def test_run_exits_2_on_a_bad_environment_value(self) -> None:
        """A malformed TELEMETRY_CLAIM_IDLE is rejected by the option parser, naming the variable."""
        done = cli("run", env={"TELEMETRY_CLAIM_IDLE": "5 parsecs"})
        assert done.returncode == 2
        assert "TELEMETRY_CLAIM_IDLE" in done.stderr and "expected a duration" in done.stderr

    def test_run_exits_2_on_a_bad_config_file(self, tmp_path: Path) -> None:
        """`run --config` with an invalid file: exit 2 with the path, before any Redis is started."""
        path = write(tmp_path / "c.toml", '[jsonl]\nretention_days = -3\n')
        done = cli("run", "--config", str(path))
        assert done.returncode == 2
        assert "`$.jsonl.retention_days`" in done.stderr
