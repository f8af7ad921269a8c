"""What went through the demo's pipeline: events read back from the streams and their aggregates."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

import redis

from collector.tools.reading import decode_entry, paged_entries
from emitters.events import Event
from emitters.mlx import percentile
from emitters.streams import StreamNames

__all__ = ["DemoStats", "StreamReader"]


def _percentile(values: list[float], pct: float) -> Optional[float]:
    return percentile(sorted(values), pct) if values else None


@dataclass
class DemoStats:
    """Aggregates of the events read back from the streams (pure; no I/O)."""

    started: int = 0
    completed: int = 0
    errors: int = 0
    tokens: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    error_types: dict[str, int] = field(default_factory=dict)
    events: int = 0
    decode_batch_max: int = 0
    decode_concurrency: Optional[int] = None
    queue_wait_ms: list[float] = field(default_factory=list)
    cached_prompt_tokens: int = 0
    prompt_tokens: int = 0

    def observe(self, event: Event) -> None:
        self.events += 1
        kind = event.type
        if kind == "runtime.status":
            self.decode_batch_max = max(self.decode_batch_max, event.decode_batch_max or 0)
            self.decode_concurrency = event.decode_concurrency or self.decode_concurrency
        elif kind == "generation.started":
            self.started += 1
        elif kind == "generation.completed":
            self.completed += 1
            self.tokens += event.generation_tokens
            if event.ttft_ms is not None:
                self.ttft_ms.append(event.ttft_ms)
            if event.tokens_per_second is not None:
                self.decode_tps.append(event.tokens_per_second)
            self.decode_batch_max = max(self.decode_batch_max, event.decode_batch_max or 0)
            self.prompt_tokens += event.prompt_tokens
            self.cached_prompt_tokens += event.cached_prompt_tokens or 0
            if event.queue_wait_ms is not None:
                self.queue_wait_ms.append(event.queue_wait_ms)
            reason = event.finish_reason or "unknown"
            self.finish_reasons[reason] = self.finish_reasons.get(reason, 0) + 1
        elif kind == "error":
            self.errors += 1
            self.error_types[event.error_type] = self.error_types.get(event.error_type, 0) + 1

    def ttft_percentile(self, pct: float) -> Optional[float]:
        return _percentile(self.ttft_ms, pct)

    def queue_wait_percentile(self, pct: float) -> Optional[float]:
        return _percentile(self.queue_wait_ms, pct)

    def median_decode_tps(self) -> Optional[float]:
        return statistics.median(self.decode_tps) if self.decode_tps else None



class StreamReader:
    """Reads the events and errors streams forward from a starting id."""

    def __init__(self, client: redis.Redis, names: StreamNames, since_ms: int) -> None:
        self.client = client
        self.names = names
        self.cursor = {names.events: f"{since_ms}-0", names.errors: f"{since_ms}-0"}
        self.undecodable = 0

    def poll(self, stats: DemoStats) -> None:
        for key in (self.names.events, self.names.errors):
            for entry_id, fields in paged_entries(self.client, key, start=f"({self.cursor[key]}"):
                self.cursor[key] = entry_id.decode()
                event = decode_entry(fields)
                if event is None:
                    self.undecodable += 1
                else:
                    stats.observe(event)
