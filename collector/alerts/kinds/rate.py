"""``rate``: more than ``threshold`` matching events in ``window``, per group."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional

from collector.alerts.kinds.base import Reader, WindowedRule, group_text, text
from collector.alerts.observation import Observation
from collector.alerts.windows import Measure, Updates, breaches, window_buckets
from collector.durations import format_duration

if TYPE_CHECKING:
    from collector.alerts.state import AlertState

__all__ = ["RateKind", "evaluate_rate"]


def evaluate_rate(op: str, threshold: float, slices: list[Mapping[str, int]]) -> dict[str, Measure]:
    totals: Counter[str] = Counter()
    for counts in slices:
        totals.update(counts)
    return {group: Measure(float(n), breaches(op, n, threshold)) for group, n in totals.items()}


class RateKind(WindowedRule):
    kind = "rate"
    clear_value = 0.0

    def observe(self, obs: Observation, ts: float, now: float, updates: Updates) -> None:
        if ts <= now - self._window:
            return
        bucket, expire_ms = self.slicing.slice_of(ts)
        updates.count(self.name, bucket, expire_ms, obs.key, self.group_key(obs))

    def read(self, state: "AlertState", pipe: Any, now: float) -> Optional[Reader]:
        buckets = window_buckets(self.window, now)
        for bucket in buckets:
            pipe.hgetall(state.counts_key(self.name, bucket))

        def measures(replies: Iterator[Any]) -> dict[str, Measure]:
            slices = [{text(group): int(n) for group, n in next(replies).items()} for _ in buckets]
            return evaluate_rate(self.rule.op, self.rule.threshold, slices)

        return measures

    def default_summary(self, group: Mapping[str, str], value: Optional[float], firing: bool) -> str:
        where = f" for {group_text(group)}" if group else ""
        rule = self.rule
        return (
            f"{value or 0:g} matching events in {format_duration(rule.window)}{where} "
            f"(threshold {rule.op} {rule.threshold:g})"
        )
