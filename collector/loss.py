"""Loss accounting: every entry trimmed before its group acked it is counted, logged and alerted.

Who counts what, on Redis 6.2 and 7.x alike:

- The emitters' stream cap (a memory guard) is enforced by their batch script
  (:data:`emitters.streams.SHIP_BATCH`), which trims exactly and, in the same
  atomic step, counts per consumer group the trimmed entries the group had not
  read (after its ``last-delivered-id``). No XINFO ``entries-read``/``lag`` is
  needed, so 6.2 counts as exactly as 7.x.
- An entry deleted while pending (by that cap, or an operator's XTRIM/XDEL) is
  not lost while the consumer holding it lives: it writes and acks it. If that
  consumer died, the entry comes back to whoever claims it or rereads its
  pending list, without fields (6.2 and 7.x) or in XAUTOCLAIM's deleted list
  (7.x), and :meth:`LossBook.record` counts it then, once (it is acked or
  dropped from the pending list in the same step).
- Anyone else trimming unread entries (an operator's XTRIM, an emitter of an
  older release with its ``MAXLEN ~``) leaves a gap between the group's
  ``last-delivered-id`` and the stream's first entry; Redis 7 then reports the
  group's lag as nil. :meth:`LossBook.close_gap` counts the gap exactly from
  ``entries-added - entries-read - length`` and moves the group past it, in one
  script. Redis 6.2 keeps no such counters: there only the emitters' own
  trimming is counted.
- The collector's own trimming never removes what a group has not acked.

Counts live in the ``{prefix}:accounting`` hash (``lost:{kind}:{group}``,
durable as Redis is), one record per trimmed range in ``{prefix}:losses``.
:meth:`LossBook.poll`, run with every heartbeat, logs each new record with its
id range and feeds the alert engine. Entries a Redis restart without
persistence took with it are beyond any count Redis keeps: see the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import redis
import structlog

from collector.records import StreamKind, parse_id
from emitters.streams import LOSSES_MAXLEN, StreamNames

if TYPE_CHECKING:
    from collector.alerts.engine import AlertEngine

__all__ = ["LossBook", "NO_GROUP"]

log = structlog.get_logger("collector.loss")

# KEYS: stream, accounting hash, losses stream. ARGV: group, kind. Redis 7+ only (XINFO counters).
# Returns the entries counted lost (0 when the group's position meets the stream's head).
_CLOSE_GAP = """
local function field(reply, name)
  for i = 1, #reply, 2 do
    if reply[i] == name then return reply[i + 1] end
  end
end
local function after(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, bm = tonumber(am), tonumber(bm)
  return am > bm or (am == bm and tonumber(as) > tonumber(bs))
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length, first = field(info, 'entries-added'), field(info, 'length'), field(info, 'first-entry')
local mine
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  if field(group, 'name') == ARGV[1] then mine = group end
end
if not added or not mine then return 0 end
local read, delivered = field(mine, 'entries-read'), field(mine, 'last-delivered-id')
if type(read) ~= 'number' then
  if delivered ~= '0-0' then return 0 end
  read = 0  -- a group made at 0 that has read nothing yet
end
local head = first and first[1] or field(info, 'last-generated-id')
if not after(head, delivered) then return 0 end
local lost = added - read - length
if lost <= 0 then return 0 end
local target = field(info, 'last-generated-id')
if first then
  local ms, seq = string.match(first[1], '(%d+)-(%d+)')
  if tonumber(seq) > 0 then
    target = ms .. '-' .. string.format('%d', tonumber(seq) - 1)
  else
    target = string.format('%d', tonumber(ms) - 1) .. '-18446744073709551615'
  end
end
redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], target, 'ENTRIESREAD', added - length)
redis.call('HINCRBY', KEYS[2], 'lost:' .. ARGV[2] .. ':' .. ARGV[1], lost)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'stream', KEYS[1], 'group', ARGV[1], 'count', lost,
  'first_id', delivered, 'last_id', target, 'by', 'trimmed-unread')
return lost
"""

# The group a loss is booked to when the stream had no consumer group at all.
NO_GROUP = "-"
_PAGE = 1000


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class LossBook:
    """The durable loss counters of one consumer group, and the log of new losses."""

    def __init__(
        self,
        client: redis.Redis,
        names: StreamNames,
        group: str,
        *,
        kind_of: Callable[[str], Optional[StreamKind]],
        alert_engine: Optional["AlertEngine"] = None,
    ) -> None:
        self._redis = client
        self.names = names
        self.group = group
        self._kind_of = kind_of
        self._alert_engine = alert_engine
        self._cursor: Optional[str] = None  # last loss record seen; None until the first poll
        self.caps: dict[StreamKind, int] = {}  # the caps the emitters really use, as they recorded them
        self.totals: dict[StreamKind, int] = {"events": 0, "errors": 0}
        self._close_gap = client.register_script(_CLOSE_GAP)
        self.gap_checks = False  # set once the server shows Redis 7's group counters

    def close_gap(self, key: str, pipe: redis.client.Pipeline) -> None:
        """Queue on ``pipe`` the count of unread entries someone trimmed, stepping the group over them.

        Redis 7+ (see above); the daemon queues it before each read of new entries, since
        once the group reads past the gap Redis's counters no longer show it. The loss
        record's ``first_id`` is the group's position before (exclusive).
        """
        kind = self._kind_of(key)
        if kind is not None:
            self._close_gap(keys=[key, self.names.accounting, self.names.losses],
                            args=[self.group, kind, LOSSES_MAXLEN], client=pipe)  # fmt: skip

    def record(self, key: str, ids: Sequence[bytes], source: str) -> None:
        """Book entries of stream ``key`` found deleted before this group acked them."""
        kind = self._kind_of(key)
        if not ids or kind is None:
            return
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(self.names.accounting, f"lost:{kind}:{self.group}", len(ids))
        pipe.xadd(
            self.names.losses,
            {
                "stream": key,
                "group": self.group,
                "count": len(ids),
                "first_id": _text(min(ids, key=parse_id)),
                "last_id": _text(max(ids, key=parse_id)),
                "by": source,
            },
            maxlen=LOSSES_MAXLEN,
            approximate=True,
        )
        pipe.execute()

    def poll(self) -> None:
        """Refresh caps and totals; log (and alert on) every loss recorded since the last poll."""
        fields = {_text(name): _text(value) for name, value in self._redis.hgetall(self.names.accounting).items()}
        totals: dict[StreamKind, int] = {"events": 0, "errors": 0}
        for name, value in fields.items():
            parts = name.split(":", 2)
            if parts[0] == "maxlen" and parts[1] in totals:
                self.caps[parts[1]] = int(value)  # type: ignore[index]
            elif parts[0] == "lost" and len(parts) == 3 and parts[1] in totals and parts[2] in (self.group, NO_GROUP):
                totals[parts[1]] += int(value)  # type: ignore[index]
        self.totals = totals
        if self._cursor is None:
            self._start(totals)
            return
        while True:
            page = self._redis.xrange(self.names.losses, min="(" + self._cursor, count=_PAGE)
            for entry_id, raw in page:
                self._report({_text(k): _text(v) for k, v in raw.items()})
                self._cursor = _text(entry_id)
            if len(page) < _PAGE:
                return

    def group_vanished(self, kinds: Sequence[StreamKind], last_unacked: dict[StreamKind, Optional[int]]) -> None:
        """The group had to be made again: Redis lost its data (a restart without persistence) or
        someone deleted it. What it held unread is gone with every counter Redis kept, so the
        loss can only be bounded by the last heartbeat's count of unacked entries."""
        for kind in kinds:
            bound = last_unacked.get(kind)
            log.error(
                "redis_data_lost",
                stream=kind,
                group=self.group,
                unacked_at_last_heartbeat=bound,
                note="the consumer group was gone: Redis restarted without persistence or it was deleted; "
                "entries it held unread are lost and cannot be counted exactly",
                action="turn on Redis persistence (appendonly yes) so a restart keeps the streams",
            )
            if self._alert_engine is not None and bound:
                self._alert_engine.observe_loss(kind, bound)

    def _start(self, totals: dict[StreamKind, int]) -> None:
        newest = self._redis.xrevrange(self.names.losses, count=1)
        self._cursor = _text(newest[0][0]) if newest else "0-0"
        if any(totals.values()):
            log.warning(
                "entries_lost_before",
                group=self.group,
                lost=totals,
                note="entries trimmed before this group acked them, counted earlier; "
                f"records in {self.names.losses}",
            )

    def _report(self, loss: dict[str, str]) -> None:
        if loss.get("group") not in (self.group, NO_GROUP):
            return
        count = int(loss.get("count", 0))
        kind = self._kind_of(loss.get("stream", ""))
        log.error(
            "entries_lost",
            stream=loss.get("stream"),
            group=loss.get("group"),
            count=count,
            first_id=loss.get("first_id"),
            last_id=loss.get("last_id"),
            by=loss.get("by"),
            lost_total=self.totals.get(kind, 0) if kind else None,
            action="entries were trimmed before they were acked: add collectors, fix slow sinks, "
            "or raise the emitters' cap (events_maxlen/errors_maxlen)",
        )
        if self._alert_engine is not None and kind is not None:
            self._alert_engine.observe_loss(kind, count)

