"""Alert state shared by every collector of one consumer group, kept in Redis.

Keys, under ``{alerts stream}:{group}`` (``telemetry:alerts:telemetry-collectors``
by default; a hash-tagged stream prefix keeps them in one cluster slot):

- ``…:rate:{rule}:{slice}``: hash group -> count, expiring once no window can include it
- ``…:value:{rule}:{slice}``: hash ``{group}\\x1f{n,sum,min,max}``; ``…:samples:{rule}:{slice}:{hash}``:
  a list with a reservoir sample of that group's values
- ``…:ids:{rule}:{slice}``: set of the idempotence keys of the events counted in
  that slice, expiring with it: a redelivered or claimed entry counts once
- ``…:seen:{rule}``: sorted set group -> last seen (``absence`` rules)
- ``…:known:{rule}``: sorted set key -> last seen (``new`` rules)
- ``…:state``: hash fingerprint -> :class:`records.StoredAlert` JSON

Two consumer groups on the same streams each see every event; their state is
apart so neither counts the other's deliveries. Every change is one Lua
script, so it is atomic: two collectors of a group that see the same breach
both run the lifecycle script, the first one fires and the second finds the
alert already firing. A notification is appended to the alerts stream
*inside* the script that changes the state, so the stream holds exactly one
entry per transition and a crash can never record a transition without its
entry (or the reverse). A restarted collector finds everything where it
was: it neither fires again, nor counts again, nor forgets what it has seen.
"""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING, Any, Optional, Sequence

import msgspec
import redis

from collector.alerts.records import AlertRecord, Candidate, Expired, FirstSightings, StoredAlert, iso_time
from collector.alerts.rules import Snapshot
from collector.alerts.windows import Updates
from emitters.streams import StreamNames

if TYPE_CHECKING:
    from collector.alerts.kinds import AlertRule

__all__ = ["AlertState"]

# The lifecycle of one alert, shared by the transition and first-seen scripts.
# KEYS[1] state hash, KEYS[2] alerts stream; ARGV[1] now (unix s), ARGV[2] now
# as RFC 3339, ARGV[3] MAXLEN of the stream, ARGV[5] the consumer group.
_LIFECYCLE = r"""
local state_key, stream_key = KEYS[1], KEYS[2]
local now, now_iso, maxlen, group_name = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[5]
local out = {}

local function notify(record)
  local payload = cjson.encode(record)
  redis.call('XADD', stream_key, 'MAXLEN', '~', maxlen, '*', 'alert', payload)
  out[#out + 1] = payload
end

local function transition(c)
  local raw = redis.call('HGET', state_key, c.fp)
  local st = false
  if raw then st = cjson.decode(raw) end
  local rec = c.record
  rec.status = 'firing'
  rec.ends_at = cjson.null
  rec.group = group_name
  if c.active then
    if st and st.status == 'firing' then
      rec.starts_at = st.record.starts_at
      st.clear_since = nil
      st.record = rec
      if now - st.notified >= c.repeat_interval then
        st.notified = now
        notify(rec)
      end
    else
      if st and st.status == 'resolved' and now - st.resolved < c.cooldown then
        return
      end
      rec.starts_at = now_iso
      st = {status = 'firing', group = c.group, notified = now, record = rec}
      notify(rec)
    end
  else
    if not st or st.status ~= 'firing' then
      return
    end
    rec.starts_at = st.record.starts_at
    if not st.clear_since then
      st.clear_since = now
    end
    if now - st.clear_since >= c.resolve_after then
      rec.status = 'resolved'
      rec.ends_at = now_iso
      st.status = 'resolved'
      st.resolved = now
      notify(rec)
    end
    st.record = rec
  end
  redis.call('HSET', state_key, c.fp, cjson.encode(st))
end
"""

# ARGV[4]: {"candidates": [Candidate...], "expired": [[fp, resolved]...]}
_TRANSITION = (
    _LIFECYCLE
    + r"""
local batch = cjson.decode(ARGV[4])
for _, c in ipairs(batch.candidates) do
  transition(c)
end
for _, e in ipairs(batch.expired) do
  local raw = redis.call('HGET', state_key, e[1])
  if raw then
    local st = cjson.decode(raw)
    -- still the resolution the caller saw, not one that fired again meanwhile
    if st.status == 'resolved' and math.abs(st.resolved - e[2]) < 0.001 then
      redis.call('HDEL', state_key, e[1])
    end
  end
end
return out
"""
)

# What a batch adds, in one script and one round trip: window slices, last-seen
# times, value reservoirs and first sightings. KEYS[1], KEYS[2] and ARGV as in
# the lifecycle, ARGV[4]: {"counts": [[counts, ids, expire_at_ms, [[group, [key...]]...]]...],
# "seen": [[key, group, ts, ttl_ms]...],
# "values": [[stats, samples, ids, group, [value...], [uniform...], [key...], cap, expire_at_ms]...],
# "sightings": [[known, [[key, ts, first, regression]...], regression_after, max_known, ttl_ms]...]}
# with keys as indexes into KEYS. An item whose idempotence key is already in
# the slice's ids set was counted before (a redelivery) and adds nothing; ""
# marks the collector's own observations, which have no entry to redeliver.
# Ids go to and are looked up in the sets in chunks (SADD, SMISMEMBER), not one
# command per event; a group's count goes up by what SADD reports as new.
# Values travel as text so the samples keep every digit; the uniforms drive
# reservoir sampling (Algorithm R) over the shared count, so the sample is
# fair whichever collector saw which value. A sighting of a key never seen
# fires its rule's alert; one silent longer than regression_after fires a regression.
_RECORD = (
    _LIFECYCLE
    + r"""
local ops = cjson.decode(ARGV[4])
-- One command per 1000 items: unpack is bounded by Lua's C stack. Sums the replies.
local function in_chunks(command, key, items)
  local total = 0
  for first = 1, #items, 1000 do
    total = total + redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
  return total
end
-- How many of keys ids did not hold, now added to it ('' always counts).
local function added_keys(ids, keys)
  local added, listed = 0, {}
  for _, key in ipairs(keys) do
    if key == '' then
      added = added + 1
    else
      listed[#listed + 1] = key
    end
  end
  return added + in_chunks('SADD', ids, listed)
end
-- The keys ids does not hold yet (a set), asked in one command per chunk.
local function unheld_keys(ids, keys)
  local unheld, listed, listed_once = {}, {}, {}
  for _, key in ipairs(keys) do
    if key ~= '' and not listed_once[key] then
      listed_once[key] = true
      listed[#listed + 1] = key
    end
  end
  for first = 1, #listed, 1000 do
    local last = math.min(first + 999, #listed)
    local held = redis.call('SMISMEMBER', ids, unpack(listed, first, last))
    for i = first, last do
      if held[i - first + 1] == 0 then unheld[listed[i]] = true end
    end
  end
  return unheld
end
for _, c in ipairs(ops.counts) do
  for _, g in ipairs(c[4]) do
    local n = added_keys(KEYS[c[2]], g[2])
    if n > 0 then
      redis.call('HINCRBY', KEYS[c[1]], g[1], n)
    end
  end
  redis.call('PEXPIREAT', KEYS[c[1]], c[3])
  redis.call('PEXPIREAT', KEYS[c[2]], c[3])
end
for _, s in ipairs(ops.seen) do
  redis.call('ZADD', KEYS[s[1]], 'GT', s[3], s[2])
  redis.call('PEXPIRE', KEYS[s[1]], s[4])
end
for _, v in ipairs(ops.values) do
  local stats, samples, ids, g, cap = KEYS[v[1]], KEYS[v[2]], KEYS[v[3]], v[4], v[8]
  local n = tonumber(redis.call('HGET', stats, g .. '\31n') or '0')
  local low = redis.call('HGET', stats, g .. '\31min')
  local high = redis.call('HGET', stats, g .. '\31max')
  local stored = redis.call('LLEN', samples)
  local length = stored
  local unheld = unheld_keys(ids, v[7])
  local sum, added, pushes, counted = 0, 0, {}, {}
  for i, text in ipairs(v[5]) do
    local key = v[7][i]
    if key == '' or unheld[key] then
      if key ~= '' then
        unheld[key] = nil  -- a repeat within the batch counts once
        counted[#counted + 1] = key
      end
      local x = tonumber(text)
      n = n + 1
      added = added + 1
      sum = sum + x
      if not low or x < tonumber(low) then low = text end
      if not high or x > tonumber(high) then high = text end
      if length < cap then
        pushes[#pushes + 1] = text
        length = length + 1
      else
        local j = math.floor(v[6][i] * n)
        if j < cap then
          if j >= stored then
            pushes[j - stored + 1] = text  -- not in the list yet: replaced before it is pushed
          else
            redis.call('LSET', samples, j, text)
          end
        end
      end
    end
  end
  in_chunks('SADD', ids, counted)
  in_chunks('RPUSH', samples, pushes)
  if added > 0 then
    redis.call('HSET', stats, g .. '\31n', string.format('%d', n), g .. '\31min', low, g .. '\31max', high)
    -- pcall: a sum beyond the float range is refused by Redis; avg is then off, nothing else
    redis.pcall('HINCRBYFLOAT', stats, g .. '\31sum', string.format('%.17g', sum))
    redis.call('PEXPIREAT', stats, v[9])
    redis.call('PEXPIREAT', samples, v[9])
  end
  redis.call('PEXPIREAT', ids, v[9])
end
for _, n in ipairs(ops.sightings) do
  local known, regression_after = KEYS[n[1]], n[3]
  for _, s in ipairs(n[2]) do
    local old = redis.call('ZSCORE', known, s[1])
    redis.call('ZADD', known, 'GT', s[2], s[1])
    if not old then
      transition(s[3])
    elseif regression_after > 0 and s[2] - tonumber(old) >= regression_after then
      s[4].record.value = s[2] - tonumber(old)
      transition(s[4])
    end
  end
  redis.call('ZREMRANGEBYRANK', known, 0, -(n[4] + 1))
  redis.call('PEXPIRE', known, n[5])
end
return out
"""
)

# Infinite or NaN values become null: Lua's cjson would refuse the whole batch over them.
_encode = msgspec.json.Encoder().encode
_alert_decoder = msgspec.json.Decoder(AlertRecord)
_stored_decoder = msgspec.json.Decoder(StoredAlert)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def _group_hash(group: str) -> str:
    return hashlib.blake2b(group.encode(), digest_size=6).hexdigest()


class AlertState:
    """Reads and atomically changes the shared alert state of one consumer group."""

    def __init__(self, client: redis.Redis, names: StreamNames, group: str, *, history: int = 10_000) -> None:
        self.client = client
        self.names = names
        self.group = group
        self.stream = names.alerts
        self.base = f"{names.alerts}:{group}"
        self.state_key = f"{self.base}:state"
        self.history = history
        self._transition = client.register_script(_TRANSITION)
        self._record = client.register_script(_RECORD)

    # --- key names ---

    def counts_key(self, rule: str, bucket: int) -> str:
        return f"{self.base}:rate:{rule}:{bucket}"

    def stats_key(self, rule: str, bucket: int) -> str:
        return f"{self.base}:value:{rule}:{bucket}"

    def samples_key(self, rule: str, bucket: int, group: str) -> str:
        return f"{self.base}:samples:{rule}:{bucket}:{_group_hash(group)}"

    def ids_key(self, rule: str, bucket: int) -> str:
        return f"{self.base}:ids:{rule}:{bucket}"

    def seen_key(self, rule: str) -> str:
        return f"{self.base}:seen:{rule}"

    def known_key(self, rule: str) -> str:
        return f"{self.base}:known:{rule}"

    # --- writes ---

    def record(self, updates: Updates, first_seen: Sequence[FirstSightings], now: float) -> list[AlertRecord]:
        """Add ``updates`` (each event once) and ``first_seen`` in one round trip; returns the
        notifications of the first sightings (``new`` rules fire here, not on a tick)."""
        keys: list[str] = [self.state_key, self.stream]
        index: dict[str, int] = {}

        def ref(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)  # Lua arrays start at 1
            return index[key]

        counts = [
            [ref(self.counts_key(name, bucket)), ref(self.ids_key(name, bucket)), tally.expire_ms, list(tally.groups.items())]
            for (name, bucket), tally in updates.counts.items()
        ]
        seen = [[ref(self.seen_key(name)), group, ts, ttl] for (name, group), (ts, ttl) in updates.seen.items()]
        values = [
            [
                ref(self.stats_key(name, bucket)),
                ref(self.samples_key(name, bucket, group)),
                ref(self.ids_key(name, bucket)),
                group,
                [repr(value) for _, value in slot.items],
                [random.random() for _ in slot.items],
                [key for key, _ in slot.items],
                slot.cap,
                slot.expire_ms,
            ]
            for (name, bucket, group), slot in updates.samples.items()
        ]
        sightings = [
            [ref(self.known_key(batch.rule)), batch.sightings, batch.regression_after, batch.max_known, batch.ttl_ms]
            for batch in first_seen
        ]
        if not (counts or seen or values or sightings):
            return []
        ops = {"counts": counts, "seen": seen, "values": values, "sightings": sightings}
        out = self._record(keys=keys, args=self._lifecycle_args(now, ops))
        return [_alert_decoder.decode(payload) for payload in out]

    def _lifecycle_args(self, now: float, batch: Any) -> list[Any]:
        return [now, iso_time(now), self.history, _encode(batch), self.group]

    def transition(self, candidates: Sequence[Candidate], expired: Sequence[Expired], now: float) -> list[AlertRecord]:
        """Apply conditions to the alerts' lifecycle; returns the notifications that went out."""
        if not candidates and not expired:
            return []
        batch = {"candidates": candidates, "expired": [[item.fp, item.resolved] for item in expired]}
        out = self._transition(keys=[self.state_key, self.stream], args=self._lifecycle_args(now, batch))
        return [_alert_decoder.decode(payload) for payload in out]

    # --- reads ---

    def snapshot(self, rules: Sequence["AlertRule"], now: float) -> Snapshot:
        """The measures of the window rules and the alert states, read in one round trip (two for percentiles)."""
        pipe = self.client.pipeline(transaction=False)
        readers = [(rule.name, reader) for rule in rules if (reader := rule.read(self, pipe, now)) is not None]
        pipe.hgetall(self.state_key)
        replies = iter(pipe.execute())
        measures = {name: reader(replies) for name, reader in readers}
        alerts = {_text(fp): _stored_decoder.decode(raw) for fp, raw in next(replies).items()}
        return Snapshot(measures=measures, alerts=alerts)

    def alerts(self) -> dict[str, StoredAlert]:
        """Every alert state: firing ones and those resolved within their cooldown."""
        return {_text(fp): _stored_decoder.decode(raw) for fp, raw in self.client.hgetall(self.state_key).items()}

    def clear(self) -> None:
        """Delete this group's whole alert state (its notifications stay in the stream)."""
        keys = list(self.client.scan_iter(match=f"{_glob_escape(self.base)}:*", count=1000))
        for start in range(0, len(keys), 500):
            self.client.delete(*keys[start : start + 500])

    def recent(self, count: int) -> list[tuple[str, AlertRecord]]:
        """The last ``count`` notifications of this group in the alerts stream, newest first, with entry ids."""
        return recent_alerts(self.client, self.stream, count, group=self.group)


def recent_alerts(
    client: redis.Redis, stream: str, count: int, *, group: Optional[str] = None
) -> list[tuple[str, AlertRecord]]:
    """The last ``count`` alert records of ``stream`` (of ``group`` only, when given), newest first."""
    out: list[tuple[str, AlertRecord]] = []
    last = "+"
    while len(out) < count:
        entries = client.xrevrange(stream, max=last, count=max(count, 100))
        for entry_id, fields in entries:
            payload: Optional[bytes] = fields.get(b"alert", fields.get("alert"))  # type: ignore[call-overload]
            if payload is None:
                continue
            try:
                record = _alert_decoder.decode(payload)
            except msgspec.ValidationError:
                continue  # written by something else; `alerts` shows what it understands
            if group is None or record.group in (group, None):
                out.append((_text(entry_id), record))
                if len(out) == count:
                    break
        if len(entries) < max(count, 100):
            break
        last = "(" + _text(entries[-1][0])
    return out
