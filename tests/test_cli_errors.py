"""The first hour's mistakes, every command: one ``Error:`` line naming the setting, the exit-code table.

Each row is a mistake a new user makes (and its neighbours), run as a real
``telemetry-collector`` process against real things: a password-protected
redis-server, a TLS-only one, an HTTP server where Redis was expected, a port
that never answers, missing/empty/directory secret files. Every row checks:
no traceback anywhere in the output, the exit status from
:mod:`collector.exitcodes`, and that the one error line names the setting(s).
"""

from __future__ import annotations

import functools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from collector.embedded import RedisProcess, free_port, port_is_free
from collector.exitcodes import EPILOG, EXIT_NOTHING, EXIT_OK, EXIT_USAGE
from tests.support.cli_faults import NotRedis, Run, Silent, clean_env, run_cli
from tests.tls import make_test_pki

PASSWORD = "first-hour-secret"


class World(NamedTuple):
    """Placeholders the table's rows use, as ``{name}`` in args and env values."""

    values: dict[str, str]

    def fill(self, text: str) -> str:
        return text.format(**self.values)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("first-hour")
    pki = make_test_pki(base / "pki")
    for name in ("auth", "tls", "plain"):
        (base / name).mkdir()
    auth = RedisProcess(password=PASSWORD, data_dir=base / "auth").start()
    tls = RedisProcess(tls=pki.server, data_dir=base / "tls").start()
    plain = RedisProcess(data_dir=base / "plain").start()
    (base / "empty").write_text("")
    (base / "wrong-pw").write_text("not-the-password\n")
    (base / "a-dir").mkdir()
    (base / "not-a-dir").write_text("a file where a directory was expected\n")
    files = {
        "password.toml": '[redis]\nurl = "redis://127.0.0.1:6379/0"\npassword = "hunter2"\n',
        "section.toml": "[collecter]\nbatch_size = 100\n",
        "field.toml": "[collector]\nbatch_sise = 100\n",
        "tls.toml": f'[redis]\nurl = "rediss://127.0.0.1:{tls.port}/0"\n',
        "plain.toml": f'[redis]\nurl = "{plain.url}"\n',
        "auth.toml": f'[redis]\nurl = "redis://127.0.0.1:{auth.port}/0"\n',
        "webhook.toml": f'[redis]\nurl = "{plain.url}"\n[alerts.webhook]\nurl = "http://127.0.0.1:9/"\n'
        'headers_env = { Authorization = "HOOK_AUTH" }\n',
    }
    for name, text in files.items():
        (base / name).write_text(text)
    with NotRedis() as http, Silent() as silent:
        yield World(
            {
                "base": str(base),
                "plain": plain.url,
                "auth": f"redis://127.0.0.1:{auth.port}/0",
                "tls": f"rediss://127.0.0.1:{tls.port}/0",
                "tls_as_plain": f"redis://127.0.0.1:{tls.port}/0",
                "http": f"redis://127.0.0.1:{http.port}/0",
                "silent": f"redis://127.0.0.1:{silent.port}/0",
                "refused": f"redis://127.0.0.1:{free_port()}/0",
                "ca": str(pki.ca_cert),
                "cert": str(pki.client_cert),
                "key": str(pki.client_key),
                "missing": str(base / "no-such-file"),
                "empty": str(base / "empty"),
                "wrong_pw": str(base / "wrong-pw"),
                "dir": str(base / "a-dir"),
                "file": str(base / "not-a-dir"),
                "notpem": str(base / "field.toml"),
                **{name.replace(".", "_"): str(base / name) for name in files},
            }
        )
    for server in (auth, tls, plain):
        server.close()


class Mistake(NamedTuple):
    id: str
    args: tuple[str, ...]
    env: dict[str, str]
    code: int
    names: tuple[str, ...]  # each must appear in the error line


def m(id: str, args: str, code: int, *names: str, **env: str) -> Mistake:  # noqa: A002 - a row's id
    return Mistake(id, tuple(args.split()), env, code, names)


PW_FILE = "TELEMETRY_REDIS_PASSWORD_FILE"
CA = "TELEMETRY_REDIS_TLS_CA_FILE"
JSONL = "--jsonl-dir {base}/jsonl"

MISTAKES = [
    # -- the URL itself -----------------------------------------------------------------------------
    m("tail-host-port-url", "tail --timeout 1s --redis-url localhost:6379", 2, "--redis-url", "redis://", "from the command line"),
    m("search-http-scheme", "search --redis-url http://localhost:6379", 2, "--redis-url", "not a Redis URL"),
    m("errors-env-url", "errors", 2, "--redis-url", "$TELEMETRY_REDIS_URL", TELEMETRY_REDIS_URL="localhost:6379"),
    m("timeline-bad-port", "timeline r-1 --redis-url redis://localhost:port/0", 2, "--redis-url", "bad port"),
    m("ui-host-port-url", "ui --redis-url localhost:6379", 2, "--redis-url", "from the command line"),
    m("health-bad-db", "health --redis-url redis://localhost:6379/zero", 2, "--redis-url", "database"),
    m("dlq-unix-no-path", "dlq list --redis-url unix://", 2, "--redis-url", "socket path"),
    m("run-env-url", f"run {JSONL}", 2, "redis.url", "$TELEMETRY_REDIS_URL", "rediss://", TELEMETRY_REDIS_URL="localhost:6379"),
    m("demo-host-port-url", "demo --duration 1 --redis-url localhost:6379", 2, "--redis-url", "not a Redis URL"),
    m("bench-host-port-url", "bench --quick --redis-url localhost:6379", 2, "--redis-url", "not a Redis URL"),
    # -- nothing there, or not Redis ---------------------------------------------------------------
    m("alerts-refused", "alerts --redis-url {refused}", 2, "cannot reach Redis", "--redis-url"),
    m("dlq-refused-from-env", "dlq list", 2, "cannot reach Redis", "$TELEMETRY_REDIS_URL", TELEMETRY_REDIS_URL="{refused}"),
    m("search-default-url-down", "search --redis-url {refused} --limit 1", 2, "cannot reach Redis"),
    m("health-not-redis", "health --redis-url {http}", 2, "does not speak the Redis protocol", "--redis-url"),
    m("search-not-redis", "search --redis-url {http}", 2, "does not speak the Redis protocol"),
    m("run-not-redis", f"run --redis-url {{http}} {JSONL}", 2, "does not speak the Redis protocol", "redis.url", "from --redis-url"),
    m("health-silent-port", "health --timeout 500ms --redis-url {silent}", 2, "did not answer in time", "--redis-url"),
    m("demo-refused", "demo --duration 1 --redis-url {refused}", 2, "cannot reach Redis", "--redis-url"),
    # -- passwords -----------------------------------------------------------------------------------
    m("search-auth-required", "search --redis-url {auth}", 2, "Authentication required", "TELEMETRY_REDIS_PASSWORD"),
    m("health-auth-required", "health --redis-url {auth}", 2, "Authentication required", "TELEMETRY_REDIS_PASSWORD"),
    m("run-auth-required", f"run --redis-url {{auth}} {JSONL}", 2, "Authentication required", "TELEMETRY_REDIS_PASSWORD"),
    m("errors-wrong-password", "errors --redis-url {auth}", 2, "refused $TELEMETRY_REDIS_PASSWORD", TELEMETRY_REDIS_PASSWORD="wrong"),
    m("alerts-wrong-password-file", "alerts --redis-url {auth}", 2, f"${PW_FILE}", "refused", **{PW_FILE: "{wrong_pw}"}),
    m("alerts-password-file-missing", "alerts --redis-url {auth}", 2, f"${PW_FILE}", "does not exist", **{PW_FILE: "{missing}"}),
    m("tail-password-file-is-dir", "tail --timeout 1s --redis-url {auth}", 2, f"${PW_FILE}", "is a directory", **{PW_FILE: "{dir}"}),
    m("dlq-password-file-empty", "dlq list --redis-url {auth}", 2, f"${PW_FILE}", "is empty", **{PW_FILE: "{empty}"}),
    m("run-password-file-missing", f"run --redis-url {{auth}} {JSONL}", 2, f"${PW_FILE}", "does not exist", **{PW_FILE: "{missing}"}),
    m("check-config-password-file-missing", "check-config {auth_toml}", 2, f"${PW_FILE}", "does not exist", **{PW_FILE: "{missing}"}),
    m("check-config-password-file-is-dir", "check-config {auth_toml}", 2, f"${PW_FILE}", "is a directory", **{PW_FILE: "{dir}"}),
    m("run-embedded-password-file-missing", f"run {JSONL}", 2, f"${PW_FILE}", **{PW_FILE: "{missing}"}),
    m("check-config-password-in-toml", "check-config {password_toml}", 2, "TELEMETRY_REDIS_PASSWORD", "password.toml"),
    # -- TLS -------------------------------------------------------------------------------------------
    m("search-tls-no-ca", "search --redis-url {tls}", 2, "TLS", CA),
    m("health-tls-ca-missing", "health --redis-url {tls}", 2, f"${CA}", "does not exist", **{CA: "{missing}"}),
    m("check-config-tls-ca-missing", "check-config {tls_toml}", 2, f"${CA}", "does not exist", **{CA: "{missing}"}),
    m("run-tls-ca-missing", f"run --config {{tls_toml}} {JSONL}", 2, f"${CA}", "does not exist", **{CA: "{missing}"}),
    m("run-tls-ca-not-pem", f"run --config {{tls_toml}} {JSONL}", 2, f"${CA}", "no PEM certificate", **{CA: "{notpem}"}),
    m("errors-tls-cert-without-key", "errors --redis-url {tls}", 2, "TELEMETRY_REDIS_TLS_CERT_FILE", "TELEMETRY_REDIS_TLS_KEY_FILE", **{CA: "{ca}", "TELEMETRY_REDIS_TLS_CERT_FILE": "{cert}"}),
    m("timeline-plain-url-to-tls-port", "timeline r-1 --redis-url {tls_as_plain}", 2, "rediss://"),
    # -- the config file ---------------------------------------------------------------------------------
    m("check-config-unknown-section", "check-config {section_toml}", 2, "[collecter]", "did you mean [collector]", "section.toml"),
    m("check-config-unknown-field", "check-config {field_toml}", 2, "batch_sise", "did you mean `batch_size`", "field.toml"),
    m("check-config-no-file", "check-config {missing}", 2, "config file not found", "--config"),
    m("run-config-missing", f"run --config {{missing}} {JSONL}", 2, "config file not found"),
    m("check-config-webhook-secret-unset", "check-config {webhook_toml}", 2, "HOOK_AUTH"),
    m("check-config-webhook-secret-file-missing", "check-config {webhook_toml}", 2, "$HOOK_AUTH_FILE", HOOK_AUTH_FILE="{missing}"),
    m("run-jsonl-dir-under-a-file", "run --redis-url {plain} --jsonl-dir {file}/logs", 2, "jsonl.dir", "from --jsonl-dir", "not a directory"),
    m("check-config-jsonl-dir-from-env", "check-config {plain_toml}", 2, "jsonl.dir", "$TELEMETRY_JSONL_DIR", TELEMETRY_JSONL_DIR="{file}/logs"),
    m("check-config-otlp-token-file-missing", "check-config {plain_toml}", 2, "TELEMETRY_OTLP_TOKEN_FILE", TELEMETRY_OTLP_ENDPOINT="http://127.0.0.1:4318", TELEMETRY_OTLP_TOKEN_FILE="{missing}"),
    # -- flags -------------------------------------------------------------------------------------------
    m("run-batch-size-zero", f"run --batch-size 0 {JSONL}", 2, "--batch-size", "collector.batch_size"),
    m("search-severity-unknown", "search --severity verbose", 2, "--severity"),
    m("health-timeout-zero", "health --timeout 0", 2, "--timeout"),
    m("install-systemd-unit-dir-is-a-file", "install-systemd --force --unit-dir {file}", 2, "--unit-dir", "is a file"),
    # -- nothing found: 1, not an error of the setup ------------------------------------------------------
    m("timeline-unknown-id", "timeline no-such-request --redis-url {plain}", 1, "no-such-request"),
    m("dlq-show-unknown-id", "dlq show 1-1 --redis-url {plain}", 1, "1-1"),
]


def error_line(stdout: str, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r} (stdout {stdout!r})"
    return lines[0]


@pytest.fixture(scope="module")
def outcomes(world: World, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every row run once, four processes at a time (most of the cost is interpreter start-up)."""

    def attempt(mistake: Mistake) -> Run:
        args = [world.fill(arg) for arg in mistake.args]
        env = {key: world.fill(value) for key, value in mistake.env.items()}
        return run_cli(args, env, cwd=tmp_path_factory.mktemp(mistake.id), timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([row.id for row in MISTAKES], pool.map(attempt, MISTAKES)))


@pytest.mark.parametrize("mistake", MISTAKES, ids=[row.id for row in MISTAKES])
def test_mistake_is_one_line_naming_the_setting(world: World, outcomes: dict[str, Run], mistake: Mistake) -> None:
    """No traceback, the table's exit code, and one line that names the setting (and its fix)."""
    result = outcomes[mistake.id]
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.code == mistake.code, output
    line = error_line(result.stdout, result.stderr)
    assert line.startswith(("Error: ", "status: unreachable: ")), line
    for name in mistake.names:
        assert world.fill(name) in line, f"{name!r} not in {line!r}"
    assert PASSWORD not in output and "hunter2" not in output  # secrets never echoed


def test_the_table_covers_every_command() -> None:
    """Every command has at least one mistake above, and both failure codes of the table appear."""
    from collector.cli import COMMANDS

    covered = {row.args[0] for row in MISTAKES}
    assert covered >= set(COMMANDS), set(COMMANDS) - covered
    assert {row.code for row in MISTAKES} == {EXIT_NOTHING, EXIT_USAGE}
    assert len(MISTAKES) >= 30


@functools.cache
def _help(command: str) -> str:
    return run_cli([*command.split(), "--help"]).stdout


@pytest.mark.parametrize("command", ["", "run", "check-config", "tail", "search", "health", "dlq", "dlq replay", "alerts", "bench", "install-systemd"])
def test_every_help_ends_with_the_exit_code_table(command: str) -> None:
    text = _help(command)
    table = [line.strip() for line in EPILOG.splitlines()[1:]]
    assert [line.strip() for line in text.splitlines()[-len(table):]] == table, text


def test_help_texts_show_env_vars_and_true_defaults() -> None:
    """--redis-url shows its variable; --embedded's default says it is on without a URL."""
    assert "TELEMETRY_REDIS_URL" in _help("search")
    run_help = " ".join(_help("run").split())
    assert re.search(r"--embedded / --no-embedded .*default: \(true when no Redis URL is set\)", run_help), run_help


def test_severity_warning_is_taken_as_warn(world: World, tmp_path: Path) -> None:
    """`--severity warning` (the word --log-level uses) works like `warn`."""
    result = run_cli(["search", "--severity", "warning", "--redis-url", world.values["plain"]], cwd=tmp_path)
    assert result.code == EXIT_OK, result.stderr


def test_health_of_a_non_redis_port_is_unreachable_not_degraded(world: World) -> None:
    """A compose healthcheck must read 2 (unreachable) here, never 1 (degraded)."""
    result = run_cli(["health", "--json", "--redis-url", world.values["http"]])
    report = json.loads(result.stdout)
    assert (result.code, report["status"], report["exit_code"]) == (EXIT_USAGE, "unreachable", EXIT_USAGE)


def _run_until_ready(args: list[str], cwd: Path) -> list[dict[str, object]]:
    """Start `run` with JSON logs, read until the collector is ready, stop it with SIGTERM; the log lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "--log-format", "json", "--no-alerts", *args],
        env=clean_env(),
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)  # a hang fails the test instead of blocking it
    watchdog.start()
    lines: list[dict[str, object]] = []
    try:
        assert process.stderr is not None
        for raw in process.stderr:
            lines.append(json.loads(raw))
            if lines[-1]["event"] == "collector_ready":
                break
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == EXIT_OK
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    return lines


def test_run_logs_the_url_emitters_should_use(world: World, tmp_path: Path) -> None:
    """At start `run` says where emitters must send, before it is ready."""
    lines = _run_until_ready(["--redis-url", world.values["plain"], "--jsonl-dir", str(tmp_path / "logs")], tmp_path)
    (hint,) = [line for line in lines if line["event"] == "emitters_should_use"]
    assert hint["redis_url"] == world.values["plain"] and "Emitter(service, redis_url)" in str(hint["note"])


def test_second_embedded_redis_says_it_took_another_port(tmp_path: Path) -> None:
    """Port 6379 taken (here by a plain socket): the embedded Redis moves, and `run` says so and where."""
    holder = None
    if port_is_free(6379):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.bind(("127.0.0.1", 6379))
        holder.listen(1)
    try:
        lines = _run_until_ready(["--jsonl-dir", str(tmp_path / "logs")], tmp_path)
    finally:
        if holder is not None:
            holder.close()
    (taken,) = [line for line in lines if line["event"] == "embedded_redis_port_taken"]
    (hint,) = [line for line in lines if line["event"] == "emitters_should_use"]
    assert taken["level"] == "warning" and taken["wanted"] == 6379 and taken["port"] != 6379
    assert hint["redis_url"] == f"redis://127.0.0.1:{taken['port']}/0"
    assert "does not reach it" in str(hint["note"])
