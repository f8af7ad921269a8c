"""Events as alert rules see them, and the compiled filters that match them."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

import msgspec

from collector.alerts.config import LAG_EVENT_TYPE, Filter, service_pattern, type_pattern
from emitters.events import SEVERITY_RANK, Event

__all__ = ["Scalar", "Observation", "Matcher", "label_value", "label_name"]

Scalar = Union[str, int, float, bool]


class Observation(msgspec.Struct, gc=False):
    """One event as rules see it: type, service, severity, time and field lookup.

    ``ts`` is unix seconds; ``key`` identifies the event (its ``id``) for
    counting it once. Built from a decoded event, or from plain fields
    for the collector's own synthetic events (lag), which only rules naming
    their type in ``filter.type`` see. A struct, built in C: every event a
    rule matches gets one.
    """

    type: str
    service: str
    severity: str
    ts: float
    # The idempotence key: a window counts an event once however often its entry is
    # delivered. Synthetic observations have none (""): they are never delivered twice.
    key: str = ""
    synthetic: bool = True
    event: Optional[Event] = None
    fields: Optional[Mapping[str, Scalar]] = None

    @classmethod
    def from_event(cls, event: Event) -> "Observation":
        return cls(event.type, event.service, event.severity, event.ts / 1e9, event.id[:16], False, event)

    @classmethod
    def lag(cls, stream: str, lag: int, maxlen: int, ts: float) -> "Observation":
        fields = {"stream": stream, "lag": lag, "maxlen": maxlen, "ratio": lag / maxlen}
        return cls(LAG_EVENT_TYPE, "telemetry-collector", "info", ts, fields=fields)

    def get(self, name: str) -> Optional[Scalar]:
        """The scalar value of field ``name`` (see :data:`config.FieldName`), or None."""
        if name == "type":
            return self.type
        if self.fields is not None:
            value: Any = self.fields.get(name)
        else:
            event = self.event
            names = _field_names(event.__class__)
            if name in names:  # never dotted: a field name has no dot
                value = getattr(event, name)
            elif "." in name:
                root, _, key = name.partition(".")
                nested = getattr(event, root) if root in names else None
                value = nested.get(key) if isinstance(nested, dict) else None
            else:
                value = event.attrs.get(name)  # type: ignore[union-attr]
        return value if isinstance(value, (str, int, float)) else None


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    """The field names of an event class as a set (``__struct_fields__`` is a tuple), once per class."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(cls.__struct_fields__)  # type: ignore[attr-defined]
    return names


def _equal(expected: Scalar, actual: Optional[Scalar]) -> bool:
    # In Python True == 1; in a filter `fields = {cached = true}` must not match 1.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    return expected == actual


class Matcher:
    """A compiled :class:`config.Filter`: call it with an observation."""

    def __init__(self, spec: Filter) -> None:
        self._type = None if spec.type is None else type_pattern(spec.type)
        self._service = None if spec.service is None else service_pattern(spec.service)
        self._severity = spec.severity
        self._min_rank = None if spec.min_severity is None else SEVERITY_RANK[spec.min_severity]
        self._fields = tuple(spec.fields.items())

    def __call__(self, obs: Observation) -> bool:
        return self.accepts_type(obs.type, obs.synthetic) and self.accepts(obs)

    def accepts_type(self, type: str, synthetic: bool) -> bool:
        if self._type is None:
            return not synthetic
        return self._type.match(type) is not None

    def accepts_severity(self, severity: str) -> bool:
        if self._severity is not None and severity != self._severity:
            return False
        return self._min_rank is None or SEVERITY_RANK.get(severity, 0) >= self._min_rank

    @property
    def checks_event(self) -> bool:
        """Whether accepting needs more than the type and severity (a service or field condition)."""
        return self._service is not None or bool(self._fields)

    def accepts(self, obs: Observation) -> bool:
        """Every condition but the type (which callers check once per type)."""
        return self.accepts_severity(obs.severity) and self.accepts_event(obs)

    def accepts_event(self, obs: Observation) -> bool:
        """The service and field conditions."""
        if self._service is not None and not self._service.match(obs.service):
            return False
        return all(_equal(expected, obs.get(name)) for name, expected in self._fields)


def label_value(value: Optional[Scalar]) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def label_name(field: str) -> str:
    """``attrs.region`` -> ``region``; the event's ``severity`` must not shadow the alert's."""
    name = field.rpartition(".")[2]
    name = "".join(char if char.isalnum() or char == "_" else "_" for char in name)
    if not (name[:1].isalpha() or name[:1] == "_"):
        name = f"_{name}"
    return "event_severity" if name == "severity" else name
