"""The README, run: every command and snippet is extracted from README.md (never copied here) and executed.

What each kind of fenced block does here:

- ``bash`` / ``console`` (``$ `` lines): every command runs in ``bash -c`` with
  this checkout's ``telemetry-collector``, in a scratch directory, after the
  rewrites in :data:`REWRITES` (your Redis -> the test's redis-server, ``/opt``
  and ``/etc`` -> scratch directories, offline ``pip``). A command that exits
  within :data:`START_WINDOW` must exit 0 or 1 (1: nothing found / degraded; 2
  would mean the README's arguments, config or setup are wrong). One still
  running then (``run``, ``tail``, servers) has started: it gets Ctrl-C and
  must exit cleanly. :data:`SKIPS` lists what cannot run here, each with a reason.
- ``python``: each block runs as a script against the test's Redis (the mlx-lm
  one with the tiny offline model in place of ``/models/...``).
- ``toml``: each block is a config file that ``check-config`` must accept.
- ``json`` / ``yaml``: must parse.
- ``text`` and untyped blocks are output samples and diagrams: not run; the demo's
  sample summary must have the same lines (labels) as a real demo run.
- Inline ``telemetry-collector ...`` spans in the prose: the subcommand must
  exist and every ``--flag`` named must be in its ``--help``.

A block in a language with no runner fails the test: add a runner or a skip.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import pytest

from collector.embedded import RedisProcess
from collector.exitcodes import EXIT_CODES
from tests.support.cli_faults import ROOT, clean_env

README = ROOT / "README.md"
START_WINDOW = 4.0  # seconds a long-running command gets before it counts as started
ONE_SHOT_TIMEOUT = 180.0  # any other command must end by itself within this
# Commands that run until Ctrl-C: alive after START_WINDOW means started.
LONG_RUNNING = [
    r"telemetry-collector (run|tail|ui)\b",
    r"-m emitters\.mlx\.server\b",
    r"telemetry-collector demo --duration 0\b",
]
SHELL = {"bash", "sh", "shell", "console"}
# Output samples, diagrams and formats shown as examples: not run.
SAMPLES = {"text", "", "http", "ini", "systemd", "promql", "prometheus", "diff"}

# (pattern, why): a command part matching the pattern is not run.
SKIPS: list[tuple[str, str]] = [
    (r"^pip install\b", "installs from the network into the current environment (CI's .ci/run does this)"),
    (r"^python -m pytest\b", "is this test suite"),
    (r"\bdocker(-compose)?\b", "needs a Docker engine; tests/test_deploy.py validates docker-compose.yml"),
    (r"^(useradd|systemctl|journalctl)\b", "changes the host: needs root and a running systemd"),
    (r"^echo \$\?", "prints the previous exit status, which this test checks itself"),
    (r"<[^>]+>", "a placeholder for your own value"),
    (r"=\.\.\.(\s|$)", "a placeholder for your own secret"),
    (r"^telemetry-collector dlq list \| show", "a synopsis of the dlq subcommands"),
    (r"^(curl|wget|open|xdg-open)\b", "talks to a server started in another terminal"),
]

# (pattern, replacement, why), applied in order to every command part (``{x}`` from the test's world).
REWRITES: list[tuple[str, str, str]] = [
    (r"redis://(localhost|redis):6379/0", "{redis_url}", "your Redis -> the test's redis-server"),
    (r"^python3? -m venv ", "{python} -m venv --system-site-packages ", "offline: the venv sees the installed dependencies"),
    (r"/bin/pip install ", "/bin/pip install -q --no-deps --no-build-isolation --no-index ", "offline install"),
    (r"/opt/mlx-telemetry", "{scratch}/opt/mlx-telemetry", "not the host's /opt"),
    (r"/etc/mlx-telemetry", "{scratch}/etc/mlx-telemetry", "not the host's /etc"),
    (r"install-systemd\b", "install-systemd --unit-dir {scratch}/units --force", "not /etc/systemd; --force: the scratch venv is under /tmp, hidden by PrivateTmp"),
    (r" -o root -g mlx-telemetry", "", "no mlx-telemetry group here"),
    (r"(?<![\w/.-])deploy/", "{root}/deploy/", "paths relative to the checkout"),
    (r"pip install (-q --no-deps --no-build-isolation --no-index )?\.(\s|$)", r"pip install \1{source}\2", "a copy of the checkout (pip builds in the source tree)"),
    (r"/models/[\w.-]+", "{model}", "a model of yours -> the tiny offline model"),
    (r"^telemetry-collector demo\b", "telemetry-collector demo --duration 3", "the 20 s demo shortened; its summary is still checked"),
]

# Variables snippets read that the README tells you to set.
SNIPPET_ENV = {"TELEMETRY_HASH_SECRET": "readme-test-secret"}


class Block(NamedTuple):
    lang: str
    text: str
    line: int
    section: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'plain'}"


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    section = ""
    lines = README.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.match(r"^(```+)\s*([\w+-]*)", line)
        if fence:
            start = index
            body: list[str] = []
            index += 1
            while index < len(lines) and not lines[index].startswith(fence.group(1)):
                body.append(lines[index])
                index += 1
            blocks.append(Block(fence.group(2).lower(), "\n".join(body), start + 1, section))
        index += 1
    return blocks


BLOCKS = readme_blocks()


def shell_commands(block: Block) -> list[str]:
    """The commands of a shell block: console ``$`` lines, or every non-comment bash line; ``\\`` joins."""
    commands: list[str] = []
    pending = ""
    for raw in block.text.splitlines():
        line = raw.rstrip()
        if block.lang == "console":
            if not pending and not line.startswith("$ "):
                continue  # output shown in the README
            line = line[2:] if not pending else line
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    return commands


def strip_comment(command: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = ""
    for index, char in enumerate(command):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or command[index - 1].isspace()):
            return command[:index].rstrip()
    return command


def parts(command: str) -> list[str]:
    """`a && b; c` -> [a, b, c] (the README's commands keep && and ; outside quotes)."""
    command = strip_comment(command)
    return [part.strip() for part in re.split(r"\s+&&\s+|\s*;\s+|;\s*$", command) if part.strip()]


def skip_reason(part: str) -> Optional[str]:
    words = part.split()
    while words and (re.match(r"^[A-Z_]+=", words[0]) or words[0] == "sudo"):
        words.pop(0)
    head = " ".join(words)
    for pattern, why in SKIPS:
        if re.search(pattern, head) or re.search(pattern, part):
            return why
    return None


class World(NamedTuple):
    redis: RedisProcess
    scratch: Path

    def values(self) -> dict[str, str]:
        return {
            "redis_url": self.redis.url,
            "scratch": str(self.scratch),
            "python": sys.executable,
            "root": str(ROOT),
            "source": str(self.scratch / "source"),
        }

    def rewrite(self, part: str) -> str:
        values = self.values()
        if "/models/" in part:
            from collector.tinymodel import tiny_model_path

            values["model"] = str(tiny_model_path())
        for pattern, replacement, _why in REWRITES:
            if re.search(pattern, part):
                part = re.sub(pattern, replacement.format(**values) if "{" in replacement else replacement, part)
        return part

    def env(self, part: str, exports: dict[str, str]) -> dict[str, str]:
        env = clean_env({**SNIPPET_ENV, **exports})
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        if not re.search(r"telemetry-collector (run|demo)\b", part):
            # The tools default to localhost:6379; run and demo start their own Redis when none is set.
            env["TELEMETRY_REDIS_URL"] = self.redis.url
        return env


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    scratch = tmp_path_factory.mktemp("readme")
    (scratch / "etc" / "mlx-telemetry").mkdir(parents=True)
    shutil.copy(ROOT / "deploy" / "collector.example.toml", scratch / "etc" / "mlx-telemetry" / "collector.toml")
    (scratch / "redis").mkdir()
    source = scratch / "source"  # what the Dockerfile copies, too
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("collector", "emitters"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    redis = RedisProcess(data_dir=scratch / "redis").start()
    _seed(redis.url)
    yield World(redis, scratch)
    redis.close()


def _seed(url: str) -> None:
    """A request like the one the README's tool examples look at (req-8f2c)."""
    from emitters import Emitter

    emitter = Emitter("engine", url, hash_secret="readme")
    with emitter.context(request_id="req-8f2c", job_id="job-17"):
        emitter.generation_started("llama-3b-4bit", "req-8f2c", prompt_tokens=118, max_tokens=256)
        emitter.generation_completed("llama-3b-4bit", "req-8f2c", 118, 256, 2140.0, ttft_ms=95.0)
        try:
            raise ConnectionResetError("upstream closed after 2152ms")
        except ConnectionResetError as exc:
            emitter.error(exc)
    emitter.close()


class Outcome(NamedTuple):
    code: int
    output: str
    started: bool  # still running after START_WINDOW, then stopped with Ctrl-C


def run_part(part: str, env: dict[str, str], cwd: Path) -> Outcome:
    log = cwd / "command.log"
    long_running = any(re.search(pattern, part) for pattern in LONG_RUNNING)
    with log.open("w") as out:
        process = subprocess.Popen(
            ["bash", "-c", part], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code, started = process.wait(timeout=START_WINDOW if long_running else ONE_SHOT_TIMEOUT), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as the README says
            if not long_running:
                process.wait()
                raise AssertionError(f"{part!r} still ran after {ONE_SHOT_TIMEOUT:.0f}s: add it to LONG_RUNNING if it is a daemon")
            try:
                code, started = process.wait(timeout=60), True
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    return Outcome(code, log.read_text(), started)


SHELL_BLOCKS = [block for block in BLOCKS if block.lang in SHELL]


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[block.id for block in SHELL_BLOCKS])
def test_shell_block_runs(block: Block, world: World, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Every command of the block runs as documented (or is skipped with a listed reason)."""
    exports: dict[str, str] = {}
    ran, skipped = [], []
    for command in shell_commands(block):
        for part in parts(command):
            why = skip_reason(part)
            if why:
                skipped.append(f"{part!r}: {why}")
                continue
            part = world.rewrite(part)
            export = re.match(r"^export (\w+)=(\S*)", part)
            if export:
                exports[export.group(1)] = export.group(2)
                continue
            outcome = run_part(part, world.env(part, exports), tmp_path)
            where = f"README line {block.line} ({block.section}): {part}\n{outcome.output[-3000:]}"
            assert "Traceback" not in outcome.output, where
            allowed = {0, 128 + signal.SIGINT, -signal.SIGINT} if outcome.started else {0, 1}
            assert outcome.code in allowed, f"exit {outcome.code}: {where}"
            ran.append(part)
            _after(part, outcome, block, world)
    if not ran:
        pytest.skip("; ".join(skipped) or "no commands")


def _after(part: str, outcome: Outcome, block: Block, world: World) -> None:
    """Extra checks for commands whose result the README describes."""
    if re.search(r"telemetry-collector demo\b", part):
        assert "demo finished" in outcome.output, outcome.output[-3000:]
        _compare_demo_sample(block, outcome.output)
    if "install-systemd" in part:
        _verify_unit(world.scratch / "units" / "mlx-telemetry-collector.service", world)


def _labels(text: str) -> list[str]:
    """The summary's row labels: ``  requests        80 sent`` -> ``requests``."""
    return [match.group(1) for line in text.splitlines() if (match := re.match(r"^  (\S+(?: \S+)?)\s{2,}", line))]


def _compare_demo_sample(block: Block, output: str) -> None:
    samples = [b for b in BLOCKS if b.section == block.section and b.lang in SAMPLES and b.text.startswith("demo finished")]
    assert samples, "the README shows no demo summary next to the demo command"
    real = output[output.index("demo finished"):]
    assert _labels(samples[0].text) == _labels(real), f"README sample is stale; a real run prints:\n{real}"


def _verify_unit(unit: Path, world: World) -> None:
    """The unit written from the scratch venv: ExecStart in that venv, accepted by systemd-analyze verify."""
    text = unit.read_text()
    venv_binary = world.scratch / "opt" / "mlx-telemetry" / "bin" / "telemetry-collector"
    assert f"ExecStart={venv_binary} run " in text, text
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here (.ci/run installs it)")
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if unit.name in line]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr


PYTHON_BLOCKS = [block for block in BLOCKS if block.lang == "python"]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.id for block in PYTHON_BLOCKS])
def test_python_block_runs(block: Block, world: World, tmp_path: Path) -> None:
    """The snippet runs against a real Redis and its events arrive there."""
    code = world.rewrite(block.text)
    if "mlx_lm" in code:
        pytest.importorskip("mlx_lm", reason="needs the mlx extra")
        from collector.tinymodel import tiny_model_path

        code = re.sub(r"/models/[\w.-]+", str(tiny_model_path()), code)  # the tiny offline model
    before = _stream_lengths(world)
    script = tmp_path / "snippet.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], env=world.env("", {}), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, f"README line {block.line}:\n{output[-3000:]}"
    if "Emitter(" in code:
        assert _stream_lengths(world) > before, "the snippet's events did not reach Redis"


def _stream_lengths(world: World) -> int:
    client = world.redis.client()
    try:
        return sum(client.xlen(key) for key in ("telemetry:events", "telemetry:errors"))
    finally:
        client.close()


TOML_BLOCKS = [block for block in BLOCKS if block.lang == "toml"]


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[block.id for block in TOML_BLOCKS])
def test_toml_block_is_a_valid_config(block: Block, world: World, tmp_path: Path) -> None:
    """check-config accepts it (secrets it names through headers_env are set to dummies)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10
        import tomli as tomllib

    secrets = list(_headers_env(tomllib.loads(block.text)))
    config = tmp_path / "readme.toml"
    config.write_text(block.text)
    env = world.env("", {name: "dummy" for name in secrets})
    done = subprocess.run(["telemetry-collector", "check-config", str(config)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"README line {block.line}: {done.stderr}"


def _headers_env(node: object) -> Iterator[str]:
    """Names of the variables a config's ``headers_env`` tables point at."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "headers_env" and isinstance(value, dict):
                yield from (str(name) for name in value.values())
            else:
                yield from _headers_env(value)
    elif isinstance(node, list):
        for item in node:
            yield from _headers_env(item)


def test_every_block_has_a_runner() -> None:
    """A new kind of block needs a runner here (or a line in SAMPLES)."""
    known = SHELL | SAMPLES | {"python", "toml", "json", "yaml", "yml"}
    unknown = [block.id for block in BLOCKS if block.lang not in known]
    assert unknown == [], f"no runner for these README blocks: {unknown}"
    for block in BLOCKS:
        if block.lang == "json":
            json.loads(block.text)
        elif block.lang in ("yaml", "yml"):
            import yaml

            yaml.safe_load(block.text)


INLINE = sorted(set(re.findall(r"`(telemetry-collector [^`]+)`", README.read_text())))


@pytest.mark.parametrize("span", INLINE)
def test_inline_command_names_real_options(span: str) -> None:
    """`telemetry-collector sub --flag` in the prose: the subcommand exists and takes every flag named."""
    from click.testing import CliRunner

    from collector.cli import main

    words = [word for word in shlex.split(span.split("#")[0])[1:]]
    path: list[str] = []
    for word in words:
        if word.startswith("-") or not re.match(r"^[a-z][a-z-]*$", word):
            break
        candidate = [*path, word]
        if CliRunner().invoke(main, [*candidate, "--help"]).exit_code != 0:
            break
        path = candidate
    assert path, f"{span}: no such command"
    help_text = CliRunner().invoke(main, [*path, "--help"]).output
    for flag in (word.split("=")[0] for word in words if word.startswith("--")):
        assert re.search(rf"(^|[\s/,\[]){re.escape(flag)}\b", help_text, re.M), f"{span}: {flag} not in '{' '.join(path)} --help'"


def test_exit_code_table_matches_the_code() -> None:
    """The README's exit-code table says what collector.exitcodes (and every --help) says."""
    rows = dict(re.findall(r"^\| ([012]) \| (.+?) \|$", README.read_text(), re.M))
    assert sorted(int(code) for code in rows) == [code for code, _ in EXIT_CODES]
    for code, meaning in EXIT_CODES:
        assert all(word in rows[str(code)] for word in re.findall(r"\w+", meaning)), (code, rows[str(code)], meaning)


def _normalized(line: str) -> str:
    return re.sub(r"=/\S+", "=PATH", re.sub(r"redis://[^\s)]+", "URL", line))


def test_error_samples_are_what_the_commands_print(world: World, tmp_path: Path) -> None:
    """The README's `Error: ...` samples, reproduced: a host:port URL, a password-protected Redis, a directory as password file."""
    (sample_block,) = [b for b in BLOCKS if b.lang in SAMPLES and b.text.startswith("Error: ")]
    samples = [_normalized(line) for line in sample_block.text.splitlines()]
    protected = RedisProcess(password="readme", data_dir=tmp_path).start()
    try:
        cases = [
            (["search"], {"TELEMETRY_REDIS_URL": "localhost:6379"}),
            (["run", "--redis-url", f"redis://127.0.0.1:{protected.port}/0"], {}),
            (["search"], {"TELEMETRY_REDIS_URL": world.redis.url, "TELEMETRY_REDIS_PASSWORD_FILE": str(tmp_path)}),
        ]
        real = []
        for args, extra in cases:
            env = {**world.env("", {}), **extra}
            done = subprocess.run(["telemetry-collector", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            real.append(_normalized(done.stderr.strip()))
    finally:
        protected.close()
    assert real == samples
