"""``absence``: a group seen before (by default a service) sends nothing matching for ``period``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from collector.alerts.kinds.base import AlertRule, Reader, group_text, text
from collector.alerts.observation import Observation
from collector.alerts.records import human_duration
from collector.alerts.windows import Measure, Updates
from collector.durations import format_duration

if TYPE_CHECKING:
    from collector.alerts.state import AlertState

__all__ = ["AbsenceKind", "evaluate_absence"]


def evaluate_absence(period: float, seen: Mapping[str, float], now: float) -> dict[str, Measure]:
    measures = {}
    for group, last in seen.items():
        silence = max(0.0, now - last)
        measures[group] = Measure(silence, silence > period)
    return measures


class AbsenceKind(AlertRule):
    kind = "absence"

    @property
    def threshold(self) -> Optional[float]:
        return float(self.rule.period)

    def observe(self, obs: Observation, ts: float, now: float, updates: Updates) -> None:
        updates.see(self.name, self.group_key(obs), ts, int(self.rule.forget_after * 1000))

    def read(self, state: "AlertState", pipe: Any, now: float) -> Optional[Reader]:
        key = state.seen_key(self.name)
        pipe.zremrangebyscore(key, "-inf", f"({now - self.rule.forget_after}")
        pipe.zrange(key, 0, -1, withscores=True)

        def measures(replies: Iterator[Any]) -> dict[str, Measure]:
            next(replies)  # the ZREMRANGEBYSCORE count
            seen = {text(group): float(ts) for group, ts in next(replies)}
            return evaluate_absence(self.rule.period, seen, now)

        return measures

    def judging(self, listening_since: float, now: float) -> bool:
        # After a restart the backlog still holds events newer than the last ones
        # seen, so a silence measured before catching up would be a false alarm.
        return now - listening_since > self.rule.period

    def default_summary(self, group: Mapping[str, str], value: Optional[float], firing: bool) -> str:
        rule = self.rule
        source = group_text(group) or "any source"
        if value is None:
            return f"{source} is no longer tracked (silent longer than {format_duration(rule.forget_after)})"
        if firing:
            return f"nothing matching from {source} for {human_duration(value)} (expected within {format_duration(rule.period)})"
        return f"{source} is sending again (last matching event {human_duration(value)} ago)"
