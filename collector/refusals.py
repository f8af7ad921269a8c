"""Redis answering, but refusing the write: the daemon waits it out, never exits.

A refusal is an error reply that says nothing about the entry or the command
and everything about the server's state: out of memory under ``noeviction``
(OOM), a replica (READONLY), an ACL that lacks a permission (NOPERM), a failed
RDB save with ``stop-writes-on-bgsave-error`` (MISCONF). Retrying the same
batch later is the fix; dropping it would lose data and exiting would only
restart into the same refusal.
"""

from __future__ import annotations

from typing import Optional

import redis

__all__ = ["refusal", "REFUSAL_ACTIONS"]

# What an operator does about each refusal; the log line and `health` say it.
REFUSAL_ACTIONS = {
    "OOM": "Redis reached maxmemory with noeviction: free memory, raise maxmemory, or let the collector trim",
    "READONLY": "the Redis URL points at a replica: point redis.url at the primary",
    "NOPERM": "the Redis user lacks a permission: grant it the stream, hash and script commands",
    "MISCONF": "Redis stops writes after a failed RDB save: fix its disk or stop-writes-on-bgsave-error",
    "NOREPLICAS": "Redis has too few replicas for min-replicas-to-write: restore a replica",
}
# redis-py strips the code from these replies and says it with the class instead.
_BY_CLASS: tuple[tuple[type[redis.ResponseError], str], ...] = (
    (redis.exceptions.OutOfMemoryError, "OOM"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.NoPermissionError, "NOPERM"),
)


def refusal(exc: redis.ResponseError) -> Optional[str]:
    """The refusal code (``OOM``, ``READONLY``, ...) of ``exc``, or None for another error."""
    for cls, code in _BY_CLASS:
        if isinstance(exc, cls):
            return code
    code = str(exc).split(" ", 1)[0]
    return code if code in REFUSAL_ACTIONS else None
