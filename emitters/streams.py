"""Redis key names shared by emitters, collectors and operator tools."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NamedTuple

import msgspec

if TYPE_CHECKING:
    from emitters.events import Event

# The single stream field that holds the msgpack-encoded event.
PAYLOAD_FIELD = "event"
# Only on entries `dlq replay` puts back: the sinks (comma-separated names) that already
# accepted the event, so collectors hand it to the others only.
SKIP_SINKS_FIELD = "skip_sinks"


class StreamNames(NamedTuple):
    events: str
    errors: str
    dead: str
    alerts: str
    live: str  # pub/sub channel, not a stream; messages per decode_live
    heartbeat_prefix: str  # `{prefix}:collector:{consumer}` hashes with a TTL
    # Hash: `maxlen:{kind}` (the cap emitters trim to, written with every batch) and
    # `lost:{kind}:{group}` (entries trimmed before that group acked them; group `-`: no group existed).
    accounting: str
    losses: str  # stream, one entry per trim that lost entries: stream, group, count, first_id, last_id, by
    engines: str  # hash, the newest runtime.status / client.report gauges per engine (collector.http.engines)

    def heartbeat(self, consumer: str) -> str:
        return f"{self.heartbeat_prefix}{consumer}"


def stream_names(prefix: str = "telemetry") -> StreamNames:
    return StreamNames(
        events=f"{prefix}:events",
        errors=f"{prefix}:errors",
        dead=f"{prefix}:dead",
        alerts=f"{prefix}:alerts",
        live=f"{prefix}:live",
        heartbeat_prefix=f"{prefix}:collector:",
        accounting=f"{prefix}:accounting",
        losses=f"{prefix}:losses",
        engines=f"{prefix}:engines",
    )


# The emitters' stream caps are a memory guard, not retention: the collector trims acked
# entries itself. The guard must hold what a fleet of emitters flushes after an outage
# (each buffers up to 10,000 events): 500,000 is fifty full buffers, about 200 MB of
# typical events. Errors are rarer and kept as long.
DEFAULT_EVENTS_MAXLEN = 500_000
DEFAULT_ERRORS_MAXLEN = 500_000
# Loss records kept in `{prefix}:losses` (each one names a whole range).
LOSSES_MAXLEN = 10_000
# At most this many entries are trimmed per batch (a lowered cap converges over batches).
_GUARD_CHUNK = 5_000

# The emitters' batch script. KEYS: events stream, errors stream, batch token key,
# accounting hash, losses stream. ARGV: token ttl, events maxlen, errors maxlen, live
# channel, payload field, then (route, payload) pairs; route `e` events, `x` errors,
# anything else live (a msgpack array of encoded events, see decode_live).
#
# Over its cap a stream loses its oldest entries, but never silently: the script trims
# exactly, and before it does, counts for each consumer group the doomed entries the
# group never read (after its last-delivered-id), and moves the group past them. Counts go
# to `lost:{kind}:{group}` in the accounting hash and one record per range to the losses
# stream. Redis 6.2 and 7.x alike.
# Doomed entries a consumer has read but not acked are not lost yet: it holds them and
# acks them once written. Only if it dies do they come back, deleted, to the consumer that
# claims them, and that collector counts them (collector/loss.py).
SHIP_BATCH = """
local function after(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, bm = tonumber(am), tonumber(bm)
  return am > bm or (am == bm and tonumber(as) > tonumber(bs))
end
local function record(key, kind, group, count, first, last)
  redis.call('HINCRBY', KEYS[4], 'lost:' .. kind .. ':' .. group, count)
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', @LOSSES@, '*', 'stream', key, 'group', group,
    'count', count, 'first_id', first, 'last_id', last, 'by', 'emitter-maxlen')
end
local function guard(key, kind, excess)
  local doomed = redis.call('XRANGE', key, '-', '+', 'COUNT', math.min(excess, @CHUNK@))
  local first, last = doomed[1][1], doomed[#doomed][1]
  local groups = redis.call('XINFO', 'GROUPS', key)
  if #groups == 0 then
    record(key, kind, '-', #doomed, first, last)
  end
  for _, info in ipairs(groups) do
    local name, delivered, read, counts_reads
    for j = 1, #info, 2 do
      local field = info[j]
      if field == 'name' then
        name = info[j + 1]
      elseif field == 'last-delivered-id' then
        delivered = info[j + 1]
      elseif field == 'entries-read' then
        read = info[j + 1]
        counts_reads = true  -- Redis 7: SETID takes ENTRIESREAD (6.2 has neither)
      end
    end
    local lost, from = 0, nil
    for _, entry in ipairs(doomed) do
      if after(entry[1], delivered) then
        lost = lost + 1
        from = from or entry[1]
      end
    end
    if counts_reads and type(read) ~= 'number' and delivered == '0-0' then
      read = 0  -- made at 0, has read nothing yet
    end
    if lost > 0 then
      record(key, kind, name, lost, from, last)
      -- The group moves past what it lost: Redis 7 can count its lag again, and the
      -- collectors' gap check (collector/loss.py) does not book these a second time.
      if type(read) == 'number' then
        redis.call('XGROUP', 'SETID', key, name, last, 'ENTRIESREAD', read + lost)
      else
        redis.call('XGROUP', 'SETID', key, name, last)
      end
    end
  end
  local ms, seq = string.match(last, '(%d+)-(%d+)')
  redis.call('XTRIM', key, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
end
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[1]) then
  return -1
end
local touched = {}
for i = 6, #ARGV, 2 do
  local route = ARGV[i]
  if route == 'e' then
    redis.call('XADD', KEYS[1], '*', ARGV[5], ARGV[i + 1])
    touched[1] = true
  elseif route == 'x' then
    redis.call('XADD', KEYS[2], '*', ARGV[5], ARGV[i + 1])
    touched[2] = true
  else
    redis.call('PUBLISH', ARGV[4], ARGV[i + 1])
  end
end
local kinds = {'events', 'errors'}
for s = 1, 2 do
  if touched[s] then
    local cap = tonumber(ARGV[1 + s])
    redis.call('HSET', KEYS[4], 'maxlen:' .. kinds[s], cap)
    local excess = redis.call('XLEN', KEYS[s]) - cap
    if excess > 0 then guard(KEYS[s], kinds[s], excess) end
  end
end
return 1
""".replace("@LOSSES@", str(LOSSES_MAXLEN)).replace("@CHUNK@", str(_GUARD_CHUNK))
SHIP_BATCH_SHA = hashlib.sha1(SHIP_BATCH.encode()).hexdigest()


def ship_keys(names: StreamNames, token: str) -> tuple[str, str, str, str, str]:
    """The KEYS of :data:`SHIP_BATCH` for one batch."""
    return (names.events, names.errors, f"{names.events}:batch:{token}", names.accounting, names.losses)


_live_decoder = msgspec.msgpack.Decoder(list[bytes])


def decode_live(message: bytes) -> "list[Event]":
    """The events in one ``{prefix}:live`` message: a msgpack array of encoded events.

    Emitters publish a batch's token events as one message. Raises
    ``msgspec.DecodeError`` (or ``ValidationError``) for a malformed message.
    """
    from emitters.events import decode

    return [decode(payload) for payload in _live_decoder.decode(message)]
