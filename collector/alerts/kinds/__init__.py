"""One module per rule kind; :data:`KINDS` maps a config ``kind`` to its class."""

from __future__ import annotations

from collector.alerts.config import AlertsConfig, Rule
from collector.alerts.kinds.absence import AbsenceKind
from collector.alerts.kinds.base import AlertRule
from collector.alerts.kinds.new import NewKind
from collector.alerts.kinds.rate import RateKind
from collector.alerts.kinds.value import ValueKind

__all__ = ["AlertRule", "KINDS", "compile_rule", "compile_rules"]

KINDS: dict[str, type[AlertRule]] = {kind.kind: kind for kind in (RateKind, NewKind, ValueKind, AbsenceKind)}


def compile_rule(rule: Rule, config: AlertsConfig) -> AlertRule:
    return KINDS[rule.kind](rule, config)


def compile_rules(config: AlertsConfig) -> list[AlertRule]:
    return [compile_rule(rule, config) for rule in config.active_rules()]
