"""Deployment files: the systemd unit, docker-compose.yml, the Dockerfile and the env example.

The unit is checked by ``systemd-analyze verify`` and run the way systemd
would run it (notify socket, watchdog, SIGTERM); the compose file by Debian's
``docker-compose config``. Those tools are installed by ``.ci/run``; a test
skips, saying why, only where the tool itself is missing.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from collector.commands.run import HARD_STOP_GRACE, run as run_command
from collector.config import cli_settings
from collector.durations import parse_duration
from tests.support.installed import console_script

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "mlx-telemetry-collector.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "collector.env.example"
EXAMPLE_CONFIG = ROOT / "deploy" / "collector.example.toml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INSTALLED_BINARY = "/usr/local/bin/telemetry-collector"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's ini dialect: repeated keys accumulate, '#'/';' start comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), "line continuations are not used (keeps this parser honest)"
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_seconds(value: str) -> float:
    """A systemd time span as used in this unit: '30', '30s', '1min', '2min 30s'."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def exec_start_argv(service: dict[str, list[str]]) -> list[str]:
    (command,) = service["ExecStart"]
    return shlex.split(command)


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here (.ci/run installs it); cannot check the real tool")
    return path


def verify_unit(text: str, directory: Path) -> list[str]:
    """Problems `systemd-analyze verify` reports for this unit file (empty list: accepted)."""
    require_tool("systemd-analyze")
    path = directory / UNIT.name
    path.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Only lines about our unit count: a container's own units may produce unrelated noise.
    problems = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    if done.returncode != 0 and not problems:
        problems.append(f"exit {done.returncode}: {done.stderr.strip()}")
    return problems


def rendered_unit() -> str:
    """The unit as installed, but with ExecStart pointing at this checkout's console script."""
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    return text.replace(INSTALLED_BINARY, console_script())


class TestSystemdUnit:
    def test_systemd_analyze_verify_accepts_the_unit(self, tmp_path: Path) -> None:
        """No unknown keys, bad values or unusable ExecStart: verify prints nothing and exits 0."""
        assert verify_unit(rendered_unit(), tmp_path) == []

    def test_verify_check_catches_real_unit_errors(self, tmp_path: Path) -> None:
        """The check above can fail: a typo'd key and a bad address family are both reported."""
        broken = rendered_unit().replace(
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_BOGUS\nProtectSystemm=strict",
        )
        problems = verify_unit(broken, tmp_path)
        assert any("ProtectSystemm" in line for line in problems), problems
        assert any("AF_BOGUS" in line for line in problems), problems

    def test_notify_watchdog_restart_and_user(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """Type=notify from the main process, a watchdog, restarts on failure, a dedicated user."""
        service = unit["Service"]
        expected = {
            "Type": ["notify"],
            "NotifyAccess": ["main"],
            "WatchdogSec": ["30"],
            "Restart": ["on-failure"],
            "User": ["mlx-telemetry"],
            "Group": ["mlx-telemetry"],
            "EnvironmentFile": ["-/etc/mlx-telemetry/collector.env"],
            "RestartPreventExitStatus": ["2"],  # config errors exit 2; restarting cannot fix them
        }
        assert {key: service.get(key) for key in expected} == expected
        assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    def test_hardening(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """Read-only system except its own state and log directories, no privileges, few address families."""
        service = unit["Service"]
        for key in (
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "NoNewPrivileges",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "RestrictSUIDSGID",
        ):
            assert service.get(key) == ["yes"], key
        assert service["ProtectSystem"] == ["strict"]
        assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
        assert service["CapabilityBoundingSet"] == [""]
        assert service["ReadWritePaths"] == ["/var/lib/mlx-telemetry /var/log/mlx-telemetry"]
        assert service["StateDirectory"] == ["mlx-telemetry"]
        assert service["LogsDirectory"] == ["mlx-telemetry"]

    def test_stop_timeout_outlasts_the_shutdown_deadline(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """systemd must not SIGKILL a clean shutdown: TimeoutStopSec > --shutdown-timeout + the hard-stop grace."""
        argv = exec_start_argv(unit["Service"])
        shutdown = parse_duration(flag_value(argv, "--shutdown-timeout"))
        (timeout_stop,) = unit["Service"]["TimeoutStopSec"]
        assert systemd_seconds(timeout_stop) > shutdown + HARD_STOP_GRACE

    def test_exec_start_is_accepted_by_the_run_command(self, unit: dict[str, dict[str, list[str]]]) -> None:
        """Every flag in ExecStart exists and parses (a renamed option would break the unit at start)."""
        argv = exec_start_argv(unit["Service"])
        assert argv[0] == INSTALLED_BINARY and argv[1] == "run"
        ctx = run_command.make_context("run", argv[2:])
        assert ctx.params["config_path"] == Path("/etc/mlx-telemetry/collector.toml")
        assert ctx.params["log__format"] == "json"
        assert ctx.params["jsonl__dir"] == "/var/log/mlx-telemetry"

    def test_env_example_is_valid_environment_file_syntax(self) -> None:
        """Every setting line is KEY=VALUE with a shell-style name and no trailing comment."""
        settings = [
            line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        assert settings
        for line in settings:
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
            assert " #" not in value, f"systemd would keep the comment in the value: {line}"

    def test_env_example_names_only_variables_the_collector_reads(self) -> None:
        """A renamed setting must not leave operators with a silently ignored variable."""
        names = set(re.findall(r"^#?(TELEMETRY_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
        assert "TELEMETRY_REDIS_PASSWORD" in names
        flags = {setting.envvar for setting in cli_settings()}
        sources = "".join(path.read_text() for path in (ROOT / "collector").rglob("*.py"))
        # NAME_FILE is read wherever a secret NAME is (collector.redisconn.secret_from_env).
        unknown = {name for name in names - flags if f'"{name.removesuffix("_FILE")}' not in sources}
        assert unknown == set()

    @pytest.mark.slow
    def test_exec_start_runs_as_systemd_would(self, tmp_path: Path, redis_url: str) -> None:
        """ExecStart with the example config, under a notify socket and watchdog: READY=1,
        WATCHDOG=1, then SIGTERM gives STOPPING=1 and exit 0 within TimeoutStopSec."""
        argv = exec_start_argv(parse_unit(rendered_unit())["Service"])
        shutil.copy(EXAMPLE_CONFIG, tmp_path / "collector.toml")  # as installed in /etc/mlx-telemetry
        argv[argv.index("--config") + 1] = str(tmp_path / "collector.toml")
        argv[argv.index("--jsonl-dir") + 1] = str(tmp_path / "logs")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify.sock"))
        notify.settimeout(60)
        env = {
            "PATH": "/usr/bin:/bin",
            "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
            "WATCHDOG_USEC": "2000000",
            "INVOCATION_ID": "0" * 32,
            "TELEMETRY_REDIS_URL": redis_url,
        }
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            seen: list[str] = []
            while "WATCHDOG=1" not in seen:
                seen += notify.recv(4096).decode().split("\n")
            assert "READY=1" in seen
            assert seen.index("READY=1") < seen.index("WATCHDOG=1")
            proc.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in seen:
                seen += notify.recv(4096).decode().split("\n")
            (timeout_stop,) = parse_unit(UNIT.read_text())["Service"]["TimeoutStopSec"]
            assert proc.wait(timeout=systemd_seconds(timeout_stop)) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate()[0].decode(errors="replace")
            notify.close()
        assert '"event": "collector_ready"' in output, output


def compose_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_tool("docker-compose")
    return subprocess.run(
        [binary, "-f", str(path), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=path.parent,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", **(env or {})},
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with docker-compose and mlx-lm")
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


class TestCompose:
    def test_docker_compose_config_accepts_the_file(self, compose: dict[str, Any]) -> None:
        """Debian's docker-compose parses and validates it: two services and a Redis data volume."""
        assert set(compose["services"]) == {"redis", "collector"}
        assert "redis-data" in compose["volumes"]

    def test_docker_compose_config_rejects_a_broken_file(self, tmp_path: Path) -> None:
        """The validation above is real: an unknown depends_on condition is refused."""
        broken = tmp_path / "docker-compose.yml"
        broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: when_ready"))
        done = compose_config(broken)
        assert done.returncode != 0
        assert "condition" in done.stderr

    def test_redis_keeps_an_aof_and_has_a_healthcheck(self, compose: dict[str, Any]) -> None:
        """Un-acked entries survive a Redis restart, and readiness is `redis-cli ping`."""
        redis = compose["services"]["redis"]
        command = redis["command"]
        assert command[command.index("--appendonly") + 1] == "yes"
        assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
        assert redis["restart"] == "unless-stopped"
        assert any(volume.endswith(":/data:rw") for volume in redis["volumes"])

    def test_collector_waits_for_healthy_redis_and_checks_its_own_health(self, compose: dict[str, Any]) -> None:
        """The collector starts only after Redis is healthy and is probed with `telemetry-collector health`."""
        collector = compose["services"]["collector"]
        assert collector["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert collector["healthcheck"]["test"] == ["CMD", "telemetry-collector", "health", "--max-dead", "1000"]
        assert collector["build"]["context"] == str(ROOT)
        assert collector["restart"] == "unless-stopped"
        assert collector["environment"]["TELEMETRY_REDIS_URL"] == "redis://redis:6379/0"
        assert f"{ROOT / 'logs'}:/app/logs:rw" in collector["volumes"]

    def test_stop_grace_period_outlasts_the_shutdown_deadline(self, compose: dict[str, Any]) -> None:
        """Docker must not SIGKILL a clean shutdown: grace > shutdown timeout + the hard-stop grace."""
        collector = compose["services"]["collector"]
        shutdown = parse_duration(collector["environment"]["TELEMETRY_SHUTDOWN_TIMEOUT"])
        assert parse_duration(collector["stop_grace_period"]) > shutdown + HARD_STOP_GRACE
        assert collector["stop_signal"] == "SIGTERM"

    def test_collector_command_is_accepted_by_the_run_command(self, compose: dict[str, Any]) -> None:
        """The compose command's flags exist on `run` (ENTRYPOINT is telemetry-collector)."""
        command = compose["services"]["collector"]["command"]
        assert command[0] == "run"
        ctx = run_command.make_context("run", command[1:])
        assert ctx.params["log__format"] == "json"
        assert ctx.params["jsonl__dir"] == "/app/logs"

    def test_user_follows_telemetry_uid(self) -> None:
        """Files in ./logs can belong to the operator: TELEMETRY_UID/GID pick the container user."""
        yaml = pytest.importorskip("yaml")
        done = compose_config(COMPOSE, {"TELEMETRY_UID": "1234", "TELEMETRY_GID": "5678"})
        assert done.returncode == 0, done.stderr
        assert yaml.safe_load(done.stdout)["services"]["collector"]["user"] == "1234:5678"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical]


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    return instructions[starts[-1] :]


class TestDockerfile:
    def test_runs_telemetry_collector_as_non_root_with_json_logs(self) -> None:
        """The runtime stage drops to an unprivileged numeric user and starts `run --log-format json`."""
        stage = final_stage(dockerfile_instructions())
        users = [args for op, args in stage if op == "USER"]
        assert users and users[-1].split(":")[0] not in ("0", "root")
        assert users[-1].split(":")[0].isdigit()
        assert ("ENTRYPOINT", '["telemetry-collector"]') in stage
        assert ("CMD", '["run", "--log-format", "json"]') in stage
        assert ("STOPSIGNAL", "SIGTERM") in stage

    def test_build_context_keeps_what_the_copies_need(self) -> None:
        """.dockerignore is an allow-list that re-includes every COPY source (and nothing like logs/)."""
        patterns = [
            line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        assert patterns[0] == "*"
        included = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
        sources = {
            source
            for op, args in dockerfile_instructions()
            if op == "COPY" and not args.startswith("--from")
            for source in args.split()[:-1]
        }
        assert sources == {"pyproject.toml", "README.md", "emitters", "collector"}
        assert sources <= included
        assert all((ROOT / source).exists() for source in sources)
        assert "logs" not in included and "tests" not in included

    @pytest.mark.slow
    def test_the_copied_sources_build_an_installable_wheel(self, tmp_path: Path) -> None:
        """What the build stage COPYs is enough for `pip install .`: a wheel with both packages and the script."""
        context = tmp_path / "context"
        context.mkdir()
        for source in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / source, context / source)
        for package in ("emitters", "collector"):
            shutil.copytree(ROOT / package, context / package, ignore=shutil.ignore_patterns("__pycache__"))
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(context)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        (wheel,) = (tmp_path / "dist").glob("mlx_telemetry-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            entry_points = next(n for n in names if n.endswith("entry_points.txt"))
            assert "telemetry-collector = collector.cli:main" in archive.read(entry_points).decode()
        assert "collector/commands/run.py" in names and "emitters/emitter.py" in names
        assert "collector/sinks/jsonl.py" in names
