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
from collector.alerts.scripts import RECORD, TRANSITION
from collector.alerts.windows import Updates
from emitters.streams import StreamNames

if TYPE_CHECKING:
    from collector.alerts.kinds import AlertRule

__all__ = ["AlertState"]

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
        self._transition = client.register_script(TRANSITION)
        self._record = client.register_script(RECORD)

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
