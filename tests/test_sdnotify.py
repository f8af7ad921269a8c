"""sd_notify over a real unix datagram socket, as systemd provides it."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Iterator

import pytest

from collector.sdnotify import SystemdNotifier


class NotifySocket:
    """The receiving end systemd would own: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(10)

    @property
    def env_value(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def receive(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(10)
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(str(tmp_path / "notify.sock"))
    yield receiver
    receiver.close()


@pytest.fixture
def abstract_notify_socket() -> Iterator[NotifySocket]:
    receiver = NotifySocket("\0mlx-telemetry-test-" + secrets.token_hex(8))
    yield receiver
    receiver.close()


class TestSystemdNotifier:
    def test_lifecycle_messages_arrive_on_a_path_socket(self, notify_socket: NotifySocket) -> None:
        """READY, STATUS, WATCHDOG and STOPPING each arrive as one datagram of KEY=VALUE lines."""
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value})
        assert notifier.enabled
        assert notifier.ready(status="consuming telemetry:events")
        assert notify_socket.receive() == ["READY=1", "STATUS=consuming telemetry:events"]
        assert notifier.status("backpressure: otlp unavailable")
        assert notify_socket.receive() == ["STATUS=backpressure: otlp unavailable"]
        assert notifier.watchdog()
        assert notify_socket.receive() == ["WATCHDOG=1"]
        assert notifier.stopping()
        assert notify_socket.receive() == ["STOPPING=1"]
        assert (notifier.sent, notifier.errors) == (4, 0)
        notifier.close()

    def test_abstract_namespace_socket(self, abstract_notify_socket: NotifySocket) -> None:
        """NOTIFY_SOCKET=@name addresses the abstract namespace, as systemd uses in containers."""
        assert abstract_notify_socket.env_value.startswith("@")
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": abstract_notify_socket.env_value})
        assert notifier.ready()
        assert abstract_notify_socket.receive() == ["READY=1"]
        notifier.close()

    def test_newlines_in_status_cannot_inject_assignments(self, notify_socket: NotifySocket) -> None:
        """A status text with a newline stays one STATUS line and cannot claim READY=1."""
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value})
        notifier.status("redis error:\nREADY=1")
        assert notify_socket.receive() == ["STATUS=redis error: READY=1"]
        notifier.close()

    def test_without_notify_socket_everything_is_a_no_op(self) -> None:
        """Outside systemd no socket is opened and nothing is counted as an error."""
        notifier = SystemdNotifier.from_env({"WATCHDOG_USEC": "30000000"})
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        assert not notifier.ready() and not notifier.watchdog() and not notifier.stopping()
        assert (notifier.sent, notifier.errors) == (0, 0)

    def test_send_errors_are_counted_not_raised(self, tmp_path: Path, notify_socket: NotifySocket) -> None:
        """A vanished socket costs a counted error; sending works again once it is back."""
        missing = str(tmp_path / "gone.sock")
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": missing})
        assert not notifier.ready()
        assert not notifier.watchdog()
        assert (notifier.sent, notifier.errors) == (0, 2)
        notifier.address = notify_socket.address  # the manager is back (re-exec)
        assert notifier.watchdog()
        assert notify_socket.receive() == ["WATCHDOG=1"]
        assert (notifier.sent, notifier.errors) == (1, 2)
        notifier.close()

    def test_a_full_receive_queue_does_not_block(self, notify_socket: NotifySocket) -> None:
        """When systemd does not drain the socket, sends fail fast and are counted instead of hanging."""
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value})
        results = [notifier.watchdog() for _ in range(5000)]
        assert results[0] is True
        assert results.count(False) == notifier.errors > 0
        assert notify_socket.pending()
        notifier.close()

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({"WATCHDOG_USEC": "30000000"}, 15.0),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
            ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
            ({"WATCHDOG_USEC": "0"}, None),
            ({"WATCHDOG_USEC": "soon"}, None),
            ({}, None),
        ],
    )
    def test_watchdog_interval_is_half_the_timeout_for_this_process(
        self, notify_socket: NotifySocket, environ: dict[str, str], expected: float | None
    ) -> None:
        """WATCHDOG_USEC/2 in seconds, but only when WATCHDOG_PID is unset or names this process."""
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": notify_socket.env_value, **environ})
        assert notifier.watchdog_interval == expected

    def test_rejects_a_non_positive_watchdog(self) -> None:
        """A direct construction with a nonsense timeout fails naming the parameter."""
        with pytest.raises(ValueError, match="watchdog_usec: must be > 0"):
            SystemdNotifier("/run/notify", watchdog_usec=0)
