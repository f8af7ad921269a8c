"""The alert engine the collector daemon drives.

The daemon calls :meth:`AlertEngine.observe` with every batch its sinks
accepted, :meth:`AlertEngine.observe_lag` with the unacked count of each
stream, and :meth:`AlertEngine.tick` about once a second. Observations go
into the shared state in Redis at once (``new`` rules fire right there);
windows are evaluated on ticks, at most every ``evaluate_interval``.

Redis being away never reaches the daemon as an exception: what a batch adds
is kept (merged, bounded) and written on a later call, and the outage is
logged once when it starts and once when it ends.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from threading import Lock
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import redis
import structlog

from collector.alerts.config import LOSS_EVENT_TYPE, AlertsConfig, NewRule
from collector.alerts.delivery import (
    Channel,
    Delivery,
    JsonlChannel,
    OtlpChannel,
    WebhookChannel,
    alert_log_sink,
)
from collector.alerts.rules import (
    AlertRecord,
    CompiledRule,
    Observation,
    Relevance,
    Updates,
    collect,
    compile_rules,
    plan,
    warming_up,
)
from collector.alerts.state import AlertState
from collector.records import Record
from collector.redisconn import connect
from collector.sinks import Sink
from emitters.streams import StreamNames, stream_names

if TYPE_CHECKING:
    from collector.config import Config

__all__ = ["AlertEngine", "build_engine", "MAX_PENDING"]

# Operations kept while Redis is unreachable; beyond this, observations are dropped (and counted).
MAX_PENDING = 50_000
DEFAULT_JSONL_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_JSONL_RETENTION_DAYS = 14


class AlertEngine:
    """Evaluates the alert rules of ``config`` on what the collector reads.

    ``client`` is a Redis client for the shared state (``names`` says which
    prefix); ``jsonl_dir`` adds ``alerts-YYYY-MM-DD.jsonl`` files there,
    ``otlp_sink`` a log record per alert (through a logs-only sibling of the
    daemon's OTLP sink, see :func:`delivery.alert_log_sink`).
    ``clock`` (unix seconds) is for tests.
    """

    def __init__(
        self,
        config: AlertsConfig,
        client: redis.Redis,
        names: StreamNames,
        *,
        jsonl_dir: Optional[str | Path] = None,
        otlp_sink: Optional[Sink] = None,
        log: Any = None,
        jsonl_max_bytes: int = DEFAULT_JSONL_MAX_BYTES,
        jsonl_retention_days: Optional[int] = DEFAULT_JSONL_RETENTION_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.rules: list[CompiledRule] = compile_rules(config)
        self._by_name = {rule.name: rule for rule in self.rules}
        self._relevance = Relevance(self.rules)
        self._windows = {rule.name: rule.window for rule in self.rules}
        self._new_rules = [rule for rule in self.rules if isinstance(rule.rule, NewRule)]
        self._log = log or structlog.get_logger("collector.alerts")
        self._clock = clock
        self.state = AlertState(client, names, history=config.history)
        channels: list[Channel] = []
        if jsonl_dir is not None:
            from collector.sinks.jsonl import RotatingJsonlWriter

            writer = RotatingJsonlWriter(
                jsonl_dir, "alerts", max_bytes=jsonl_max_bytes, retention_days=jsonl_retention_days
            )
            channels.append(JsonlChannel(writer))
        alert_sink = None if otlp_sink is None else alert_log_sink(otlp_sink)
        if alert_sink is not None:
            channels.append(OtlpChannel(alert_sink, owned=alert_sink is not otlp_sink))
        if config.webhook is not None:
            channels.append(WebhookChannel(config.webhook, hold=self._hold))
        retries = {"webhook": config.webhook.retries} if config.webhook is not None else {}
        self.delivery = Delivery(channels, log=self._log, queue_size=config.queue_size, retries=retries)
        self.counters: Counter[str] = Counter()
        self._pending = Updates()
        self._lock = Lock()
        self._next_evaluation = float("-inf")
        self._listening_since = clock()
        self._state_error: Optional[str] = None

    def _hold(self, rule: str) -> float:
        compiled = self._by_name.get(rule)
        return 2 * (compiled.repeat_interval if compiled else self.config.repeat_interval)

    # --- the daemon's hooks ---

    def observe(self, records: Sequence[Record]) -> None:
        """Count a delivered batch into the rules' windows; fire ``new`` rules at once."""
        if not self.rules or not records:
            return
        now = self._clock()
        relevant = self._relevance
        observations = (
            Observation.from_event(record.event)
            for record in records
            if relevant(record.event.type, record.event.severity)
        )
        updates = collect(self.rules, observations, now)
        self.counters["observed"] += len(records)
        with self._lock:
            self._pending.merge(updates)
            self._flush(now)

    def observe_lag(self, stream: str, lag: int, maxlen: int) -> None:
        """The unacked entries of ``stream`` against the MAXLEN emitters trim it to (0: uncapped)."""
        if not self.rules or maxlen <= 0:
            return
        now = self._clock()
        updates = collect(self.rules, [Observation.lag(stream, lag, maxlen, now)], now)
        with self._lock:
            self._pending.merge(updates)

    def observe_loss(self, stream: str, count: int) -> None:
        """``count`` entries of ``stream`` were trimmed before they were acked (collector/loss.py)."""
        if not self.rules:
            return
        now = self._clock()
        fields = {"stream": stream, "count": count}
        observation = Observation(LOSS_EVENT_TYPE, "telemetry-collector", "critical", now, fields=fields)
        updates = collect(self.rules, [observation], now)
        with self._lock:
            self._pending.merge(updates)

    def tick(self, now: Optional[float] = None) -> None:
        """Write what is pending and, when due, evaluate the windows and move alerts along."""
        if not self.rules:
            return
        now = self._clock() if now is None else now
        with self._lock:
            self._flush(now)
            if now < self._next_evaluation:
                return
            self._next_evaluation = now + self.config.evaluate_interval
            try:
                snapshot = self.state.snapshot(self.rules, now)
                withheld = warming_up(self.rules, self._listening_since, now)
                candidates, expired = plan(self.rules, snapshot, now, self.config, withheld=withheld)
                notifications = self.state.transition(candidates, expired, now)
            except redis.RedisError as exc:
                self._state_failed(exc)
                return
            self._state_ok()
            self._publish(notifications)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending (one try) and let the channels finish within ``timeout``."""
        with self._lock:
            self._flush(self._clock())
        self.delivery.close(timeout)

    # --- internals ---

    def _flush(self, now: float) -> None:
        pending = self._pending
        if not pending:
            return
        self.counters["expired_before_written"] += pending.drop_expired(self._windows, now)
        try:
            if pending.counts or pending.samples or pending.seen:
                self.state.record(pending, self._by_name)
                pending.counts, pending.samples, pending.seen = {}, {}, {}
            for rule in self._new_rules:
                sightings = [sighting for (name, _), sighting in pending.sightings.items() if name == rule.name]
                if sightings:
                    self._publish(self.state.first_seen(rule, sightings, now))
                    pending.sightings = {key: value for key, value in pending.sightings.items() if key[0] != rule.name}
        except redis.RedisError as exc:
            self._state_failed(exc)
            size = pending.size()
            if size > MAX_PENDING:
                self.counters["dropped_state_unavailable"] += size
                self._pending = Updates()
            return
        self._state_ok()

    def _publish(self, records: Sequence[AlertRecord]) -> None:
        for record in records:
            self.counters[f"notified_{record.status}"] += 1
        self.delivery.publish(records)

    def _state_failed(self, exc: redis.RedisError) -> None:
        self.counters["state_errors"] += 1
        if self._state_error is None:
            self._state_error = str(exc)
            self._log.warning(
                "alert_state_unavailable",
                error=str(exc),
                note="observations are kept (bounded) and written when Redis answers again",
            )

    def _state_ok(self) -> None:
        if self._state_error is not None:
            self._log.info("alert_state_available", after_errors=self.counters["state_errors"])
            self._state_error = None

    def stats(self) -> dict[str, Any]:
        """Counters, pending operations and per-channel delivery figures (for health and tests)."""
        return {
            "rules": [rule.name for rule in self.rules],
            "counters": dict(self.counters),
            "pending": self._pending.size(),
            "delivery": self.delivery.stats(),
        }


def build_engine(
    config: "Config",
    *,
    client: Optional[redis.Redis] = None,
    sinks: Sequence[Sink] = (),
    log: Any = None,
) -> Optional[AlertEngine]:
    """The engine for a daemon config, or None with alerts off.

    Alerts go to the JSONL directory when the JSONL sink is on, and through
    the OTLP sink when one is among ``sinks``. ``client`` defaults to a new
    connection to ``config.redis.url``. Raises ValueError when a webhook
    header's environment variable is missing.
    """
    if not config.alerts.enabled:
        return None
    if client is None:
        if config.redis.url is None:
            raise ValueError("redis.url: the alert engine needs a Redis URL")
        client = connect(config.redis.url, client_name="telemetry-alerts")
    jsonl = config.jsonl
    return AlertEngine(
        config.alerts,
        client,
        stream_names(config.redis.stream_prefix),
        jsonl_dir=jsonl.dir if jsonl.enabled else None,
        otlp_sink=next((sink for sink in sinks if sink.name == "otlp"), None),
        log=log,
        jsonl_max_bytes=jsonl.max_bytes,
        jsonl_retention_days=jsonl.retention_days or None,
    )
