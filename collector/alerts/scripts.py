"""The Lua scripts behind :class:`collector.alerts.state.AlertState`: every change to alert state is one of them.

Both share the lifecycle of one alert, so firing, resolving and the alerts
stream's entry happen in the same atomic step whichever collector runs them.
"""

from __future__ import annotations

__all__ = ["TRANSITION", "RECORD"]

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
TRANSITION = (
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
RECORD = (
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
