"""Notification policy, Alertmanager's model: grouping, group_wait/group_interval/repeat_interval,
inhibition and silences, decided from the group's shared alert state.

Every collector of a consumer group runs :meth:`Notifier.tick` after its
evaluation; a notification group goes out when it is due, and a
compare-and-set on the group's notification state in Redis
(``{alerts stream}:{group}:notify``, group key -> :class:`GroupState`)
makes sure exactly one collector sends it. A notification carries every
alert of its group that fires and is neither silenced nor inhibited, plus the
ones that were in the previous notification and have resolved since.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import msgspec

from collector.alerts.config import AlertsConfig, InhibitRule
from collector.alerts.records import AlertRecord, StoredAlert, iso_time
from collector.alerts.silences import Silence, alert_labels, silenced_by
from collector.alerts.state import AlertState

__all__ = ["GroupState", "Notifier", "Timing", "inhibited", "due", "plan_group"]

# KEYS[1] notify hash; ARGV[1] group key, ARGV[2] the state read before ("" for none),
# ARGV[3] the new state ("" deletes it). Returns 1 when this caller won.
_COMPARE_AND_SET = r"""
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if current ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
return 1
"""


class GroupState(msgspec.Struct, kw_only=True):
    """A notification group: since when it has alerts, when it was last sent, and what went out then."""

    first: float
    sent: Optional[float] = None
    digest: list[str] = []
    alerts: dict[str, AlertRecord] = {}


class Timing(NamedTuple):
    group_wait: float
    group_interval: float
    repeat_interval: float


class Plan(NamedTuple):
    """What to do with one group: the state to store (None: delete it) and what to send now."""

    state: Optional[GroupState]
    send: list[AlertRecord]


def inhibited(firing: Sequence[AlertRecord], rules: Sequence[InhibitRule]) -> set[str]:
    """Fingerprints of the alerts in ``firing`` that a firing source alert inhibits."""
    if not rules:
        return set()
    labelled = [(record, alert_labels(record)) for record in firing]
    held: set[str] = set()
    for rule in rules:
        sources = [labels for record, labels in labelled if _matches(labels, rule.source_match)]
        for record, labels in labelled:
            if record.fingerprint in held or not _matches(labels, rule.target_match):
                continue
            if any(
                source is not labels and all(source.get(name, "") == labels.get(name, "") for name in rule.equal)
                for source in sources
            ):
                held.add(record.fingerprint)
    return held


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(name, "") == value for name, value in wanted.items())


def due(state: GroupState, digest: list[str], has_firing: bool, timing: Timing, now: float) -> bool:
    """Alertmanager's timers: group_wait before the first send, group_interval after a change, else repeat_interval."""
    if state.sent is None:
        return now >= state.first + timing.group_wait
    if digest != state.digest:
        return now >= state.sent + timing.group_interval
    return has_firing and now >= state.sent + timing.repeat_interval


def plan_group(
    state: Optional[GroupState],
    current: Mapping[str, AlertRecord],
    still_firing: Iterable[str],
    timing: Timing,
    now: float,
    ended: Mapping[str, AlertRecord] = {},
) -> Optional[Plan]:
    """What one group needs now, or None when nothing changes.

    ``current``: the group's alerts that fire and are let through;
    ``still_firing``: fingerprints that fire but are held back (they leave a
    notification without a resolution); ``ended``: resolved alerts as the
    state recorded them (else a resolution is dated now).
    """
    held = set(still_firing)
    previous = state.alerts if state is not None else {}
    resolved = {fp: record for fp, record in previous.items() if fp not in current and fp not in held}
    if state is None:
        if not current:
            return None
        state = GroupState(first=now)
        if not due(state, sorted(current), True, timing, now):
            return Plan(state, [])
    digest = sorted([*current, *(f"-{fp}" for fp in resolved)])
    if not current and not resolved:
        return Plan(None, [])
    if not due(state, digest, bool(current), timing, now):
        return None
    send = list(current.values()) + [ended.get(fp) or _resolution(record, now) for fp, record in resolved.items()]
    if not current:
        return Plan(None, send)
    return Plan(GroupState(first=state.first, sent=now, digest=sorted(current), alerts=dict(current)), send)


def _resolution(record: AlertRecord, now: float) -> AlertRecord:
    if record.status == "resolved":
        return record
    return msgspec.structs.replace(record, status="resolved", ends_at=iso_time(now))


_state_decoder = msgspec.json.Decoder(GroupState)
_encode = msgspec.json.Encoder().encode


class Notifier:
    """Turns the shared alert state of one consumer group into notifications, per the policy of ``config``."""

    def __init__(
        self,
        config: AlertsConfig,
        state: AlertState,
        silences: Callable[[], list[Silence]],
        send: Callable[[Sequence[AlertRecord]], None],
    ) -> None:
        self.config = config
        self.state = state
        self.key = f"{state.base}:notify"
        self._silences = silences
        self._send = send
        self._cas = state.client.register_script(_COMPARE_AND_SET)
        self._repeat = {rule.name: float(config.repeat_interval_for(rule)) for rule in config.active_rules()}

    def group_key(self, record: AlertRecord) -> str:
        labels = alert_labels(record)
        return _encode([labels.get(name, "") for name in self.config.group_by]).decode()

    def tick(self, alerts: Mapping[str, StoredAlert], now: float) -> None:
        """Send every group that is due; raises redis.RedisError when Redis is away (nothing is sent then)."""
        firing = [stored.record for stored in alerts.values() if stored.status == "firing"]
        ended = {fp: stored.record for fp, stored in alerts.items() if stored.status == "resolved"}
        silences = self._silences()
        held = inhibited(firing, self.config.inhibit_rules)
        held |= {record.fingerprint for record in firing if silenced_by(record, silences, now) is not None}
        groups: dict[str, dict[str, AlertRecord]] = {}
        held_groups: dict[str, list[str]] = {}
        for record in firing:
            key = self.group_key(record)
            if record.fingerprint in held:
                held_groups.setdefault(key, []).append(record.fingerprint)
            else:
                groups.setdefault(key, {})[record.fingerprint] = record
        raw_states = {_text(key): raw for key, raw in self.state.client.hgetall(self.key).items()}
        for key in set(groups) | set(raw_states):
            raw = raw_states.get(key)
            known = None if raw is None else _state_decoder.decode(raw)
            current = groups.get(key, {})
            plan = plan_group(known, current, held_groups.get(key, ()), self._timing(current, known), now, ended)
            if plan is None:
                continue
            new = "" if plan.state is None else _encode(plan.state)
            if self._cas(keys=[self.key], args=[key, _text(raw or ""), new]) == 1 and plan.send:
                self._send(plan.send)

    def _timing(self, current: Mapping[str, AlertRecord], known: Optional[GroupState]) -> Timing:
        """The section's timers; a group repeats at the shortest repeat_interval of its rules."""
        default = float(self.config.repeat_interval)
        records = list(current.values()) + (list(known.alerts.values()) if known is not None else [])
        repeat = min((self._repeat.get(record.rule, default) for record in records), default=default)
        return Timing(float(self.config.group_wait), float(self.config.group_interval), repeat)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
