"""What every kind of alert rule shares: matching, groups, labels, records and summaries.

A kind is a subclass of :class:`AlertRule` in its own module of this package,
registered in :data:`collector.alerts.kinds.KINDS` under its config ``kind``.
It says what an observation adds to the shared state (:meth:`observe`), how
to read its window back (:meth:`read`) and how to word its summary.
"""

from __future__ import annotations

import json
import string
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Optional

import msgspec

from collector.alerts.config import AlertsConfig, Rule
from collector.alerts.observation import Matcher, Observation, label_name, label_value
from collector.alerts.records import AlertRecord, Candidate, FirstSightings, alert_fingerprint
from collector.alerts.windows import Measure, Slicing, Updates
from collector.durations import format_duration

if TYPE_CHECKING:
    from collector.alerts.state import AlertState

__all__ = ["AlertRule", "WindowedRule", "Reader", "group_text", "json_text", "text"]

# Consumes the replies of the reads a rule queued, returns the measure per group.
Reader = Callable[[Iterator[Any]], dict[str, Measure]]

_json_encode = msgspec.json.Encoder().encode


def json_text(values: list[str]) -> str:
    return _json_encode(values).decode()


class _TemplateValues(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return ""


def text(value: Any) -> str:
    """A Redis reply item as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def group_text(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in labels.items())


class AlertRule:
    """A configured rule with its filter compiled and its lifecycle timings resolved."""

    kind: ClassVar[str]
    # The value a clear alert of this kind reports when its group left the window.
    clear_value: ClassVar[Optional[float]] = None

    def __init__(self, rule: Rule, config: AlertsConfig) -> None:
        self.rule: Any = rule
        self.name = rule.name
        self.matches = Matcher(rule.filter)
        self.repeat_interval = float(config.repeat_interval_for(rule))
        self.resolve_after = float(config.resolve_after_for(rule))
        self.cooldown = float(config.cooldown_for(rule))

    # --- what a kind decides ---

    @property
    def window(self) -> float:
        return 0.0

    @property
    def threshold(self) -> Optional[float]:
        return None

    def observe(self, obs: Observation, ts: float, now: float, updates: Updates) -> None:
        """Add what ``obs`` (at ``ts``, never after ``now``) means for this rule to ``updates``."""
        raise NotImplementedError

    def read(self, state: "AlertState", pipe: Any, now: float) -> Optional[Reader]:
        """Queue the reads of this rule's window on ``pipe``; None for rules judged as they observe."""
        return None

    def judging(self, listening_since: float, now: float) -> bool:
        """Whether the rule can judge yet (absence rules wait a period after a start)."""
        return True

    def first_sightings(self, updates: Updates) -> Optional[FirstSightings]:
        """This rule's first sightings in ``updates``, for the state to judge (``new`` rules)."""
        return None

    def default_summary(self, group: Mapping[str, str], value: Optional[float], firing: bool) -> str:
        where = f" for {group_text(group)}" if group else ""
        return f"{self.name}{where}"

    # --- shared ---

    def group_key(self, obs: Observation) -> str:
        if not self.rule.group_by:
            return "[]"
        return json_text(self.group_values(obs))

    def group_values(self, obs: Observation) -> list[str]:
        return [label_value(obs.get(name)) for name in self.rule.group_by]

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
    ) -> AlertRecord:
        """A firing record for ``group`` (``summary`` replaces the default text)."""
        labels = self.labels(group, extra_labels)
        return AlertRecord(
            rule=self.name,
            kind=self.kind,
            status="firing",
            labels=labels,
            summary=self.describe(group, labels, value, firing=True, default=summary),
            value=value,
            threshold=self.threshold if threshold is None else threshold,
            fingerprint=alert_fingerprint(self.name, labels),
        )

    def candidate(self, group: str, record: AlertRecord, *, active: bool) -> Candidate:
        return Candidate(
            fp=record.fingerprint,
            active=active,
            group=group,
            record=record,
            repeat_interval=self.repeat_interval,
            resolve_after=self.resolve_after,
            cooldown=self.cooldown,
        )

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
        return default or self.default_summary(self.group_labels(group), value, firing)

    def _templated(self, labels: Mapping[str, str], value: Optional[float]) -> str:
        values = _TemplateValues(labels)
        values.update(rule=self.name, value=value, threshold=self.threshold, window=format_duration(self.window))
        try:
            return string.Formatter().vformat(self.rule.summary or "", (), values)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            # e.g. `{value:.0f}` while there is no value: the default text says it better
            return ""


class WindowedRule(AlertRule):
    """A kind measured over the rule's sliding ``window`` against its ``threshold`` (rate, value)."""

    def __init__(self, rule: Rule, config: AlertsConfig) -> None:
        super().__init__(rule, config)
        self._window = float(rule.window)  # type: ignore[union-attr]
        self.slicing = Slicing(self._window)

    @property
    def window(self) -> float:
        return self._window

    @property
    def threshold(self) -> Optional[float]:
        return float(self.rule.threshold)
