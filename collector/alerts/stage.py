"""The alert stage: wired by the daemon like a sink, it evaluates the rules on what the collector reads.

The daemon calls :meth:`AlertStage.write` with every batch its sinks
accepted, :meth:`AlertStage.observe_lag` with the unacked count of each
stream, and :meth:`AlertStage.tick` about once a second. Observations go
into the consumer group's shared state in Redis at once (``new`` rules fire
right there); windows are evaluated on ticks, at most every ``evaluate_interval``,
and then the notification policy (:mod:`collector.alerts.notify`) decides what
goes to the channels: the log, JSONL, OTLP and the webhook. The alerts stream
gets every transition from the state itself.

Redis being away never reaches the daemon as an exception: what a batch adds
is kept (merged, bounded) and written on a later call, and the outage is
logged once when it starts and once when it ends.
"""

from __future__ import annotations

import time
from collections import Counter
from threading import Lock
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import redis
import structlog

from collector.alerts.channels import build_channels
from collector.alerts.config import LOSS_EVENT_TYPE, AlertsConfig
from collector.alerts.delivery import Channel, Delivery
from collector.alerts.kinds import compile_rules
from collector.alerts.notify import Notifier
from collector.alerts.observation import Observation
from collector.alerts.records import AlertRecord
from collector.alerts.routing import Router
from collector.alerts.rules import collect, plan, warming_up
from collector.alerts.silences import SilenceStore
from collector.alerts.state import AlertState
from collector.alerts.windows import Updates
from collector.records import Record
from collector.redisconn import connect
from emitters.streams import stream_names

if TYPE_CHECKING:
    from collector.config import Config

__all__ = ["AlertStage", "build_alert_stage", "MAX_PENDING"]

# Operations kept while Redis is unreachable; beyond this, observations are dropped (and counted).
MAX_PENDING = 50_000


class AlertStage:
    """Evaluates the alert rules of ``config`` on what one consumer group reads.

    ``state`` is the group's shared state; ``channels`` get every
    notification besides the stream and the log. ``clock`` (unix seconds) is
    the only thing tests replace.
    """

    name = "alerts"

    def __init__(
        self,
        config: AlertsConfig,
        state: AlertState,
        channels: Sequence[Channel] = (),
        *,
        log: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.rules = compile_rules(config)
        self._router = Router(self.rules)
        self._log = log or structlog.get_logger("collector.alerts")
        self._clock = clock
        self.state = state
        retries = {"webhook": config.webhook.retries} if config.webhook is not None else {}
        self.delivery = Delivery(channels, log=self._log, queue_size=config.queue_size, retries=retries)
        silences = SilenceStore(state.client, state.names)
        self.notifier = Notifier(config, state, silences.all, self._notify)
        self.counters: Counter[str] = Counter()
        self._pending = Updates()
        self._lock = Lock()
        self._next_evaluation = float("-inf")
        self._listening_since = clock()
        self._state_error: Optional[str] = None

    # --- the daemon's side ---

    def write(self, batch: Sequence[Record]) -> None:
        """Count a delivered batch into the rules' windows (each event once); fire ``new`` rules at once."""
        if not self.rules or not batch:
            return
        now = self._clock()
        updates = self._router.collect(batch, now)
        self.counters["observed"] += len(batch)
        if updates is None and not self._pending:
            return  # nothing matched and nothing waits: no lock, no Redis
        with self._lock:
            if updates is not None:
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
                self._count(self.state.transition(candidates, expired, now))
                self.notifier.tick(self.state.alerts(), now)
            except redis.RedisError as exc:
                self._state_failed(exc)
                return
            self._state_ok()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending (one try) and let the channels finish within ``timeout``."""
        with self._lock:
            self._flush(self._clock())
        self.delivery.close(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters, pending operations and per-channel delivery figures (for health and tests)."""
        return {
            "group": self.state.group,
            "rules": [rule.name for rule in self.rules],
            "counters": dict(self.counters),
            "pending": self._pending.size(),
            "delivery": self.delivery.stats(),
        }

    # --- internals ---

    def _flush(self, now: float) -> None:
        pending = self._pending
        if not pending:
            return
        self.counters["expired_before_written"] += pending.drop_expired(now)
        try:
            first_seen = [batch for rule in self.rules if (batch := rule.first_sightings(pending)) is not None]
            self._count(self.state.record(pending, first_seen, now))
            self._pending = Updates()
        except redis.RedisError as exc:
            self._state_failed(exc)
            size = pending.size()
            if size > MAX_PENDING:
                self.counters["dropped_state_unavailable"] += size
                self._pending = Updates()
            return
        self._state_ok()

    def _count(self, transitions: Sequence[AlertRecord]) -> None:
        for record in transitions:
            self.counters[record.status] += 1

    def _notify(self, records: Sequence[AlertRecord]) -> None:
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


def build_alert_stage(config: "Config", *, client: Optional[redis.Redis] = None, log: Any = None) -> Optional[AlertStage]:
    """The alert stage of a daemon config (state of ``collector.group``), or None with alerts off.

    ``client`` defaults to a new connection to ``config.redis.url``. Raises
    ValueError naming the setting when a channel's settings are unusable.
    """
    alerts = config.alerts
    if not alerts.enabled:
        return None
    if client is None:
        if config.redis.url is None:
            raise ValueError("redis.url: the alert stage needs a Redis URL")
        client = connect(config.redis.url, client_name="telemetry-alerts")
    state = AlertState(client, stream_names(config.redis.stream_prefix), config.collector.group, history=alerts.history)
    return AlertStage(alerts, state, build_channels(config, hold=alerts.hold_for), log=log)
