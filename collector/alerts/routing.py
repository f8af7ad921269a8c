"""Which rules see a delivered event: a table built from the rules, one or two lookups per event.

Most events match no rule (info-level generations with the default rules), so
what the stage does for them must cost next to nothing: no object, no tuple,
no call. The table is keyed by severity first, since a rule's severity
condition does not depend on the type: a severity no rule accepts drops the
event after one lookup. Then by type, filled as types show up: the rules whose
type glob and severity accept the pair, each with the check that remains for
the single event (service and fields) or None when nothing does.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from collector.alerts.kinds import AlertRule
from collector.alerts.observation import Observation
from collector.alerts.windows import Updates
from collector.records import Record
from emitters.events import SEVERITIES

__all__ = ["Router", "MAX_TYPES"]

# Types are open-ended (custom events): past this many per severity the table starts over.
MAX_TYPES = 4096

Route = tuple[tuple[AlertRule, Optional[Callable[[Observation], bool]]], ...]


class Router:
    """Turns delivered records into what they add to the rules' shared state."""

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        self._rules = rules
        # severity -> type -> route; None: no rule accepts the severity whatever the type.
        self._table: dict[str, Optional[dict[str, Route]]] = {
            severity: {} if any(rule.matches.accepts_severity(severity) for rule in rules) else None
            for severity in SEVERITIES
        }

    def collect(self, batch: Sequence[Record], now: float) -> Optional[Updates]:
        """What ``batch`` adds as of ``now`` (None: nothing, no rule matches any of it).

        Times in the future (clock skew) count as now; events older than a
        rule's window cannot change it and are skipped by that rule.
        """
        table = self._table
        updates: Optional[Updates] = None
        for record in batch:
            event = record.event
            types = table.get(event.severity)
            if types is None:
                continue
            route = types.get(event.type)
            if route is None:
                route = self._route(types, event.severity, event.type)
            if not route:
                continue
            if updates is None:
                updates = Updates()
            obs = Observation.from_event(event)
            ts = obs.ts if obs.ts < now else now
            for rule, check in route:
                if check is None or check(obs):
                    rule.observe(obs, ts, now, updates)
        return updates

    def _route(self, types: dict[str, Route], severity: str, type: str) -> Route:
        if len(types) >= MAX_TYPES:
            types.clear()
        route = types[type] = tuple(
            (rule, rule.matches.accepts_event if rule.matches.checks_event else None)
            for rule in self._rules
            if rule.matches.accepts_type(type, False) and rule.matches.accepts_severity(severity)
        )
        return route
