"""systemd readiness, status and watchdog notifications (``Type=notify``).

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace), so no
libsystemd binding is needed. Outside systemd every call is a no-op.

A notification that cannot be sent is counted and logged, never raised: a
hiccup on the notify socket must not take down the daemon that it reports
on. (Missing watchdog pings will, by design, get it restarted.)
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Mapping

import structlog

__all__ = ["SystemdNotifier"]

log = structlog.get_logger("collector.sdnotify")


class SystemdNotifier:
    """Send ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1`` to systemd.

    ``address`` is the socket path, or ``\\0name`` for an abstract socket;
    ``None`` disables everything. ``watchdog_usec`` is systemd's watchdog
    timeout for this process (``None``: no watchdog).
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        if watchdog_usec is not None and watchdog_usec <= 0:
            raise ValueError(f"watchdog_usec: must be > 0, got {watchdog_usec}")
        self.address = address
        self.watchdog_usec = watchdog_usec if address else None
        self.sent = 0
        self.errors = 0
        self._failing = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> "SystemdNotifier":
        """The notifier systemd asked for through ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID``.

        ``WATCHDOG_PID`` naming another process (a parent that exec'd us
        without clearing it) means the watchdog is not ours to ping.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET") or None
        address = "\0" + raw[1:] if raw and raw.startswith("@") else raw
        watchdog_usec: int | None = None
        usec, owner = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec:
            try:
                parsed = int(usec)
                owner_pid = int(owner) if owner else None
            except ValueError:
                log.warning("sdnotify_bad_watchdog_env", watchdog_usec=usec, watchdog_pid=owner)
            else:
                mine = owner_pid is None or owner_pid == (os.getpid() if pid is None else pid)
                watchdog_usec = parsed if parsed > 0 and mine else None
        return cls(address, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half the timeout, as systemd recommends."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status(status))

    def status(self, text: str) -> bool:
        return self.notify(*self._status(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status(status))

    @staticmethod
    def _status(text: str | None) -> list[str]:
        # The message is newline-separated assignments: a newline in the text
        # could otherwise smuggle in READY=1 or MAINPID=.
        return [] if text is None else ["STATUS=" + " ".join(text.splitlines())]

    def notify(self, *assignments: str) -> bool:
        """Send one datagram; True when sent, False when disabled or it failed."""
        if self.address is None or not assignments:
            return False
        message = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    # A full receive queue must cost a counted error, not a stalled daemon.
                    self._socket.setblocking(False)
                self._socket.sendto(message, self.address)
            except OSError as exc:
                self.errors += 1
                if not self._failing:  # once per outage: the watchdog pings several times a minute
                    log.warning("sdnotify_send_failed", socket=self.address.replace("\0", "@"), error=str(exc))
                self._failing = True
                return False
            self.sent += 1
            if self._failing:
                log.info("sdnotify_send_recovered", errors=self.errors)
            self._failing = False
            return True

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
