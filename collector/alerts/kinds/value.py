"""``value``: an aggregate of a numeric field over ``window`` crosses ``threshold``, per group."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence

from collector.alerts.kinds.base import Reader, WindowedRule, group_text, text
from collector.alerts.observation import Observation
from collector.alerts.windows import (
    BucketStats,
    Measure,
    Updates,
    aggregate,
    breaches,
    window_buckets,
)
from collector.durations import format_duration

if TYPE_CHECKING:
    from collector.alerts.state import AlertState

__all__ = ["ValueKind", "evaluate_value"]

SEP = "\x1f"


def evaluate_value(
    aggregate_kind: str, op: str, threshold: float, min_samples: int, slices: Mapping[str, Sequence[BucketStats]]
) -> dict[str, Measure]:
    measures = {}
    for group, parts in slices.items():
        count = sum(item.count for item in parts)
        value = aggregate(aggregate_kind, parts)
        breached = value is not None and count >= min_samples and breaches(op, value, threshold)
        measures[group] = Measure(value, breached)
    return measures


class ValueKind(WindowedRule):
    kind = "value"

    def observe(self, obs: Observation, ts: float, now: float, updates: Updates) -> None:
        if ts <= now - self._window:
            return
        value = obs.get(self.rule.field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        bucket, expire = self.slicing.slice_of(ts)
        updates.sample(self.name, bucket, self.group_key(obs), expire, self.rule.max_samples, obs.key, float(value))

    def read(self, state: "AlertState", pipe: Any, now: float) -> Optional[Reader]:
        buckets = list(window_buckets(self.window, now))
        for bucket in buckets:
            pipe.hgetall(state.stats_key(self.name, bucket))

        def measures(replies: Iterator[Any]) -> dict[str, Measure]:
            stats = [(bucket, _parse_stats(next(replies))) for bucket in buckets]
            samples: dict[tuple[int, str], list[float]] = {}
            if self.rule.aggregate.startswith("p"):
                # Reservoirs are read only for percentiles, in a second round trip.
                wanted = [(bucket, group) for bucket, groups in stats for group in groups]
                reads = state.client.pipeline(transaction=False)
                for bucket, group in wanted:
                    reads.lrange(state.samples_key(self.name, bucket, group), 0, -1)
                for slot, reply in zip(wanted, reads.execute() if wanted else ()):
                    samples[slot] = [float(item) for item in reply]
            groups: dict[str, list[BucketStats]] = {}
            for bucket, by_group in stats:
                for group, fields in by_group.items():
                    groups.setdefault(group, []).append(
                        BucketStats(
                            count=int(fields.get("n", 0)),
                            total=float(fields.get("sum", 0.0)),
                            low=float(fields.get("min", "inf")),
                            high=float(fields.get("max", "-inf")),
                            samples=samples.get((bucket, group), ()),
                        )
                    )
            rule = self.rule
            return evaluate_value(rule.aggregate, rule.op, rule.threshold, rule.min_samples, groups)

        return measures

    def default_summary(self, group: Mapping[str, str], value: Optional[float], firing: bool) -> str:
        rule = self.rule
        where = f" for {group_text(group)}" if group else ""
        if value is None:
            return f"no {rule.field} values in {format_duration(rule.window)}{where}"
        return (
            f"{rule.aggregate}({rule.field}) = {value:g} over {format_duration(rule.window)}{where} "
            f"(threshold {rule.op} {rule.threshold:g})"
        )


def _parse_stats(raw: dict[Any, Any]) -> dict[str, dict[str, str]]:
    groups: dict[str, dict[str, str]] = {}
    for field, value in raw.items():
        group, _, stat = text(field).rpartition(SEP)
        groups.setdefault(group, {})[stat] = text(value)
    return groups
