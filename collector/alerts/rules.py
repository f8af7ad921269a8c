"""Rule evaluation without I/O: matching, windows, aggregates, records.

The engine turns a batch of events into :class:`Updates` (what to add to the
shared state in Redis), and the shared state read back from Redis into
:class:`Measure` values per group; everything here is a pure function of its
arguments so it can be tested without Redis or a clock.

Windows are cut into slices of ``window / 20`` (at least 50 ms) keyed by
event time, so every collector of a group adds into the same slices and a
window is the sum of its last 20 slices.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import string
from collections import Counter
from typing import AbstractSet, Any, Iterable, Literal, Mapping, NamedTuple, Optional, Sequence, Union

import msgspec

from collector.alerts.config import (
    LAG_EVENT_TYPE,
    AbsenceRule,
    AlertsConfig,
    Filter,
    NewRule,
    RateRule,
    Rule,
    ValueRule,
    service_pattern,
    type_pattern,
)
from collector.durations import format_duration
from emitters.events import SEVERITY_RANK, Event
from emitters.fingerprint import fingerprint, message_template

__all__ = [
    "Scalar",
    "Observation",
    "Matcher",
    "CompiledRule",
    "compile_rules",
    "Updates",
    "Sighting",
    "collect",
    "BucketStats",
    "Measure",
    "aggregate",
    "weighted_percentile",
    "evaluate_rate",
    "evaluate_value",
    "evaluate_absence",
    "breaches",
    "AlertRecord",
    "Draft",
    "alert_fingerprint",
    "iso_time",
    "human_duration",
    "window_buckets",
    "bucket_width_ms",
    "bucket_expiry_ms",
    "StoredAlert",
    "Snapshot",
    "Candidate",
    "Expired",
    "candidate",
    "warming_up",
    "plan",
]

Scalar = Union[str, int, float, bool]

BUCKETS_PER_WINDOW = 20
MIN_BUCKET_MS = 50
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


# --- events as rules see them ------------------------------------------------------------------


class Observation:
    """One event as rules see it: type, service, severity, time and field lookup.

    ``ts`` is unix seconds. Built from a decoded event, or from plain fields
    for the collector's own synthetic events (lag), which only rules naming
    their type in ``filter.type`` see.
    """

    __slots__ = ("type", "service", "severity", "ts", "synthetic", "_event", "_fields")

    def __init__(
        self,
        type: str,
        service: str,
        severity: str,
        ts: float,
        *,
        event: Optional[Event] = None,
        fields: Optional[Mapping[str, Scalar]] = None,
    ) -> None:
        self.type = type
        self.service = service
        self.severity = severity
        self.ts = ts
        self.synthetic = event is None
        self._event = event
        self._fields = fields

    @classmethod
    def from_event(cls, event: Event) -> "Observation":
        return cls(event.type, event.service, event.severity, event.ts / 1e9, event=event)

    @classmethod
    def lag(cls, stream: str, lag: int, maxlen: int, ts: float) -> "Observation":
        fields = {"stream": stream, "lag": lag, "maxlen": maxlen, "ratio": lag / maxlen}
        return cls(LAG_EVENT_TYPE, "telemetry-collector", "info", ts, fields=fields)

    def get(self, name: str) -> Optional[Scalar]:
        """The scalar value of field ``name`` (see :data:`config.FieldName`), or None."""
        if name == "type":
            return self.type
        if self._fields is not None:
            value: Any = self._fields.get(name)
        else:
            event = self._event
            fields = event.__struct_fields__  # type: ignore[union-attr]
            root, dot, key = name.partition(".")
            if dot:
                nested = getattr(event, root) if root in fields else None
                value = nested.get(key) if isinstance(nested, dict) else None
            elif name in fields:
                value = getattr(event, name)
            else:
                value = event.attrs.get(name)  # type: ignore[union-attr]
        return value if isinstance(value, (str, int, float)) else None


def _equal(expected: Scalar, actual: Optional[Scalar]) -> bool:
    # In Python True == 1; in a filter `fields = {cached = true}` must not match 1.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return expected == actual


class Matcher:
    """A compiled :class:`config.Filter`: call it with an observation."""

    def __init__(self, spec: Filter) -> None:
        self._type = None if spec.type is None else type_pattern(spec.type)
        self._service = None if spec.service is None else service_pattern(spec.service)
        self._severity = spec.severity
        self._min_rank = None if spec.min_severity is None else SEVERITY_RANK[spec.min_severity]
        self._fields = tuple(spec.fields.items())

    def __call__(self, obs: Observation) -> bool:
        return self.accepts_type(obs.type, obs.synthetic) and self.accepts(obs)

    def accepts_type(self, type: str, synthetic: bool) -> bool:
        if self._type is None:
            return not synthetic
        return self._type.match(type) is not None

    def accepts_severity(self, severity: str) -> bool:
        if self._severity is not None and severity != self._severity:
            return False
        return self._min_rank is None or SEVERITY_RANK.get(severity, 0) >= self._min_rank

    def accepts(self, obs: Observation) -> bool:
        """Every condition but the type (which callers check once per type)."""
        if self._service is not None and not self._service.match(obs.service):
            return False
        if not self.accepts_severity(obs.severity):
            return False
        return all(_equal(expected, obs.get(name)) for name, expected in self._fields)


def label_value(value: Optional[Scalar]) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def label_name(field: str) -> str:
    """``attrs.region`` -> ``region``; the event's ``severity`` must not shadow the alert's."""
    name = field.rpartition(".")[2]
    name = "".join(char if char.isalnum() or char == "_" else "_" for char in name)
    if not (name[:1].isalpha() or name[:1] == "_"):
        name = f"_{name}"
    return "event_severity" if name == "severity" else name


# --- alert records -----------------------------------------------------------------------------


class AlertRecord(msgspec.Struct, kw_only=True):
    """One notification: what goes to the alerts stream, JSONL, the webhook and the log."""

    rule: str
    kind: Literal["rate", "new", "value", "absence"]
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    summary: str
    value: Optional[float]
    threshold: Optional[float]
    starts_at: str
    ends_at: Optional[str]
    fingerprint: str


class Draft(msgspec.Struct, kw_only=True):
    """An alert record before the shared state decides status, starts_at and ends_at."""

    rule: str
    kind: str
    labels: dict[str, str]
    summary: str
    value: Optional[float]
    threshold: Optional[float]
    fingerprint: str


def alert_fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """The dedup key: a hash of the rule name and the sorted labels."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(rule.encode())
    digest.update(b"\x00")
    digest.update(json.dumps(sorted(labels.items()), separators=(",", ":")).encode())
    return digest.hexdigest()


def iso_time(ts: float) -> str:
    """RFC 3339 UTC with milliseconds, as Alertmanager expects."""
    moment = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def human_duration(seconds: float) -> str:
    """``2m13s``, ``45s``, ``1.2s``: for summaries (config values use format_duration)."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts[:2])


def _json_text(values: list[str]) -> str:
    return _json_encode(values).decode()


_json_encode = msgspec.json.Encoder().encode


class _TemplateValues(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return ""


def _group_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())


# --- compiled rules ----------------------------------------------------------------------------


class CompiledRule:
    """A rule with its filter compiled and its lifecycle timings resolved."""

    def __init__(self, rule: Rule, config: AlertsConfig) -> None:
        self.rule = rule
        self.name = rule.name
        self.kind = rule.kind
        self.matches = Matcher(rule.filter)
        self.repeat_interval = float(config.repeat_interval_for(rule))
        self.resolve_after = float(config.resolve_after_for(rule))
        self.cooldown = float(config.cooldown_for(rule))

    @property
    def window(self) -> float:
        return float(getattr(self.rule, "window", 0.0))

    def group_key(self, obs: Observation) -> str:
        if not self.rule.group_by:
            return "[]"
        return _json_text([label_value(obs.get(name)) for name in self.rule.group_by])

    def group_labels(self, group: str) -> dict[str, str]:
        values = json.loads(group)
        return {label_name(name): value for name, value in zip(self.rule.group_by, values)}

    def labels(self, group: str, extra: Mapping[str, str] = {}) -> dict[str, str]:
        labels = dict(self.rule.labels)
        labels.update(self.group_labels(group))
        labels.update(extra)
        labels["severity"] = self.rule.severity
        return labels

    def draft(
        self,
        group: str,
        value: Optional[float],
        *,
        extra_labels: Mapping[str, str] = {},
        summary: Optional[str] = None,
        threshold: Optional[float] = None,
    ) -> Draft:
        """A firing record for ``group`` (``summary`` replaces the default text)."""
        labels = self.labels(group, extra_labels)
        if threshold is None:
            threshold = self.threshold
        return Draft(
            rule=self.name,
            kind=self.kind,
            labels=labels,
            summary=self.describe(group, labels, value, firing=True, default=summary),
            value=value,
            threshold=threshold,
            fingerprint=alert_fingerprint(self.name, labels),
        )

    @property
    def threshold(self) -> Optional[float]:
        rule = self.rule
        if isinstance(rule, (RateRule, ValueRule)):
            return float(rule.threshold)
        if isinstance(rule, AbsenceRule):
            return float(rule.period)
        return None

    def describe(
        self,
        group: str,
        labels: Mapping[str, str],
        value: Optional[float],
        *,
        firing: bool,
        default: Optional[str] = None,
    ) -> str:
        """The summary: the rule's template when it renders, else a default text."""
        if self.rule.summary is not None:
            text = self._templated(labels, value)
            if text:
                return text
        return default or self._default_summary(self.group_labels(group), value, firing)

    def _templated(self, labels: Mapping[str, str], value: Optional[float]) -> str:
        values = _TemplateValues(labels)
        values.update(rule=self.name, value=value, threshold=self.threshold, window=format_duration(self.window))
        try:
            return string.Formatter().vformat(self.rule.summary or "", (), values)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            # e.g. `{value:.0f}` while there is no value: the default text says it better
            return ""

    def _default_summary(self, group: Mapping[str, str], value: Optional[float], firing: bool) -> str:
        rule = self.rule
        where = f" for {_group_text(group)}" if group else ""
        if isinstance(rule, RateRule):
            return (
                f"{value or 0:g} matching events in {format_duration(rule.window)}{where} "
                f"(threshold {rule.op} {rule.threshold:g})"
            )
        if isinstance(rule, ValueRule):
            if value is None:
                return f"no {rule.field} values in {format_duration(rule.window)}{where}"
            return (
                f"{rule.aggregate}({rule.field}) = {value:g} over {format_duration(rule.window)}{where} "
                f"(threshold {rule.op} {rule.threshold:g})"
            )
        if isinstance(rule, AbsenceRule):
            source = _group_text(group) or "any source"
            if value is None:
                return f"{source} is no longer tracked (silent longer than {format_duration(rule.forget_after)})"
            if firing:
                return f"nothing matching from {source} for {human_duration(value)} (expected within {format_duration(rule.period)})"
            return f"{source} is sending again (last matching event {human_duration(value)} ago)"
        return f"{rule.name}{where}"


def compile_rules(config: AlertsConfig) -> list[CompiledRule]:
    return [CompiledRule(rule, config) for rule in config.active_rules()]


# --- windows -------------------------------------------------------------------------------------


def bucket_width_ms(window: float) -> int:
    return max(MIN_BUCKET_MS, int(window * 1000) // BUCKETS_PER_WINDOW)


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


# --- what a batch adds to the shared state ----------------------------------------------------


class Sighting(NamedTuple):
    """The first event of a batch with a given ``new``-rule key, and its latest time."""

    key: str
    group: str
    ts: float
    first: Draft
    regression: Draft


class Updates:
    """What a batch of observations adds to the shared state; batches merge."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], Counter[str]] = {}
        self.samples: dict[tuple[str, int, str], list[float]] = {}
        self.seen: dict[tuple[str, str], float] = {}
        self.sightings: dict[tuple[str, str], Sighting] = {}

    def __bool__(self) -> bool:
        return bool(self.counts or self.samples or self.seen or self.sightings)

    def size(self) -> int:
        """Roughly the number of state operations (bounds what is kept while Redis is away)."""
        return (
            sum(len(groups) for groups in self.counts.values())
            + sum(len(values) for values in self.samples.values())
            + len(self.seen)
            + len(self.sightings)
        )

    def merge(self, other: "Updates") -> None:
        for key, groups in other.counts.items():
            self.counts.setdefault(key, Counter()).update(groups)
        for key, values in other.samples.items():
            self.samples.setdefault(key, []).extend(values)
        for key, ts in other.seen.items():
            self.seen[key] = max(ts, self.seen.get(key, ts))
        for key, sighting in other.sightings.items():
            known = self.sightings.get(key)
            self.sightings[key] = sighting if known is None else known._replace(ts=max(known.ts, sighting.ts))

    def drop_expired(self, windows: Mapping[str, float], now: float) -> int:
        """Forget slices that no window can include any more; returns how many values went."""
        now_ms = now * 1000
        dropped = 0
        for key in [key for key in self.counts if bucket_expiry_ms(windows.get(key[0], 0), key[1]) < now_ms]:
            dropped += sum(self.counts.pop(key).values())
        for key in [key for key in self.samples if bucket_expiry_ms(windows.get(key[0], 0), key[1]) < now_ms]:
            dropped += len(self.samples.pop(key))
        return dropped


def _new_key(rule: NewRule, obs: Observation) -> Optional[str]:
    value = obs.get(rule.key)
    if value is None and rule.key == "fingerprint":
        # What the emitter computes for an error without a traceback.
        error_type = obs.get("error_type")
        if error_type is not None:
            value = fingerprint(str(error_type), message_template(label_value(obs.get("message"))))
    return None if value is None else label_value(value)


def _sighting(compiled: CompiledRule, rule: NewRule, obs: Observation, identity: str, group: str, key: str) -> Sighting:
    what = label_value(obs.get("error_type")) or f"{rule.key} {key}"
    message = label_value(obs.get("message"))
    tail = f": {message[:200]}" if message else ""
    extra = {label_name(rule.key): key, "service": obs.service}
    first = compiled.draft(group, 1.0, extra_labels=extra, summary=f"new {what} in {obs.service}{tail}")
    regression = compiled.draft(
        group,
        None,
        extra_labels=extra,
        threshold=float(rule.regression_after),
        summary=f"{what} is back in {obs.service} after more than "
        f"{format_duration(rule.regression_after)} without one{tail}",
    )
    return Sighting(key=identity, group=group, ts=obs.ts, first=first, regression=regression)


class Relevance:
    """Whether any rule could accept an event of this type and severity.

    Most events (info-level generations, tokens) match no rule; answering from
    a cache keyed by (type, severity) spares them the per-event rule work.
    """

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self._rules = rules
        self._cache: dict[tuple[str, str], bool] = {}

    def __call__(self, type: str, severity: str) -> bool:
        relevant = self._cache.get((type, severity))
        if relevant is None:
            relevant = self._cache[(type, severity)] = any(
                rule.matches.accepts_type(type, False) and rule.matches.accepts_severity(severity)
                for rule in self._rules
            )
        return relevant


def collect(rules: Sequence[CompiledRule], observations: Iterable[Observation], now: float) -> Updates:
    """What ``observations`` add to the shared state as of ``now``.

    Times in the future (clock skew) count as now; events older than a rule's
    window cannot change it and are skipped by that rule.
    """
    updates = Updates()
    by_type: dict[tuple[str, bool], list[CompiledRule]] = {}  # types repeat: match each glob once per batch
    for obs in observations:
        ts = min(obs.ts, now)
        slot = (obs.type, obs.synthetic)
        candidates = by_type.get(slot)
        if candidates is None:
            candidates = by_type[slot] = [rule for rule in rules if rule.matches.accepts_type(*slot)]
        for compiled in candidates:
            if not compiled.matches.accepts(obs):
                continue
            rule = compiled.rule
            if isinstance(rule, (RateRule, ValueRule)):
                if ts <= now - rule.window:
                    continue
                bucket = int(ts * 1000) // bucket_width_ms(rule.window)
                if isinstance(rule, RateRule):
                    updates.counts.setdefault((compiled.name, bucket), Counter())[compiled.group_key(obs)] += 1
                    continue
                value = obs.get(rule.field)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                updates.samples.setdefault((compiled.name, bucket, compiled.group_key(obs)), []).append(float(value))
            elif isinstance(rule, AbsenceRule):
                key = (compiled.name, compiled.group_key(obs))
                updates.seen[key] = max(ts, updates.seen.get(key, ts))
            elif isinstance(rule, NewRule):
                key_value = _new_key(rule, obs)
                if key_value is None:
                    continue
                group = compiled.group_key(obs)
                identity = _json_text([key_value, *json.loads(group)])
                known = updates.sightings.get((compiled.name, identity))
                if known is None:
                    sighting = _sighting(compiled, rule, obs, identity, group, key_value)
                    updates.sightings[(compiled.name, identity)] = sighting._replace(ts=ts)
                elif ts > known.ts:
                    updates.sightings[(compiled.name, identity)] = known._replace(ts=ts)
    return updates


# --- evaluation ----------------------------------------------------------------------------------


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


def evaluate_rate(rule: RateRule, buckets: Sequence[Mapping[str, int]]) -> dict[str, Measure]:
    totals: Counter[str] = Counter()
    for counts in buckets:
        totals.update(counts)
    return {group: Measure(float(n), breaches(rule.op, n, rule.threshold)) for group, n in totals.items()}


def evaluate_value(rule: ValueRule, slices: Mapping[str, Sequence[BucketStats]]) -> dict[str, Measure]:
    measures = {}
    for group, parts in slices.items():
        count = sum(item.count for item in parts)
        value = aggregate(rule.aggregate, parts)
        breached = value is not None and count >= rule.min_samples and breaches(rule.op, value, rule.threshold)
        measures[group] = Measure(value, breached)
    return measures


def evaluate_absence(rule: AbsenceRule, seen: Mapping[str, float], now: float) -> dict[str, Measure]:
    measures = {}
    for group, last in seen.items():
        silence = max(0.0, now - last)
        measures[group] = Measure(silence, silence > rule.period)
    return measures


# --- lifecycle planning --------------------------------------------------------------------------


class StoredAlert(msgspec.Struct, kw_only=True):
    """An alert's shared state (the JSON in the ``{prefix}:alerts:state`` hash).

    ``notified`` is when it last went out, ``clear_since`` when its condition
    last stopped holding (None while it holds), ``resolved`` when it resolved.
    """

    status: Literal["firing", "resolved"]
    group: str
    notified: float
    record: AlertRecord
    clear_since: Optional[float] = None
    resolved: Optional[float] = None


class Snapshot(NamedTuple):
    """The shared state the rules are evaluated on, read in one go."""

    rate: Mapping[str, Sequence[Mapping[str, int]]]  # rule -> per slice: group -> count
    value: Mapping[str, Mapping[str, Sequence[BucketStats]]]  # rule -> group -> slices
    seen: Mapping[str, Mapping[str, float]]  # rule -> group -> last seen (unix s)
    alerts: Mapping[str, StoredAlert]  # fingerprint -> state


class Candidate(msgspec.Struct, kw_only=True):
    """A condition to apply to an alert's state: ``active`` (breached) or clear."""

    fp: str
    active: bool
    group: str
    record: Draft
    repeat_interval: float
    resolve_after: float
    cooldown: float


class Expired(msgspec.Struct):
    """A resolved alert past its cooldown, to forget (if still resolved at ``resolved``)."""

    fp: str
    resolved: float


def candidate(rule: CompiledRule, group: str, record: Draft, *, active: bool) -> Candidate:
    return Candidate(
        fp=record.fingerprint,
        active=active,
        group=group,
        record=record,
        repeat_interval=rule.repeat_interval,
        resolve_after=rule.resolve_after,
        cooldown=rule.cooldown,
    )


def measure_rule(rule: CompiledRule, snapshot: Snapshot, now: float) -> dict[str, Measure]:
    spec = rule.rule
    if isinstance(spec, RateRule):
        return evaluate_rate(spec, snapshot.rate.get(rule.name, ()))
    if isinstance(spec, ValueRule):
        return evaluate_value(spec, snapshot.value.get(rule.name, {}))
    if isinstance(spec, AbsenceRule):
        return evaluate_absence(spec, snapshot.seen.get(rule.name, {}), now)
    return {}  # `new` rules fire from what is observed, not from a window


def _clear_value(rule: CompiledRule) -> Optional[float]:
    return 0.0 if isinstance(rule.rule, RateRule) else None


def warming_up(rules: Sequence[CompiledRule], listening_since: float, now: float) -> set[str]:
    """Absence rules that cannot judge yet: this collector has listened for less than their period.

    After a restart the backlog still holds events newer than the last ones
    seen, so a silence measured before catching up would be a false alarm.
    """
    return {
        rule.name
        for rule in rules
        if isinstance(rule.rule, AbsenceRule) and now - listening_since <= rule.rule.period
    }


def plan(
    rules: Sequence[CompiledRule],
    snapshot: Snapshot,
    now: float,
    config: AlertsConfig,
    *,
    withheld: AbstractSet[str] = frozenset(),
) -> tuple[list[Candidate], list[Expired]]:
    """What to tell the shared state: breached groups, firing alerts now clear, and expired ones.

    Alerts of a rule that is no longer configured clear too, with the
    section-wide timings, so removing a rule resolves its alerts. Rules in
    ``withheld`` say nothing this time: no breach, and their alerts stay as they are.
    """
    candidates: list[Candidate] = []
    breached: set[str] = set()
    measures: dict[str, dict[str, Measure]] = {}
    for rule in rules:
        if rule.name in withheld:
            continue
        measures[rule.name] = measure_rule(rule, snapshot, now)
        for group, measure in measures[rule.name].items():
            if measure.breached:
                record = rule.draft(group, measure.value)
                breached.add(record.fingerprint)
                candidates.append(candidate(rule, group, record, active=True))
    by_name = {rule.name: rule for rule in rules}
    expired: list[Expired] = []
    for fp, stored in snapshot.alerts.items():
        rule = by_name.get(stored.record.rule)
        if stored.status == "resolved":
            cooldown = config.cooldown if rule is None else rule.cooldown
            if stored.resolved is not None and now - stored.resolved >= cooldown:
                expired.append(Expired(fp, stored.resolved))
            continue
        if fp in breached or stored.record.rule in withheld:
            continue
        previous = stored.record
        value, summary = previous.value, previous.summary
        if rule is not None and rule.kind != "new":
            measure = measures[rule.name].get(stored.group)
            value = measure.value if measure is not None else _clear_value(rule)
            summary = rule.describe(stored.group, previous.labels, value, firing=False)
        record = Draft(
            rule=previous.rule,
            kind=previous.kind,
            labels=previous.labels,
            summary=summary,
            value=value,
            threshold=previous.threshold,
            fingerprint=fp,
        )
        candidates.append(
            Candidate(
                fp=fp,
                active=False,
                group=stored.group,
                record=record,
                repeat_interval=float(config.repeat_interval) if rule is None else rule.repeat_interval,
                resolve_after=float(config.resolve_after) if rule is None else rule.resolve_after,
                cooldown=float(config.cooldown) if rule is None else rule.cooldown,
            )
        )
    return candidates, expired
