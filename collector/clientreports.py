"""Engines' own losses, from their ``client.report`` events, kept in Redis for ``health``.

An emitter counts what it could not deliver (buffer full, invalid, Redis
unavailable, ...) and ships the counts as ``client.report`` events. The daemon
hands every delivered batch to :func:`record_client_reports`, which adds each
report's counts to a per-service hash, ``{prefix}:clientreports:{service}``
(reason -> total, ``dropped_total``, ``reports``, ``last_drop_ms``,
``last_host``, ``last_pid``), listed in the set ``{prefix}:clientreports``.
A report is counted once even when its entry is delivered twice: its event id
is claimed with ``SET NX`` in the same script. ``health`` reads the hashes
with :func:`read_client_drops`; the built-in ``engine-drops`` alert rule reads
the events themselves.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import msgspec
import redis

from collector.records import Record
from emitters.events import ClientReport
from emitters.streams import StreamNames

__all__ = ["ClientDrops", "record_client_reports", "read_client_drops", "recent_drop_reasons", "index_key", "service_key"]

# A redelivered entry comes back within the pending/claim cycle; two days covers the
# late-arrival window with room to spare.
_SEEN_TTL_S = 2 * 86400
# A service that stopped reporting drops falls out of health after a week.
_KEEP_S = 7 * 86400

# KEYS: seen-id key, service hash, index set. ARGV: seen ttl, keep ttl, service, ts ms, host, pid,
# dropped_total, then (reason, count) pairs.
_RECORD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 8, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[2], 'dropped_total', ARGV[7])
redis.call('HINCRBY', KEYS[2], 'reports', 1)
if tonumber(ARGV[7]) > 0 then
  redis.call('HSET', KEYS[2], 'last_drop_ms', ARGV[4])
end
redis.call('HSET', KEYS[2], 'last_host', ARGV[5], 'last_pid', ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return tonumber(ARGV[7])
"""


def index_key(names: StreamNames) -> str:
    return names.events.rsplit(":", 1)[0] + ":clientreports"


def service_key(names: StreamNames, service: str) -> str:
    return f"{index_key(names)}:{service}"


def record_client_reports(client: redis.Redis, names: StreamNames, records: Sequence[Record]) -> int:
    """Add the batch's client reports to the per-service totals; the drops newly counted."""
    reports = [record.event for record in records if isinstance(record.event, ClientReport)]
    if not reports:
        return 0
    script = client.register_script(_RECORD)
    counted = 0
    for report in reports:
        pairs: list[Any] = [item for reason, count in sorted(report.dropped.items()) for item in (reason, count)]
        keys = [f"{index_key(names)}:seen:{report.id}", service_key(names, report.service), index_key(names)]
        args = [_SEEN_TTL_S, _KEEP_S, report.service, report.ts // 1_000_000, report.host, report.pid,
                report.dropped_total, *pairs]  # fmt: skip
        counted += int(script(keys=keys, args=args))
    return counted


class ClientDrops(msgspec.Struct, kw_only=True):
    """One service's drops as its emitters reported them (totals over the kept reports)."""

    service: str
    dropped_total: int
    dropped: dict[str, int]
    reports: int
    last_drop_age_s: float | None
    last_host: str
    last_pid: int


_NUMERIC_META = ("dropped_total", "reports", "last_drop_ms", "last_pid")


def read_client_drops(client: redis.Redis, names: StreamNames, now_s: float | None = None) -> list[ClientDrops]:
    """Every reporting service's drop totals, most dropped first."""
    now_s = time.time() if now_s is None else now_s
    services = sorted(member.decode(errors="replace") for member in client.smembers(index_key(names)))
    if not services:
        return []
    pipe = client.pipeline(transaction=False)
    for service in services:
        pipe.hgetall(service_key(names, service))
    found = []
    for service, raw in zip(services, pipe.execute()):
        if raw:  # expired: the service has not reported drops for a week
            found.append(_parse(service, raw, now_s))
    return sorted(found, key=lambda drops: (-drops.dropped_total, drops.service))


def _parse(service: str, raw: dict[bytes, bytes], now_s: float) -> ClientDrops:
    text = {key.decode(errors="replace"): value.decode(errors="replace") for key, value in raw.items()}
    numbers = {name: _int(text.get(name)) for name in _NUMERIC_META}
    dropped = {
        name: _int(value) for name, value in text.items() if name not in _NUMERIC_META and not name.startswith("last_")
    }
    last_drop_ms = numbers["last_drop_ms"]
    return ClientDrops(
        service=service,
        dropped_total=numbers["dropped_total"],
        dropped={name: count for name, count in sorted(dropped.items()) if count},
        reports=numbers["reports"],
        last_drop_age_s=round(max(0.0, now_s - last_drop_ms / 1000), 3) if last_drop_ms else None,
        last_host=text.get("last_host", ""),
        last_pid=numbers["last_pid"],
    )


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def recent_drop_reasons(drops: Iterable[ClientDrops], within_s: float) -> list[str]:
    """Health reasons: services whose emitters reported drops within ``within_s`` seconds."""
    return [
        f"engine {entry.service} reported {entry.dropped_total} dropped events "
        f"({', '.join(f'{reason} {count}' for reason, count in entry.dropped.items())}), the latest "
        f"{entry.last_drop_age_s:.0f}s ago: see its emitter's stats() or raise its buffer_size"
        for entry in drops
        if entry.last_drop_age_s is not None and entry.last_drop_age_s <= within_s
    ]
