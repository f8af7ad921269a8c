"""Rule evaluation without I/O: what a batch adds to the shared state, and what to tell it.

The stage turns observations into :class:`Updates` with :func:`collect` (its
own lag and loss observations; delivered batches take the same decisions
through :class:`collector.alerts.routing.Router`, built for their volume), and
the measures read back from Redis into lifecycle requests with :func:`plan`;
both are pure functions of their arguments, so they are tested without Redis
or a clock. What differs between rule kinds lives in
:mod:`collector.alerts.kinds`, one class per kind.
"""

from __future__ import annotations

from typing import AbstractSet, Iterable, Mapping, NamedTuple, Sequence

import msgspec

from collector.alerts.config import AlertsConfig
from collector.alerts.kinds import AlertRule
from collector.alerts.observation import Observation
from collector.alerts.records import Candidate, Expired, StoredAlert
from collector.alerts.windows import Measure, Updates

__all__ = ["Snapshot", "collect", "plan", "warming_up"]


class Snapshot(NamedTuple):
    """The shared state the rules are evaluated on, read in one go."""

    measures: Mapping[str, Mapping[str, Measure]]  # rule -> group -> measure (window rules only)
    alerts: Mapping[str, StoredAlert]  # fingerprint -> state


def collect(rules: Sequence[AlertRule], observations: Iterable[Observation], now: float) -> Updates:
    """What ``observations`` add to the shared state as of ``now``.

    Times in the future (clock skew) count as now; events older than a rule's
    window cannot change it and are skipped by that rule.
    """
    updates = Updates()
    by_type: dict[tuple[str, bool], list[AlertRule]] = {}  # types repeat: match each glob once per batch
    for obs in observations:
        ts = min(obs.ts, now)
        slot = (obs.type, obs.synthetic)
        candidates = by_type.get(slot)
        if candidates is None:
            candidates = by_type[slot] = [rule for rule in rules if rule.matches.accepts_type(*slot)]
        for rule in candidates:
            if rule.matches.accepts(obs):
                rule.observe(obs, ts, now, updates)
    return updates


def warming_up(rules: Sequence[AlertRule], listening_since: float, now: float) -> set[str]:
    """Rules that cannot judge yet (absence rules a period after a start)."""
    return {rule.name for rule in rules if not rule.judging(listening_since, now)}


def plan(
    rules: Sequence[AlertRule],
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
    for rule in rules:
        if rule.name in withheld:
            continue
        for group, measure in snapshot.measures.get(rule.name, {}).items():
            if measure.breached:
                record = rule.draft(group, measure.value)
                breached.add(record.fingerprint)
                candidates.append(rule.candidate(group, record, active=True))
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
        measures = None if rule is None else snapshot.measures.get(rule.name)
        if rule is not None and measures is not None:
            measure = measures.get(stored.group)
            value = measure.value if measure is not None else rule.clear_value
            summary = rule.describe(stored.group, previous.labels, value, firing=False)
        record = msgspec.structs.replace(previous, summary=summary, value=value)
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
