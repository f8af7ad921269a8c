"""Judging a snapshot: the thresholds and every reason the pipeline counts as degraded."""

from __future__ import annotations

import msgspec

from collector.clientreports import recent_drop_reasons
from collector.durations import format_duration
from collector.tools.formatting import format_age, format_counts
from collector.tools.health_snapshot import GroupInfo, Snapshot, StreamInfo

__all__ = ["Thresholds", "assess"]

# Streams collectors consume; their backlog is what MAXLEN trimming can destroy.
CONSUMED_KINDS = ("events", "errors")


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    heartbeat_max_age: float = 30.0  # seconds
    backlog_ratio: float = 0.8  # of MAXLEN, as the daemon's lag_warn_ratio
    pending_max_idle: float = 300.0  # seconds
    max_dead: int = 0
    client_drops_within: float = 300.0  # seconds: engines' reported drops this recent degrade health


# A loss keeps the pipeline degraded this long after it happened (the counts stay forever).
RECENT_LOSS_S = 3600.0


def assess(snapshot: Snapshot, limits: Thresholds) -> list[str]:
    """Why the pipeline is degraded; an empty list means healthy."""
    reasons: list[str] = []
    fresh = [beat for beat in snapshot.collectors if beat.age_s <= limits.heartbeat_max_age]
    if not snapshot.collectors:
        reasons.append("no collector heartbeat: is a collector running?")
    elif not fresh:
        newest = min(beat.age_s for beat in snapshot.collectors)
        reasons.append(
            f"no fresh collector heartbeat: newest is {format_age(newest)} old "
            f"(limit {format_duration(limits.heartbeat_max_age)})"
        )
    for beat in fresh:
        if beat.status == "paused_auth":
            reasons.append(f"collector {beat.consumer} is paused: a sink refused its credentials")
        elif beat.status == "backpressure":
            reasons.append(f"collector {beat.consumer} is in backpressure: a sink is unavailable, entries wait in Redis")
        elif beat.status == "refused":
            reasons.append(
                f"collector {beat.consumer} is blocked: Redis refuses its writes ({beat.refusal or 'refused'}); "
                "entries wait in Redis"
            )
    if snapshot.refusing_writes:
        reasons.append(snapshot.refusing_writes)
    for stream in snapshot.streams:
        if stream.kind not in CONSUMED_KINDS:
            continue
        if stream.length and not stream.groups:
            reasons.append(f"{stream.key} has {stream.length} entries and no consumer group: nothing collects it")
        for group in stream.groups:
            reasons.extend(_group_reasons(stream, group, limits))
    if snapshot.lost and snapshot.last_loss_age_s is not None and snapshot.last_loss_age_s <= RECENT_LOSS_S:
        counts = format_counts(snapshot.lost)
        reasons.append(
            f"entries were trimmed before they were acked, {format_age(snapshot.last_loss_age_s)} ago "
            f"(lost so far: {counts}); see the collector log (entries_lost) for the id ranges"
        )
    if snapshot.dead_letters > limits.max_dead:
        reasons.append(
            f"{snapshot.dead_letters} dead letters (limit {limits.max_dead}): see 'telemetry-collector dlq list'"
        )
    reasons.extend(recent_drop_reasons(snapshot.client_drops, limits.client_drops_within))
    return reasons


def _group_reasons(stream: StreamInfo, group: GroupInfo, limits: Thresholds) -> list[str]:
    reasons: list[str] = []
    backlog = group.lag + group.pending
    if stream.maxlen is not None and backlog >= limits.backlog_ratio * stream.maxlen:
        reasons.append(
            f"{stream.key} group {group.name}: backlog {backlog} (lag {group.lag}, pending {group.pending}) is "
            f"{backlog / stream.maxlen:.0%} of MAXLEN {stream.maxlen}; undelivered entries will be trimmed"
        )
    if group.lag > stream.length:
        reasons.append(
            f"{stream.key} group {group.name}: {group.lag - stream.length} entries were trimmed before delivery"
        )
    if group.oldest_pending_idle_s is not None and group.oldest_pending_idle_s > limits.pending_max_idle:
        reasons.append(
            f"{stream.key} group {group.name}: a pending entry has waited {format_age(group.oldest_pending_idle_s)} "
            f"for an ack (limit {format_duration(limits.pending_max_idle)}); is a consumer stuck?"
        )
    return reasons

