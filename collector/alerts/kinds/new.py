"""``new``: a ``key`` value (by default an error fingerprint) seen for the first time, per group.

Judged as it is observed, not from a window: the first sighting fires at once,
and a key silent for ``regression_after`` that shows up again fires as a regression.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from collector.alerts.kinds.base import AlertRule, json_text
from collector.alerts.observation import Observation, label_name, label_value
from collector.alerts.records import AlertRecord, FirstSightings
from collector.alerts.windows import Updates
from collector.durations import format_duration
from emitters.fingerprint import fingerprint, message_template

__all__ = ["NewKind", "Sighting", "KNOWN_TTL_MIN"]

# Known keys are kept at least this long after they were last seen.
KNOWN_TTL_MIN = 30 * 86400.0


class Sighting(NamedTuple):
    """The first event of a batch with a given key, and its latest time."""

    key: str
    group: str
    ts: float
    first: AlertRecord
    regression: AlertRecord


class NewKind(AlertRule):
    kind = "new"

    def _key(self, obs: Observation) -> Optional[str]:
        value = obs.get(self.rule.key)
        if value is None and self.rule.key == "fingerprint":
            # What the emitter computes for an error without a traceback.
            error_type = obs.get("error_type")
            if error_type is not None:
                value = fingerprint(str(error_type), message_template(label_value(obs.get("message"))))
        return None if value is None else label_value(value)

    def observe(self, obs: Observation, ts: float, now: float, updates: Updates) -> None:
        key_value = self._key(obs)
        if key_value is None:
            return
        values = self.group_values(obs)
        identity = json_text([key_value, *values])
        known = updates.sightings.get((self.name, identity))
        if known is None:
            group = json_text(values)
            updates.sightings[(self.name, identity)] = self._sighting(obs, identity, group, key_value)._replace(ts=ts)
        elif ts > known.ts:
            updates.sightings[(self.name, identity)] = known._replace(ts=ts)

    def _sighting(self, obs: Observation, identity: str, group: str, key: str) -> Sighting:
        rule = self.rule
        what = label_value(obs.get("error_type")) or f"{rule.key} {key}"
        message = label_value(obs.get("message"))
        tail = f": {message[:200]}" if message else ""
        extra = {label_name(rule.key): key, "service": obs.service}
        first = self.draft(group, 1.0, extra_labels=extra, summary=f"new {what} in {obs.service}{tail}")
        regression = self.draft(
            group,
            None,
            extra_labels=extra,
            threshold=float(rule.regression_after),
            summary=f"{what} is back in {obs.service} after more than "
            f"{format_duration(rule.regression_after)} without one{tail}",
        )
        return Sighting(key=identity, group=group, ts=obs.ts, first=first, regression=regression)

    def first_sightings(self, updates: Updates) -> Optional[FirstSightings]:
        sightings = [sighting for (name, _), sighting in updates.sightings.items() if name == self.name]
        if not sightings:
            return None
        rule = self.rule
        return FirstSightings(
            rule=self.name,
            sightings=[
                (
                    sighting.key,
                    sighting.ts,
                    self.candidate(sighting.group, sighting.first, active=True),
                    self.candidate(sighting.group, sighting.regression, active=True),
                )
                for sighting in sightings
            ],
            regression_after=float(rule.regression_after),
            max_known=rule.max_known,
            ttl_ms=int(max(KNOWN_TTL_MIN, 2 * rule.regression_after) * 1000),
        )
