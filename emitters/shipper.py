"""The Redis shipper: one Lua script call per batch.

Each batch is written by one script call that first claims a random batch
token with ``SET NX EX``. If Redis hangs (SIGSTOP, a stalled network) the
client times out without knowing whether the batch landed; it retries the
same batch with the same token, and the script skips a batch it has already
applied. That is what makes delivery exactly-once across hangs and restarts
(within the token TTL), not merely at-least-once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from emitters.streams import PAYLOAD_FIELD, SHIP_BATCH, SHIP_BATCH_SHA, StreamNames, ship_keys

if TYPE_CHECKING:
    import redis.connection

try:
    # redis-py's own packer makes a Python pass over every argument first (~0.2 us each).
    from hiredis import pack_command as _pack_command
except ImportError:  # redis-py then packs in Python
    _pack_command = None

__all__ = ["RedisShipper", "ShipFailed", "RedisUnavailable", "RedisRefused", "TO_EVENTS", "TO_ERRORS", "TO_LIVE", "TO_REPORT"]

# Routes of encoded events: the events stream, the errors stream, the live channel;
# a client report goes to the events stream but is not one of the host's events.
TO_EVENTS, TO_ERRORS, TO_LIVE, TO_REPORT = "e", "x", "l", "r"

# The batch script and its keys live with the stream layout (emitters.streams): it also
# guards the stream cap and books what trimming takes (loss accounting).

# Connections a forked child inherited: never closed nor collected there, because
# closing one takes locks the parent's threads may have held at fork time.
_INHERITED: list[Any] = []


class ShipFailed(Exception):
    reason = "redis_unavailable"


class RedisUnavailable(ShipFailed):
    """No answer: connection refused, reset, or timed out. Retried without bound."""


class RedisRefused(ShipFailed):
    """Redis answered with an error (OOM, READONLY, NOPERM): retried a few times, then counted."""

    reason = "redis_refused"


class RedisShipper:
    def __init__(
        self,
        url: str,
        options: Mapping[str, Any],
        names: StreamNames,
        *,
        events_maxlen: int,
        errors_maxlen: int,
        token_ttl: int,
        encode: Callable[[Any], bytes],
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._names = names
        self._head = [token_ttl, events_maxlen, errors_maxlen, names.live, PAYLOAD_FIELD]
        self._encode = encode
        # Retries are ours: capped, jittered, and never on the caller's thread.
        options = {"retry": Retry(NoBackoff(), 0), **options}
        pool = redis.ConnectionPool.from_url(url, **options)
        self._new_connection: Callable[[], "redis.connection.AbstractConnection"] = (
            lambda: pool.connection_class(**pool.connection_kwargs)
        )
        # Only the worker ships, one batch at a time: it keeps one connection rather than
        # taking one from a pool per batch (~40 us of redis-py bookkeeping each time).
        # Unknown options fail here, at construction, not on the worker (nothing connects yet).
        self._connection: Optional["redis.connection.AbstractConnection"] = self._new_connection()

    def abandon_after_fork(self) -> None:
        if self._connection is not None:
            _INHERITED.append(self._connection)
        self._connection = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()

    def ship(self, token: str, items: Sequence[tuple[str, bytes]], meanwhile: Callable[[], None]) -> None:
        """One script call for the batch; ``meanwhile`` runs while Redis works on it.

        Sending and reading the reply are split so that encoding batch N+1
        overlaps Redis running batch N (about half of the emitter's time at
        full speed goes to waiting for that reply). Raises ShipFailed.
        """
        import redis

        args: list[Any] = list(self._head)
        live: list[bytes] = []
        for route, payload in items:
            if route == TO_LIVE:
                live.append(payload)
            else:
                args.append(TO_EVENTS if route == TO_REPORT else route)
                args.append(payload)
        if live:
            # One message for all of a batch's tokens: a PUBLISH per token costs
            # Redis (and, on a small machine, the engine's cores) ~20 us each.
            args.append(TO_LIVE)
            args.append(self._encode(live))
        keys = ship_keys(self._names, token)
        command = ("EVALSHA", SHIP_BATCH_SHA, len(keys), *keys, *args)
        connection = self._connection
        if connection is None:
            connection = self._connection = self._new_connection()
        try:
            # A broken connection was disconnected where it failed; this reconnects it.
            connection.send_packed_command([_pack_command(command)] if _pack_command else connection.pack_command(*command))
            meanwhile()
            try:
                connection.read_response()
            except redis.exceptions.NoScriptError:
                # A restarted Redis forgot the script; the batch token makes resending safe.
                connection.send_command("SCRIPT", "LOAD", SHIP_BATCH)
                connection.read_response()
                connection.send_command(*command)
                connection.read_response()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            connection.disconnect()
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except redis.ResponseError as exc:
            raise RedisRefused(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            connection.disconnect()  # a reply may be unread: the connection is not reusable
            raise
