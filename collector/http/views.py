"""The dashboard's JSON: built from the streams with XRANGE and the tools' own functions.

Nothing here joins a consumer group or writes to Redis.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Iterable, Optional

import redis

from collector.alerts.silences import SilenceStore, silenced_by
from collector.alerts.state import AlertState
from collector.durations import Duration
from collector.http.figures import CollectorFigures
from collector.tools.errors import group_errors
from collector.tools.formatting import event_json
from collector.tools.health_snapshot import Snapshot
from collector.tools.reading import StoredEvent, read_stream, stream_events
from collector.tools.timeline import build_timeline, timeline_json
from collector.tools.times import iso_time
from emitters.events import ErrorEvent, GenerationCompleted, ModelLoaded, ModelUnloaded, RuntimeStatus
from emitters.streams import StreamNames

__all__ = ["overview", "error_groups", "alerts", "timeline", "wire_event", "WINDOW_S", "BUCKET_S"]

WINDOW_S = 3600  # the charts' span
BUCKET_S = 60  # one point per minute
TOP_SERIES = 8  # event series shown by name; the rest add up to "other"
ALERTS_SHOWN = 50
TIMELINE_GAP_NS = 1_000_000_000  # the timeline tool's default --gap
STACK_CHARS = 4000


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _window(client: redis.Redis, names: StreamNames, now_ms: int) -> list[StoredEvent]:
    start = str(now_ms - WINDOW_S * 1000)
    return [
        *read_stream(client, names.events, "events", start=start),
        *read_stream(client, names.errors, "errors", start=start),
    ]


def _event_rates(rows: Iterable[StoredEvent], first_bucket: int, buckets: int) -> list[dict[str, Any]]:
    """Events per second by ``service / type`` for each minute of the window."""
    counts: dict[str, list[float]] = defaultdict(lambda: [0.0] * buckets)
    for row in rows:
        index = int(row.event.ts // 1_000_000_000 // BUCKET_S) - first_bucket
        if 0 <= index < buckets:
            counts[f"{row.event.service} / {row.event.type}"][index] += 1 / BUCKET_S
    ranked = sorted(counts.items(), key=lambda item: -sum(item[1]))
    series = [{"name": name, "values": [round(v, 4) for v in values]} for name, values in ranked[:TOP_SERIES]]
    if len(ranked) > TOP_SERIES:
        rest = [round(sum(values), 4) for values in zip(*(values for _, values in ranked[TOP_SERIES:]))]
        series.append({"name": "other", "values": rest})
    return series


def _model_series(rows: Iterable[StoredEvent], first_bucket: int, buckets: int) -> list[dict[str, Any]]:
    """Per model and minute: TTFT p50/p95 (ms) and output tokens per second."""
    ttfts: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(buckets)])
    tokens: dict[str, list[float]] = defaultdict(lambda: [0.0] * buckets)
    for row in rows:
        event = row.event
        if type(event) is not GenerationCompleted:
            continue
        index = int(event.ts // 1_000_000_000 // BUCKET_S) - first_bucket
        if not 0 <= index < buckets:
            continue
        tokens[event.model][index] += event.generation_tokens / BUCKET_S
        if event.ttft_ms is not None:
            ttfts[event.model][index].append(event.ttft_ms)
    return [
        {
            "model": model,
            "ttft_p50_ms": [_percentile(v, 0.5) if v else None for v in ttfts[model]],
            "ttft_p95_ms": [_percentile(v, 0.95) if v else None for v in ttfts[model]],
            "tokens_per_s": [round(v, 3) for v in tokens[model]],
        }
        for model in sorted(tokens)
    ]


def _engines(rows: Iterable[StoredEvent], now_s: float) -> list[dict[str, Any]]:
    """The latest runtime.status of every engine, and the models it loaded in the window."""
    latest: dict[tuple[str, str], RuntimeStatus] = {}
    models: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)
    for row in sorted(rows, key=lambda r: r.event.ts):
        event, engine = row.event, (row.event.service, row.event.host)
        if type(event) is RuntimeStatus:
            latest[engine] = event
        elif type(event) is ModelLoaded:
            models[engine][event.model] = None
        elif type(event) is ModelUnloaded:
            models[engine].pop(event.model, None)
    return [
        {
            "service": service,
            "host": host,
            "status": status.status,
            "models_loaded": status.models_loaded,
            "models": list(models[(service, host)]),
            "active_tasks": status.active_tasks,
            "memory_gb": status.memory_gb,
            "last_seen": iso_time(status.ts),
            "age_s": round(max(0.0, now_s - status.ts / 1e9), 1),
        }
        for (service, host), status in sorted(latest.items())
    ]


def _collector_view(snapshot: Optional[Snapshot], collectors: list[CollectorFigures]) -> dict[str, Any]:
    streams = []
    if snapshot is not None:
        for stream in snapshot.streams:
            streams.append(
                {
                    "stream": stream.kind,
                    "length": stream.length,
                    "groups": [
                        {"group": g.name, "lag": g.lag, "pending": g.pending, "consumers": len(g.consumers)}
                        for g in stream.groups
                    ],
                }
            )
    return {
        "redis_up": snapshot is not None,
        "redis_memory_bytes": snapshot.used_memory if snapshot is not None else None,
        "streams": streams,
        "collectors": [
            {"consumer": c.consumer, "status": c.status, "heartbeat_age_s": c.heartbeat_age_s, **c.counters}
            for c in collectors
        ],
    }


def overview(
    client: redis.Redis, names: StreamNames, snapshot: Optional[Snapshot], collectors: list[CollectorFigures]
) -> dict[str, Any]:
    now_s = time.time()
    buckets = WINDOW_S // BUCKET_S
    first_bucket = int(now_s // BUCKET_S) - buckets + 1
    rows = _window(client, names, int(now_s * 1000))
    return {
        "now": iso_time(int(now_s * 1e9)),
        "bucket_s": BUCKET_S,
        "first_bucket_ts": first_bucket * BUCKET_S,
        "event_rates": _event_rates(rows, first_bucket, buckets),
        "models": _model_series(rows, first_bucket, buckets),
        "engines": _engines(rows, now_s),
        "pipeline": _collector_view(snapshot, collectors),
    }


def error_groups(client: redis.Redis, names: StreamNames) -> list[dict[str, Any]]:
    """Every error the errors stream keeps, grouped by fingerprint, with a sample stack."""
    rows = list(read_stream(client, names.errors, "errors"))
    if not rows:
        return []
    by_id = {row.event.id: row.event for row in rows}
    first, last = min(r.event.ts for r in rows), max(r.event.ts for r in rows)
    groups = []
    for group in group_errors(rows, set(), since_ns=first, until_ns=last):
        sample = by_id[group.sample_id]
        stack = sample.stack if isinstance(sample, ErrorEvent) else None
        groups.append(
            {
                "fingerprint": group.fingerprint,
                "error_type": group.error_type,
                "count": group.count,
                "first_seen": iso_time(group.first_seen),
                "last_seen": iso_time(group.last_seen),
                "services": group.services,
                "severity": group.severity,
                "message": group.sample_message,
                "sample_id": group.sample_id,
                "request_id": sample.request_id,
                "trace_id": sample.trace_id,
                "stack": (stack or "")[:STACK_CHARS],
            }
        )
    return groups


def alerts(client: redis.Redis, names: StreamNames, group: str) -> dict[str, Any]:
    """``group``'s alert state (firing, recently resolved), the active silences and the latest notifications."""
    state = AlertState(client, names, group)
    now = time.time()
    active_silences = [silence for silence in SilenceStore(client, names).all() if silence.active(now)]
    current = []
    for fingerprint, stored in sorted(state.alerts().items(), key=lambda item: item[1].record.starts_at, reverse=True):
        record = stored.record
        current.append(
            {
                "fingerprint": fingerprint,
                "status": stored.status,
                "rule": record.rule,
                "kind": record.kind,
                "summary": record.summary,
                "labels": record.labels,
                "value": record.value,
                "threshold": record.threshold,
                "starts_at": record.starts_at,
                "ends_at": record.ends_at,
                "silenced_by": silenced_by(record, active_silences, now),
            }
        )
    recent = [
        {"id": entry_id, "status": r.status, "rule": r.rule, "summary": r.summary, "at": r.ends_at or r.starts_at}
        for entry_id, r in state.recent(ALERTS_SHOWN)
    ]
    silences = [
        {"id": silence.id, "matchers": " ".join(str(m) for m in silence.matchers), "ends_at": silence.ends_at,
         "comment": silence.comment, "created_by": silence.created_by}
        for silence in active_silences
    ]
    return {"group": group, "current": current, "silences": silences, "recent": recent}


def timeline(client: redis.Redis, names: StreamNames, wanted: str) -> dict[str, Any]:
    """The ``timeline`` tool's JSON for a request, trace or job id, over what the streams keep."""
    found = build_timeline(stream_events(client, names), wanted, "any", TIMELINE_GAP_NS)
    data = timeline_json(wanted, found, Duration(TIMELINE_GAP_NS / 1e9))
    for step, shown in zip(found.steps, data["events"]):  # type: ignore[call-overload]
        shown["severity"] = step.row.event.severity  # the wire form leaves a default out
    return data


def wire_event(row: StoredEvent) -> dict[str, Any]:
    """An event as the tools print it with ``--json``, severity always present."""
    return {**event_json(row), "severity": row.event.severity}

