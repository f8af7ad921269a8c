"""Alert records, their shared state and the lifecycle requests made of it (data only)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Literal, Mapping, Optional

import msgspec

__all__ = [
    "AlertRecord",
    "StoredAlert",
    "Candidate",
    "Expired",
    "FirstSightings",
    "alert_fingerprint",
    "iso_time",
    "human_duration",
]


class AlertRecord(msgspec.Struct, kw_only=True):
    """One notification: what goes to the alerts stream, JSONL, the webhook and the log.

    ``group`` is the consumer group whose collectors raised it: two groups
    reading the same streams keep separate alert state and say whose alert it is.
    Rules draft a firing record; the shared state sets ``status``,
    ``starts_at``, ``ends_at`` and ``group`` when it applies it.
    """

    rule: str
    kind: str
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    summary: str
    value: Optional[float]
    threshold: Optional[float]
    fingerprint: str
    starts_at: str = ""
    ends_at: Optional[str] = None
    group: Optional[str] = None


class StoredAlert(msgspec.Struct, kw_only=True):
    """An alert's shared state (the JSON in the ``…:state`` hash).

    ``notified`` is when it last went out, ``clear_since`` when its condition
    last stopped holding (None while it holds), ``resolved`` when it resolved.
    """

    status: Literal["firing", "resolved"]
    group: str
    notified: float
    record: AlertRecord
    clear_since: Optional[float] = None
    resolved: Optional[float] = None


class Candidate(msgspec.Struct, kw_only=True):
    """A condition to apply to an alert's state: ``active`` (breached) or clear."""

    fp: str
    active: bool
    group: str
    record: AlertRecord
    repeat_interval: float
    resolve_after: float
    cooldown: float


class Expired(msgspec.Struct):
    """A resolved alert past its cooldown, to forget (if still resolved at ``resolved``)."""

    fp: str
    resolved: float


class FirstSightings(msgspec.Struct):
    """What a ``new`` rule asks of the state for a batch: per key ``[key, ts, first, regression]``,
    the candidates for a key never seen and for one silent longer than ``regression_after``."""

    rule: str
    sightings: list[tuple[str, float, Candidate, Candidate]]
    regression_after: float
    max_known: int
    ttl_ms: int


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
