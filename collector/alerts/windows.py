"""Sliding windows cut into slices, aggregates over them, and what a batch adds to them.

Windows are cut into slices of ``window / 20`` (at least 50 ms) keyed by
event time, so every collector of a group adds into the same slices and a
window is the sum of its last 20 slices. Every counted value carries the
idempotence key of its event, so a redelivered entry adds nothing the second time.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence

__all__ = [
    "BucketStats",
    "Measure",
    "Updates",
    "aggregate",
    "breaches",
    "bucket_expiry_ms",
    "bucket_width_ms",
    "weighted_percentile",
    "window_buckets",
]

BUCKETS_PER_WINDOW = 20
MIN_BUCKET_MS = 50
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def bucket_width_ms(window: float) -> int:
    return max(MIN_BUCKET_MS, int(window * 1000) // BUCKETS_PER_WINDOW)


def bucket_of(window: float, ts: float) -> int:
    return int(ts * 1000) // bucket_width_ms(window)


def window_buckets(window: float, now: float) -> range:
    """The slices that make up ``window`` ending at ``now`` (the current one included)."""
    width = bucket_width_ms(window)
    current = int(now * 1000) // width
    count = math.ceil(window * 1000 / width)
    return range(current - count + 1, current + 1)


def bucket_expiry_ms(window: float, bucket: int) -> int:
    """When a slice can no longer be part of any window (unix ms), with one slice of slack."""
    width = bucket_width_ms(window)
    return (bucket + 2) * width + int(window * 1000)


class Measure(NamedTuple):
    """A group's current value and whether it breaches the rule."""

    value: Optional[float]
    breached: bool


class BucketStats(NamedTuple):
    """One window slice of a value rule for one group; ``samples`` may be a reservoir."""

    count: int
    total: float
    low: float
    high: float
    samples: Sequence[float]


def breaches(op: str, value: float, threshold: float) -> bool:
    if op == ">":
        return value > threshold
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    if op == "<=":
        return value <= threshold
    raise ValueError(f"unknown comparison {op!r}")


def weighted_percentile(points: Sequence[tuple[float, float]], q: float) -> Optional[float]:
    """Nearest-rank percentile of ``(value, weight)`` points (weight 1 each: the textbook one)."""
    if not points:
        return None
    ordered = sorted(points)
    total = sum(weight for _, weight in ordered)
    target = q * total - 1e-9 * total
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= target:
            return value
    return ordered[-1][0]


def aggregate(kind: str, slices: Sequence[BucketStats]) -> Optional[float]:
    """``kind`` over the window made of ``slices``; None when there is no value."""
    count = sum(item.count for item in slices)
    if count == 0:
        return None
    if kind == "count":
        return float(count)
    if kind == "sum":
        return sum(item.total for item in slices)
    if kind == "avg":
        return sum(item.total for item in slices) / count
    if kind == "min":
        return min(item.low for item in slices if item.count)
    if kind == "max":
        return max(item.high for item in slices if item.count)
    # A reservoir stands in for more values than it holds: weigh each sample accordingly.
    points = [
        (sample, item.count / len(item.samples)) for item in slices if item.samples for sample in item.samples
    ]
    return weighted_percentile(points, PERCENTILES[kind])


class Slice:
    """What one batch adds to one window slice: ``(key, item)`` pairs, kept until ``expire_ms``.

    ``key`` is the event's idempotence key ("" for the collector's own synthetic
    observations, which are never delivered twice); ``item`` a group (counts) or a value (samples).
    """

    __slots__ = ("expire_ms", "items", "cap")

    def __init__(self, expire_ms: int, cap: int = 0) -> None:
        self.expire_ms = expire_ms
        self.cap = cap
        self.items: list[tuple[str, Any]] = []


class Updates:
    """What a batch of observations adds to the shared state; batches merge.

    ``counts``: (rule, slice) -> groups counted; ``samples``: (rule, slice, group)
    -> values; ``seen``: (rule, group) -> (last seen, ttl ms); ``sightings``:
    (rule, key) -> whatever the rule needs to judge a first sighting.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], Slice] = {}
        self.samples: dict[tuple[str, int, str], Slice] = {}
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}
        self.sightings: dict[tuple[str, str], Any] = {}

    def __bool__(self) -> bool:
        return bool(self.counts or self.samples or self.seen or self.sightings)

    def count(self, rule: str, bucket: int, expire_ms: int, key: str, group: str) -> None:
        slot = self.counts.get((rule, bucket))
        if slot is None:
            slot = self.counts[(rule, bucket)] = Slice(expire_ms)
        slot.items.append((key, group))

    def sample(self, rule: str, bucket: int, group: str, expire_ms: int, cap: int, key: str, value: float) -> None:
        slot = self.samples.get((rule, bucket, group))
        if slot is None:
            slot = self.samples[(rule, bucket, group)] = Slice(expire_ms, cap)
        slot.items.append((key, value))

    def see(self, rule: str, group: str, ts: float, ttl_ms: int) -> None:
        known = self.seen.get((rule, group))
        if known is None or ts > known[0]:
            self.seen[(rule, group)] = (ts, ttl_ms)

    def size(self) -> int:
        """Roughly the number of state operations (bounds what is kept while Redis is away)."""
        return (
            sum(len(slot.items) for slot in self.counts.values())
            + sum(len(slot.items) for slot in self.samples.values())
            + len(self.seen)
            + len(self.sightings)
        )

    def merge(self, other: "Updates") -> None:
        for key, slot in other.counts.items():
            self.counts.setdefault(key, Slice(slot.expire_ms)).items.extend(slot.items)
        for key, slot in other.samples.items():
            self.samples.setdefault(key, Slice(slot.expire_ms, slot.cap)).items.extend(slot.items)
        for (rule, group), (ts, ttl) in other.seen.items():
            self.see(rule, group, ts, ttl)
        for key, sighting in other.sightings.items():
            known = self.sightings.get(key)
            self.sightings[key] = sighting if known is None else known._replace(ts=max(known.ts, sighting.ts))

    def drop_expired(self, now: float) -> int:
        """Forget slices that no window can include any more; returns how many values went."""
        now_ms = now * 1000
        dropped = 0
        for table in (self.counts, self.samples):
            for key in [key for key, slot in table.items() if slot.expire_ms < now_ms]:
                dropped += len(table.pop(key).items)  # type: ignore[attr-defined]
        return dropped
