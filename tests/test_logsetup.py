"""Logging setup: format selection, JSON/console output, secret redaction."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
from typing import Iterator

import pytest
import structlog

from collector.logsetup import (
    MASK,
    choose_format,
    configure_logging,
    is_secret_key,
    mask_credentials,
    redact_secrets,
)

PASSWORD = "hunter2-Zq9"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and structlog back as they were after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def json_lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class TestChooseFormat:
    @pytest.mark.parametrize(
        ("isatty", "environ", "expected"),
        [
            (True, {}, "console"),
            (False, {}, "json"),
            (True, {"JOURNAL_STREAM": "8:12345"}, "json"),
            (True, {"INVOCATION_ID": "0123456789abcdef"}, "json"),
        ],
    )
    def test_auto_picks_console_only_for_a_terminal_outside_systemd(
        self, isatty: bool, environ: dict[str, str], expected: str
    ) -> None:
        """auto = console on a TTY unless systemd runs us; JSON for pipes, files and journald."""
        assert choose_format("auto", isatty=isatty, environ=environ) == expected

    def test_explicit_choice_wins(self) -> None:
        """An explicit json/console is used as given, TTY or not."""
        assert choose_format("json", isatty=True, environ={}) == "json"
        assert choose_format("console", isatty=False, environ={"INVOCATION_ID": "x"}) == "console"

    def test_unknown_format_names_the_field(self) -> None:
        """A typo is a clear error naming log.format and the choices."""
        with pytest.raises(ValueError, match=r"log.format: must be one of json, console, auto, got 'xml'"):
            choose_format("xml", isatty=False, environ={})


class TestIsSecretKey:
    @pytest.mark.parametrize(
        "key",
        [
            "password",
            "redis_password",
            "TELEMETRY_REDIS_PASSWORD",
            "passwd",
            "token",
            "access_token",
            "bearerToken",
            "secret",
            "client_secret",
            "Authorization",
            "proxy-authorization",
            "api_key",
            "apiKey",
            "credentials",
            "Cookie",
        ],
    )
    def test_secret_keys(self, key: str) -> None:
        """Keys that name a credential are masked whatever their value."""
        assert is_secret_key(key)

    @pytest.mark.parametrize(
        "key", ["prompt_tokens", "generation_tokens", "tokens_per_second", "max_tokens", "url", "event", "user"]
    )
    def test_ordinary_keys(self, key: str) -> None:
        """Telemetry counters that merely contain 'token' stay readable."""
        assert not is_secret_key(key)


class TestMaskCredentials:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"redis://:{PASSWORD}@redis:6379/0", "redis://:***@redis:6379/0"),
            (f"rediss://collector:{PASSWORD}@host:6380/0", "rediss://collector:***@host:6380/0"),
            (f"connect to redis://u:{PASSWORD}@h/0 failed", "connect to redis://u:***@h/0 failed"),
            ("redis://u:p@ss@host:1/0", "redis://u:***@host:1/0"),  # an unencoded '@' in the password
            ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
            ("Authorization=Bearer%20abc123,Dash0-Dataset=prod", "Authorization=***,Dash0-Dataset=prod"),
            ("rediss://h:6380/0?password=s3cr3t&db=0", "rediss://h:6380/0?password=***&db=0"),
            ("x-api-key=k-123 token=t-456 tokens=7", "x-api-key=*** token=*** tokens=7"),
            ("redis://redis:6379/0", "redis://redis:6379/0"),
            ("http://host/path@v2", "http://host/path@v2"),
        ],
    )
    def test_masks_only_the_secret_part(self, text: str, expected: str) -> None:
        """Passwords in URLs and bearer tokens go; hosts, users and paths stay for debugging."""
        assert mask_credentials(text) == expected


class TestRedactSecrets:
    def test_masks_keys_urls_and_nested_values(self) -> None:
        """Secret keys, URL passwords and nested dicts/lists are all masked; other data is untouched."""
        event = {
            "event": f"connecting to redis://:{PASSWORD}@redis:6379/0",
            "password": PASSWORD,
            "redis": {"url": f"redis://:{PASSWORD}@r/0", "password_file": "/run/secrets/pw"},
            "headers": [{"authorization": f"Bearer {PASSWORD}"}, ("x", f"redis://a:{PASSWORD}@b")],
            "prompt_tokens": 12,
            "_record": object(),
        }
        redacted = redact_secrets(None, "info", dict(event))
        assert PASSWORD not in repr({k: v for k, v in redacted.items() if k != "_record"})
        assert redacted["password"] == MASK
        assert redacted["redis"] == {"url": "redis://:***@r/0", "password_file": MASK}
        assert redacted["headers"] == [{"authorization": MASK}, ("x", "redis://a:***@b")]
        assert redacted["prompt_tokens"] == 12
        assert redacted["_record"] is event["_record"]


class TestConfigureLogging:
    def test_json_lines_carry_timestamp_level_logger_and_fields(self, restore_logging: None) -> None:
        """Each log call is one JSON object with an ISO UTC timestamp, level, logger name and fields."""
        out = io.StringIO()
        assert configure_logging("json", "info", stream=out) == "json"
        structlog.get_logger("collector.test").info("batch_acked", count=3)
        (line,) = json_lines(out)
        assert line["event"] == "batch_acked"
        assert line["count"] == 3
        assert line["level"] == "info"
        assert line["logger"] == "collector.test"
        timestamp = dt.datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00"))
        assert timestamp.utcoffset() == dt.timedelta(0)

    def test_level_filters_lower_levels(self, restore_logging: None) -> None:
        """At level warning, info and debug lines are not written."""
        out = io.StringIO()
        configure_logging("json", "warning", stream=out)
        log = structlog.get_logger("collector.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        assert [line["event"] for line in json_lines(out)] == ["w"]

    def test_reconfiguring_replaces_the_handler(self, restore_logging: None) -> None:
        """A second call does not duplicate output; loggers made earlier follow the new setup."""
        log = structlog.get_logger("collector.test")
        first, second = io.StringIO(), io.StringIO()
        configure_logging("json", "info", stream=first)
        configure_logging("json", "info", stream=second)
        log.info("once")
        assert first.getvalue() == ""
        assert [line["event"] for line in json_lines(second)] == ["once"]

    def test_stdlib_records_from_libraries_are_rendered_and_redacted(self, restore_logging: None) -> None:
        """A library logging a URL with a password through `logging` comes out as redacted JSON."""
        out = io.StringIO()
        configure_logging("json", "info", stream=out)
        logging.getLogger("redis.connection").warning("lost %s", f"redis://:{PASSWORD}@r:6379/0")
        (line,) = json_lines(out)
        assert line["logger"] == "redis.connection"
        assert line["level"] == "warning"
        assert line["event"] == "lost redis://:***@r:6379/0"

    def test_secrets_never_reach_the_output_even_in_tracebacks(self, restore_logging: None) -> None:
        """Secret fields, URLs in messages and exception text are masked in the rendered line."""
        out = io.StringIO()
        configure_logging("json", "debug", stream=out)
        log = structlog.get_logger("collector.test")
        log.info("config", redis_url=f"redis://:{PASSWORD}@r/0", otlp_headers={"Authorization": f"Bearer {PASSWORD}"})
        try:
            raise ConnectionError(f"cannot reach rediss://svc:{PASSWORD}@r:6380/0")
        except ConnectionError:
            log.exception("redis_down")
        text = out.getvalue()
        assert PASSWORD not in text
        config, failure = json_lines(out)
        assert config["redis_url"] == "redis://:***@r/0"
        assert "rediss://svc:***@r:6380/0" in str(failure["exception"])
        assert "Traceback" in str(failure["exception"])

    def test_console_format_is_human_readable(self, restore_logging: None) -> None:
        """console renders `event  [logger] key=value` lines, also redacted."""
        out = io.StringIO()
        configure_logging("console", "info", stream=out)
        structlog.get_logger("collector.test").info("started", consumer="h-1", password=PASSWORD)
        text = out.getvalue()
        assert "started" in text and "[collector.test]" in text and "consumer=h-1" in text
        assert PASSWORD not in text and f"password={MASK}" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)

    def test_bad_level_names_the_field(self, restore_logging: None) -> None:
        """An unknown level is rejected before anything is reconfigured."""
        with pytest.raises(ValueError, match="log.level: must be one of"):
            configure_logging("json", "loud")


SCRIPT = """
import structlog
from collector.logsetup import configure_logging
print(configure_logging("auto", "info"), flush=True)
structlog.get_logger("collector.probe").info("probe", n=1)
"""


def run_probe(env: dict[str, str], *, tty: bool) -> tuple[str, str]:
    """Run a real process configuring `auto` logging; stderr is a pipe or a pseudo-terminal."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    full_env.update(env)
    if not tty:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=full_env, capture_output=True, text=True, timeout=60, check=True
        )
        return done.stdout.strip(), done.stderr
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT], env=full_env, stdout=subprocess.PIPE, stderr=terminal, text=True
        )
        os.close(terminal)
        stdout, _ = proc.communicate(timeout=60)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO once the child side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
    return stdout.strip(), b"".join(chunks).decode(errors="replace")


class TestAutoFormatInRealProcesses:
    def test_pipe_gets_json(self) -> None:
        """Under Docker or any supervisor piping stderr, auto emits JSON lines."""
        chosen, stderr = run_probe({}, tty=False)
        assert chosen == "json"
        assert json.loads(stderr.splitlines()[-1])["event"] == "probe"

    def test_terminal_gets_console(self) -> None:
        """A developer at a terminal gets the console renderer."""
        chosen, stderr = run_probe({}, tty=True)
        assert chosen == "console"
        assert "\x1b[" in stderr  # coloured for the terminal
        plain = re.sub(r"\x1b\[[0-9;]*m", "", stderr)
        assert "probe" in plain and "[collector.probe]" in plain and "n=1" in plain

    def test_terminal_under_systemd_still_gets_json(self) -> None:
        """systemd may hand a TTY (StandardError=tty); JOURNAL_STREAM/INVOCATION_ID force JSON."""
        chosen, stderr = run_probe({"INVOCATION_ID": "5f1e2d3c4b5a69788796a5b4c3d2e1f0"}, tty=True)
        assert chosen == "json"
        assert json.loads(stderr.strip().splitlines()[-1])["event"] == "probe"
