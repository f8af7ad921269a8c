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
    "Slicing",
    "bucket_width_ms",
    "weighted_percentile",
    "window_buckets",
]

BUCKETS_PER_WINDOW = 20
MIN_BUCKET_MS = 50
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


def bucket_width_ms(window: float) -> int:
    return max(MIN_BUCKET_MS, int(window * 1000) // BUCKETS_PER_WINDOW)


def window_buckets(window: float, now: float) -> range:
    """The slices that make up ``window`` ending at ``now`` (the current one included)."""
    width = bucket_width_ms(window)
    current = int(now * 1000) // width
    count = math.ceil(window * 1000 / width)
    return range(current - count + 1, current + 1)


class Slicing:
    """How one rule's window is cut into slices, worked out once for its every event."""

    __slots__ = ("width_ms", "window_ms")

    def __init__(self, window: float) -> None:
        self.width_ms = bucket_width_ms(window)
        self.window_ms = int(window * 1000)

    def slice_of(self, ts: float) -> tuple[int, int]:
        """The slice holding ``ts``, and when it can no longer be part of any window
        (unix ms, with one slice of slack)."""
        width = self.width_ms
        bucket = int(ts * 1000) // width
        return bucket, (bucket + 2) * width + self.window_ms


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
    """What one batch adds to one value slice: ``(key, value)`` pairs, kept until ``expire_ms``.

    ``key`` is the event's idempotence key ("" for the collector's own synthetic
    observations, which are never delivered twice).
    """

    __slots__ = ("expire_ms", "items", "cap")

    def __init__(self, expire_ms: int, cap: int = 0) -> None:
        self.expire_ms = expire_ms
        self.cap = cap
        self.items: list[tuple[str, float]] = []

    def __len__(self) -> int:
        return len(self.items)


class Tally:
    """What one batch adds to one rate slice: per group, the idempotence keys of the events counted.

    Keys are kept by group so the state adds each group's keys to the slice's
    id set in one command and counts what was new ("" keys always count).
    """

    __slots__ = ("expire_ms", "groups")

    def __init__(self, expire_ms: int) -> None:
        self.expire_ms = expire_ms
        self.groups: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.groups.values())

    def extend(self, other: "Tally") -> None:
        for group, keys in other.groups.items():
            self.groups.setdefault(group, []).extend(keys)


class Updates:
    """What a batch of observations adds to the shared state; batches merge.

    ``counts``: (rule, slice) -> keys per group; ``samples``: (rule, slice, group)
    -> values; ``seen``: (rule, group) -> (last seen, ttl ms); ``sightings``:
    (rule, key) -> whatever the rule needs to judge a first sighting.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], Tally] = {}
        self.samples: dict[tuple[str, int, str], Slice] = {}
        self.seen: dict[tuple[str, str], tuple[float, int]] = {}
        self.sightings: dict[tuple[str, str], Any] = {}

    def __bool__(self) -> bool:
        return bool(self.counts or self.samples or self.seen or self.sightings)

    def count(self, rule: str, bucket: int, expire_ms: int, key: str, group: str) -> None:
        slot = self.counts.get((rule, bucket))
        if slot is None:
            slot = self.counts[(rule, bucket)] = Tally(expire_ms)
        keys = slot.groups.get(group)
        if keys is None:
            keys = slot.groups[group] = []
        keys.append(key)

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
            sum(len(slot) for slot in self.counts.values())
            + sum(len(slot) for slot in self.samples.values())
            + len(self.seen)
            + len(self.sightings)
        )

    def merge(self, other: "Updates") -> None:
        for key, tally in other.counts.items():
            self.counts.setdefault(key, Tally(tally.expire_ms)).extend(tally)
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
                dropped += len(table.pop(key))  # type: ignore[arg-type]
        return dropped
