"""Where aggregated-but-unexported metric state survives a crash.

The choice (issue #12): instead of holding every entry unacked until the
interval that aggregated it is exported (minutes of pending entries, and
claims by other collectors in the meantime), the sink persists the whole
aggregation state of its interval to Redis after each batch, *before* the
daemon acks that batch. So:

- crash before the save: the batch is not acked, it is read again and
  aggregated once;
- crash between the save and the ack: it is aggregated twice (at most one
  batch of duplicates, as for logs);
- crash with intervals not yet exported: their state is in Redis. A collector
  restarted under the same consumer name takes its own state back; any other
  collector adopts the state of an instance whose heartbeat has expired (one
  atomic Lua call, so two collectors never both take it) and exports it under
  the dead instance's identity, so each series keeps a single writer.

Keys: ``{prefix}:otlp:metrics:{owner}:{origin}``; the owner is the collector
exporting it, the origin the one that aggregated it.
"""

from __future__ import annotations

from typing import Optional, Protocol

import redis

from emitters.streams import stream_names

__all__ = ["MetricStore", "MemoryMetricStore", "RedisMetricStore"]

# KEYS[1] the orphan, KEYS[2] its owner's heartbeat, KEYS[3] the new key: move it unless the owner lives.
_ADOPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[3])
return 1
"""


class MetricStore(Protocol):
    def save(self, origin: str, state: Optional[bytes]) -> None:
        """Persist ``origin``'s state (None: nothing left, delete it). Raises redis errors."""

    def load(self) -> dict[str, bytes]:
        """States this collector owns or adopts now, by origin."""


class MemoryMetricStore:
    """No Redis at hand (a sink used on its own): state lives as long as the process."""

    def save(self, origin: str, state: Optional[bytes]) -> None:
        pass

    def load(self) -> dict[str, bytes]:
        return {}


class RedisMetricStore:
    def __init__(self, client: redis.Redis, prefix: str, instance: str) -> None:
        self._client = client
        self._names = stream_names(prefix)
        self._base = f"{prefix}:otlp:metrics:"
        self._instance = instance
        self._adopt = client.register_script(_ADOPT)

    def _key(self, owner: str, origin: str) -> str:
        return f"{self._base}{owner}:{origin}"

    def save(self, origin: str, state: Optional[bytes]) -> None:
        key = self._key(self._instance, origin)
        if state is None:
            self._client.delete(key)
        else:
            self._client.set(key, state)

    def load(self) -> dict[str, bytes]:
        states: dict[str, bytes] = {}
        for raw in self._client.scan_iter(match=f"{self._base}*", count=500):
            key = raw.decode() if isinstance(raw, bytes) else raw
            owner, sep, origin = key[len(self._base):].partition(":")
            if not sep:
                continue
            mine = self._key(self._instance, origin)
            if owner != self._instance:
                heartbeat = self._names.heartbeat(owner)
                if not self._adopt(keys=[key, heartbeat, mine]):
                    continue
            value = self._client.get(mine)
            if value is not None:
                states[origin] = value
        return states
