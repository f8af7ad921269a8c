"""Alert state shared by every collector of a group, kept in Redis.

Keys, under the alerts stream's name (``telemetry:alerts`` by default, so a
hash-tagged stream prefix keeps them in one cluster slot):

- ``…:rate:{rule}:{slice}``: hash group -> count, expiring once no window can include it
- ``…:value:{rule}:{slice}``: hash ``{group}\\x1f{n,sum,min,max}``; ``…:samples:{rule}:{slice}:{hash}``:
  a list with a reservoir sample of that group's values
- ``…:seen:{rule}``: sorted set group -> last seen (``absence`` rules)
- ``…:known:{rule}``: sorted set key -> last seen (``new`` rules)
- ``…:state``: hash fingerprint -> :class:`rules.StoredAlert` JSON

Every change is one Lua script, so it is atomic: two collectors that see the
same breach both run the lifecycle script, the first one fires and the second
finds the alert already firing. A notification is appended to the alerts
stream *inside* the script that changes the state, so the stream holds
exactly one entry per transition and a crash can never record a transition
without its entry (or the reverse). A restarted collector finds everything
where it was: it neither fires again nor forgets what it has seen.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Optional, Sequence

import msgspec
import redis

from collector.alerts.config import AbsenceRule, NewRule, RateRule, ValueRule
from collector.alerts.rules import (
    AlertRecord,
    BucketStats,
    Candidate,
    CompiledRule,
    Expired,
    Sighting,
    Snapshot,
    StoredAlert,
    Updates,
    bucket_expiry_ms,
    candidate,
    iso_time,
    window_buckets,
)
from emitters.streams import StreamNames

__all__ = ["AlertState", "KNOWN_TTL_MIN"]

# Known keys are kept at least this long after they were last seen.
KNOWN_TTL_MIN = 30 * 86400.0
SEP = "\x1f"

# The lifecycle of one alert, shared by the transition and first-seen scripts.
# KEYS[1] state hash, KEYS[2] alerts stream; ARGV[1] now (unix s), ARGV[2] now
# as RFC 3339, ARGV[3] MAXLEN of the stream.
_LIFECYCLE = r"""
local state_key, stream_key = KEYS[1], KEYS[2]
local now, now_iso, maxlen = tonumber(ARGV[1]), ARGV[2], ARGV[3]
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

# KEYS[3] known set; ARGV[4]: {"sightings": [[key, ts, first, regression]...],
# "regression_after": s, "max_known": n, "ttl_ms": ms}
_FIRST_SEEN = (
    _LIFECYCLE
    + r"""
local batch = cjson.decode(ARGV[4])
for _, s in ipairs(batch.sightings) do
  local old = redis.call('ZSCORE', KEYS[3], s[1])
  redis.call('ZADD', KEYS[3], 'GT', s[2], s[1])
  if not old then
    transition(s[3])
  elseif batch.regression_after > 0 and s[2] - tonumber(old) >= batch.regression_after then
    s[4].record.value = s[2] - tonumber(old)
    transition(s[4])
  end
end
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(batch.max_known + 1))
redis.call('PEXPIRE', KEYS[3], batch.ttl_ms)
return out
"""
)

# Window slices, last-seen times and value reservoirs. ARGV[1]: {"counts":
# [[key, group, n, expire_at_ms]...], "seen": [[key, group, ts, ttl_ms]...],
# "values": [[stats_key, samples_key, group, [value...], [uniform...], cap, expire_at_ms]...]}
# with keys as indexes into KEYS. Values travel as text so the samples keep
# every digit; the uniforms drive reservoir sampling (Algorithm R) over the
# shared count, so the sample is fair whichever collector saw which value.
_RECORD = r"""
local ops = cjson.decode(ARGV[1])
for _, c in ipairs(ops.counts) do
  redis.call('HINCRBY', KEYS[c[1]], c[2], c[3])
  redis.call('PEXPIREAT', KEYS[c[1]], c[4])
end
for _, s in ipairs(ops.seen) do
  redis.call('ZADD', KEYS[s[1]], 'GT', s[3], s[2])
  redis.call('PEXPIRE', KEYS[s[1]], s[4])
end
for _, v in ipairs(ops.values) do
  local stats, samples, g, cap = KEYS[v[1]], KEYS[v[2]], v[3], v[6]
  local n = tonumber(redis.call('HGET', stats, g .. '\31n') or '0')
  local low = redis.call('HGET', stats, g .. '\31min')
  local high = redis.call('HGET', stats, g .. '\31max')
  local length = redis.call('LLEN', samples)
  local sum = 0
  for i, text in ipairs(v[4]) do
    local x = tonumber(text)
    n = n + 1
    sum = sum + x
    if not low or x < tonumber(low) then low = text end
    if not high or x > tonumber(high) then high = text end
    if length < cap then
      redis.call('RPUSH', samples, text)
      length = length + 1
    else
      local j = math.floor(v[5][i] * n)
      if j < cap then redis.call('LSET', samples, j, text) end
    end
  end
  redis.call('HSET', stats, g .. '\31n', string.format('%d', n), g .. '\31min', low, g .. '\31max', high)
  -- pcall: a sum beyond the float range is refused by Redis; avg is then off, nothing else
  redis.pcall('HINCRBYFLOAT', stats, g .. '\31sum', string.format('%.17g', sum))
  redis.call('PEXPIREAT', stats, v[7])
  redis.call('PEXPIREAT', samples, v[7])
end
return 1
"""

# Infinite or NaN values become null: Lua's cjson would refuse the whole batch over them.
_encode = msgspec.json.Encoder().encode
_alert_decoder = msgspec.json.Decoder(AlertRecord)
_stored_decoder = msgspec.json.Decoder(StoredAlert)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _group_hash(group: str) -> str:
    return hashlib.blake2b(group.encode(), digest_size=6).hexdigest()


class AlertState:
    """Reads and atomically changes the shared alert state of one stream prefix."""

    def __init__(self, client: redis.Redis, names: StreamNames, *, history: int = 10_000) -> None:
        self.client = client
        self.stream = names.alerts
        self.state_key = f"{names.alerts}:state"
        self.history = history
        self._transition = client.register_script(_TRANSITION)
        self._first_seen = client.register_script(_FIRST_SEEN)
        self._record = client.register_script(_RECORD)

    # --- key names ---

    def rate_key(self, rule: str, bucket: int) -> str:
        return f"{self.stream}:rate:{rule}:{bucket}"

    def value_key(self, rule: str, bucket: int) -> str:
        return f"{self.stream}:value:{rule}:{bucket}"

    def samples_key(self, rule: str, bucket: int, group: str) -> str:
        return f"{self.stream}:samples:{rule}:{bucket}:{_group_hash(group)}"

    def seen_key(self, rule: str) -> str:
        return f"{self.stream}:seen:{rule}"

    def known_key(self, rule: str) -> str:
        return f"{self.stream}:known:{rule}"

    # --- writes ---

    def record(self, updates: Updates, rules: dict[str, CompiledRule]) -> None:
        """Add the window counts, value samples and last-seen times of ``updates``."""
        keys: list[str] = []
        index: dict[str, int] = {}

        def ref(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)  # Lua arrays start at 1
            return index[key]

        counts = [
            [ref(self.rate_key(name, bucket)), group, n, bucket_expiry_ms(rules[name].window, bucket)]
            for (name, bucket), groups in updates.counts.items()
            if name in rules
            for group, n in groups.items()
        ]
        seen = []
        for (name, group), ts in updates.seen.items():
            rule = rules.get(name)
            if rule is not None and isinstance(rule.rule, AbsenceRule):
                seen.append([ref(self.seen_key(name)), group, ts, int(rule.rule.forget_after * 1000)])
        values = []
        for (name, bucket, group), samples in updates.samples.items():
            rule = rules.get(name)
            if rule is None or not isinstance(rule.rule, ValueRule):
                continue
            values.append(
                [
                    ref(self.value_key(name, bucket)),
                    ref(self.samples_key(name, bucket, group)),
                    group,
                    [repr(sample) for sample in samples],
                    [random.random() for _ in samples],
                    rule.rule.max_samples,
                    bucket_expiry_ms(rule.window, bucket),
                ]
            )
        if counts or seen or values:
            self._record(keys=keys, args=[_encode({"counts": counts, "seen": seen, "values": values})])

    def first_seen(self, rule: CompiledRule, sightings: Sequence[Sighting], now: float) -> list[AlertRecord]:
        """Remember ``sightings`` of a ``new`` rule; fire for keys never seen or silent too long."""
        spec = rule.rule
        assert isinstance(spec, NewRule)
        batch = {
            "sightings": [
                [
                    sighting.key,
                    sighting.ts,
                    candidate(rule, sighting.group, sighting.first, active=True),
                    candidate(rule, sighting.group, sighting.regression, active=True),
                ]
                for sighting in sightings
            ],
            "regression_after": float(spec.regression_after),
            "max_known": spec.max_known,
            "ttl_ms": int(max(KNOWN_TTL_MIN, 2 * spec.regression_after) * 1000),
        }
        out = self._first_seen(
            keys=[self.state_key, self.stream, self.known_key(rule.name)],
            args=[now, iso_time(now), self.history, _encode(batch)],
        )
        return [_alert_decoder.decode(payload) for payload in out]

    def transition(self, candidates: Sequence[Candidate], expired: Sequence[Expired], now: float) -> list[AlertRecord]:
        """Apply conditions to the alerts' lifecycle; returns the notifications that went out."""
        if not candidates and not expired:
            return []
        batch = {"candidates": candidates, "expired": [[item.fp, item.resolved] for item in expired]}
        out = self._transition(
            keys=[self.state_key, self.stream],
            args=[now, iso_time(now), self.history, _encode(batch)],
        )
        return [_alert_decoder.decode(payload) for payload in out]

    # --- reads ---

    def snapshot(self, rules: Sequence[CompiledRule], now: float) -> Snapshot:
        """The windows, last-seen times and alert states the rules are evaluated on."""
        pipe = self.client.pipeline(transaction=False)
        plan: list[tuple[CompiledRule, list[int]]] = []
        for rule in rules:
            spec = rule.rule
            if isinstance(spec, RateRule):
                buckets = list(window_buckets(spec.window, now))
                for bucket in buckets:
                    pipe.hgetall(self.rate_key(rule.name, bucket))
            elif isinstance(spec, ValueRule):
                buckets = list(window_buckets(spec.window, now))
                for bucket in buckets:
                    pipe.hgetall(self.value_key(rule.name, bucket))
            elif isinstance(spec, AbsenceRule):
                buckets = []
                pipe.zremrangebyscore(self.seen_key(rule.name), "-inf", f"({now - spec.forget_after}")
                pipe.zrange(self.seen_key(rule.name), 0, -1, withscores=True)
            else:
                continue
            plan.append((rule, buckets))
        pipe.hgetall(self.state_key)
        replies = iter(pipe.execute())

        rate: dict[str, list[dict[str, int]]] = {}
        stats: dict[str, list[tuple[int, dict[str, dict[str, str]]]]] = {}
        seen: dict[str, dict[str, float]] = {}
        for rule, buckets in plan:
            if isinstance(rule.rule, RateRule):
                rate[rule.name] = [
                    {_text(group): int(n) for group, n in next(replies).items()} for _ in buckets
                ]
            elif isinstance(rule.rule, ValueRule):
                stats[rule.name] = [(bucket, _parse_stats(next(replies))) for bucket in buckets]
            else:
                next(replies)  # the ZREMRANGEBYSCORE count
                seen[rule.name] = {_text(group): float(ts) for group, ts in next(replies)}
        alerts = {_text(fp): _stored_decoder.decode(raw) for fp, raw in next(replies).items()}
        return Snapshot(rate=rate, value=self._slices(rules, stats), seen=seen, alerts=alerts)

    def _slices(
        self, rules: Sequence[CompiledRule], stats: dict[str, list[tuple[int, dict[str, dict[str, str]]]]]
    ) -> dict[str, dict[str, list[BucketStats]]]:
        """Join the value slices with their reservoirs (read only for percentiles)."""
        by_name = {rule.name: rule for rule in rules}
        wanted: list[tuple[str, int, str]] = []
        for name, buckets in stats.items():
            spec = by_name[name].rule
            assert isinstance(spec, ValueRule)
            if spec.aggregate.startswith("p"):
                wanted += [(name, bucket, group) for bucket, groups in buckets for group in groups]
        samples: dict[tuple[str, int, str], list[float]] = {}
        if wanted:
            pipe = self.client.pipeline(transaction=False)
            for name, bucket, group in wanted:
                pipe.lrange(self.samples_key(name, bucket, group), 0, -1)
            for slot, reply in zip(wanted, pipe.execute()):
                samples[slot] = [float(item) for item in reply]
        result: dict[str, dict[str, list[BucketStats]]] = {}
        for name, buckets in stats.items():
            groups: dict[str, list[BucketStats]] = {}
            for bucket, by_group in buckets:
                for group, fields in by_group.items():
                    groups.setdefault(group, []).append(
                        BucketStats(
                            count=int(fields.get("n", 0)),
                            total=float(fields.get("sum", 0.0)),
                            low=float(fields.get("min", "inf")),
                            high=float(fields.get("max", "-inf")),
                            samples=samples.get((name, bucket, group), ()),
                        )
                    )
            result[name] = groups
        return result

    def alerts(self) -> dict[str, StoredAlert]:
        """Every alert state: firing ones and those resolved within their cooldown."""
        return {_text(fp): _stored_decoder.decode(raw) for fp, raw in self.client.hgetall(self.state_key).items()}

    def recent(self, count: int) -> list[tuple[str, AlertRecord]]:
        """The last ``count`` notifications of the alerts stream, newest first, with entry ids."""
        entries = self.client.xrevrange(self.stream, count=count)
        out = []
        for entry_id, fields in entries:
            payload: Optional[bytes] = fields.get(b"alert", fields.get("alert"))  # type: ignore[call-overload]
            if payload is None:
                continue
            try:
                out.append((_text(entry_id), _alert_decoder.decode(payload)))
            except msgspec.ValidationError:
                continue  # written by something else; `alerts` shows what it understands
        return out


def _parse_stats(raw: dict[Any, Any]) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    for field, value in raw.items():
        group, _, stat = _text(field).rpartition(SEP)
        groups.setdefault(group, {})[stat] = _text(value)
    return groups

