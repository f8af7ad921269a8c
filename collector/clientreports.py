"""Engines' own losses, from their ``client.report`` events, kept in Redis for ``health``.

An emitter counts what it could not deliver (buffer full, invalid, Redis
unavailable, ...) and ships the counts as ``client.report`` events. The daemon
hands every delivered batch to :func:`record_client_reports`, which adds each
report's counts to one hash, ``{prefix}:clientreports``, whose fields are
``{service}|{name}``: each drop reason's total, ``dropped_total``, ``reports``,
``last_drop_ms``, ``last_host``, ``last_pid``. A report is counted once even
when its entry is delivered twice: its event id is claimed with ``ZADD NX`` in
``{prefix}:clientreports:seen`` in the same script. Only hash and sorted-set
commands the collector's ACL user already has are used; ``health`` reads the
hash with one HGETALL (:func:`read_client_drops`). The built-in
``engine-drops`` alert rule reads the events themselves.
"""

from __future__ import annotations

import time
from operator import attrgetter
from typing import Any, Iterable, Sequence

import msgspec
import redis

from collector.records import Record
from emitters.events import ClientReport
from emitters.streams import StreamNames

__all__ = ["ClientDrops", "record_client_reports", "read_client_drops", "recent_drop_reasons", "totals_key"]

# A redelivered entry comes back within the pending/claim cycle; two days covers the
# late-arrival window with room to spare.
_SEEN_MS = 2 * 86400 * 1000
# Services whose last report is older than this are left out of health.
_SHOWN_S = 7 * 86400
# Service names match ^[A-Za-z0-9_-]{1,100}$, so '|' cannot occur in one.
_SEP = "|"
_event_of = attrgetter("event")

# KEYS: seen zset, totals hash. ARGV: id, now ms, seen window ms, service, report ts ms, host, pid,
# dropped_total, then (reason, count) pairs.
_RECORD = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
local service = ARGV[4] .. '|'
for i = 9, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], service .. ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[2], service .. 'dropped_total', ARGV[8])
redis.call('HINCRBY', KEYS[2], service .. 'reports', 1)
if tonumber(ARGV[8]) > 0 then
  redis.call('HSET', KEYS[2], service .. 'last_drop_ms', ARGV[5])
end
redis.call('HSET', KEYS[2], service .. 'last_report_ms', ARGV[5], service .. 'last_host', ARGV[6],
           service .. 'last_pid', ARGV[7])
return tonumber(ARGV[8])
"""


def totals_key(names: StreamNames) -> str:
    return names.events.rsplit(":", 1)[0] + ":clientreports"


def record_client_reports(client: redis.Redis, names: StreamNames, records: Sequence[Record]) -> int:
    """Add the batch's client reports to the per-service totals; the drops newly counted."""
    # Runs on every batch, nearly always without a report: keep the per-event work to a type test.
    reports = [event for event in map(_event_of, records) if type(event) is ClientReport]
    if not reports:
        return 0
    script = client.register_script(_RECORD)
    keys = [totals_key(names) + ":seen", totals_key(names)]
    now_ms = int(time.time() * 1000)
    counted = 0
    for report in reports:
        pairs: list[Any] = [item for reason, count in sorted(report.dropped.items()) for item in (reason, count)]
        args = [report.id, now_ms, _SEEN_MS, report.service, report.ts // 1_000_000, report.host, report.pid,
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


_META = ("dropped_total", "reports", "last_drop_ms", "last_report_ms", "last_host", "last_pid")


def read_client_drops(client: redis.Redis, names: StreamNames, now_s: float | None = None) -> list[ClientDrops]:
    """Every service that reported within a week, with its drop totals, most dropped first."""
    now_s = time.time() if now_s is None else now_s
    by_service: dict[str, dict[str, str]] = {}
    for field, value in client.hgetall(totals_key(names)).items():
        service, _, name = field.decode(errors="replace").partition(_SEP)
        by_service.setdefault(service, {})[name] = value.decode(errors="replace")
    recent = [
        _parse(service, text, now_s)
        for service, text in by_service.items()
        if now_s - _int(text.get("last_report_ms")) / 1000 <= _SHOWN_S
    ]
    return sorted(recent, key=lambda drops: (-drops.dropped_total, drops.service))


def _parse(service: str, text: dict[str, str], now_s: float) -> ClientDrops:
    dropped = {name: _int(value) for name, value in text.items() if name not in _META}
    last_drop_ms = _int(text.get("last_drop_ms"))
    return ClientDrops(
        service=service,
        dropped_total=_int(text.get("dropped_total")),
        dropped={name: count for name, count in sorted(dropped.items()) if count},
        reports=_int(text.get("reports")),
        last_drop_age_s=round(max(0.0, now_s - last_drop_ms / 1000), 3) if last_drop_ms else None,
        last_host=text.get("last_host", ""),
        last_pid=_int(text.get("last_pid")),
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
