"""The alert rules of the ``[alerts]`` section: filters and one struct per rule kind.

Rules are a tagged union on ``kind``; what a kind does lives in
:mod:`collector.alerts.kinds`, one class per kind.
"""

from __future__ import annotations

import fnmatch
import re
import string
from typing import Annotated, Dict, List, Literal, Optional, Union

import msgspec
from msgspec import Meta

from collector.durations import Duration, format_duration

__all__ = [
    "EventSeverity",
    "AlertSeverity",
    "Aggregate",
    "LabelName",
    "Filter",
    "RateRule",
    "NewRule",
    "ValueRule",
    "AbsenceRule",
    "Rule",
    "compile_glob",
    "type_pattern",
    "service_pattern",
    "positive",
]

EventSeverity = Literal["debug", "info", "warn", "error", "critical"]
AlertSeverity = Literal["info", "warning", "critical"]
Aggregate = Literal["count", "sum", "avg", "min", "max", "p50", "p90", "p95", "p99"]
RateOp = Literal[">", ">="]
CompareOp = Literal[">", ">=", "<", "<="]
FieldValue = Union[str, int, float, bool]

RuleName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")]
# An event field: a top-level field (`error_type`, `model`), or one key of a
# nested map (`attrs.region`, `context.shard`, `metadata.family`). A bare name
# that is not a field of the event is looked up in `attrs`.
FieldName = Annotated[
    str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_][A-Za-z0-9_.:/-]*)?$", max_length=200)
]
LabelName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)]

NESTED_FIELDS = ("attrs", "context", "metadata")


_TYPE_GLOB = re.compile(r"^[a-z0-9_.*?\[\]!-]+$")
_SERVICE_GLOB = re.compile(r"^[A-Za-z0-9_*?\[\]!-]+$")


def compile_glob(pattern: str, *, allowed: re.Pattern[str], what: str) -> re.Pattern[str]:
    """``pattern`` as an anchored regex; ValueError naming ``what`` when it is malformed.

    fnmatch itself accepts anything (an unclosed ``[`` is a literal), which
    would silently turn a typo into a rule that never matches.
    """
    if not pattern:
        raise ValueError(f"{what}: bad glob: empty pattern")
    if not allowed.match(pattern):
        raise ValueError(
            f"{what}: bad glob {pattern!r}: only the characters of a {what} and * ? [ ] ! may appear"
        )
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "[":
            start = index + 1
            if start < len(pattern) and pattern[start] == "!":
                start += 1
            close = pattern.find("]", start)
            if close == -1:
                raise ValueError(f"{what}: bad glob {pattern!r}: unclosed '['")
            if close == start:
                raise ValueError(f"{what}: bad glob {pattern!r}: empty character class")
            index = close + 1
            continue
        if char == "]":
            raise ValueError(f"{what}: bad glob {pattern!r}: ']' without '['")
        index += 1
    return re.compile(fnmatch.translate(pattern))


def type_pattern(glob: str) -> re.Pattern[str]:
    """The regex of an event-type glob (``generation.*``); ValueError naming ``type``."""
    return compile_glob(glob, allowed=_TYPE_GLOB, what="type")


def service_pattern(glob: str) -> re.Pattern[str]:
    """The regex of a service glob (``engine-*``); ValueError naming ``service``."""
    return compile_glob(glob, allowed=_SERVICE_GLOB, what="service")


def _check_field_name(name: str, what: str) -> None:
    root, dot, _ = name.partition(".")
    if dot and root not in NESTED_FIELDS:
        raise ValueError(
            f"{what}: {name!r} is not a field: nested keys are read from {', '.join(NESTED_FIELDS)} only"
        )


def _check_template(template: str) -> None:
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"summary: bad template {template!r}: {exc}") from None


class Filter(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Which events a rule counts. Every given condition must hold.

    ``type`` and ``service`` are globs (``generation.*``, ``engine-?``);
    ``severity`` is exact and ``min_severity`` a lower bound (``error`` takes
    ``error`` and ``critical``); ``fields`` compares event fields for equality.
    """

    type: Optional[str] = None
    service: Optional[str] = None
    severity: Optional[EventSeverity] = None
    min_severity: Optional[EventSeverity] = None
    fields: Dict[FieldName, FieldValue] = {}

    def __post_init__(self) -> None:
        if self.type is not None:
            type_pattern(self.type)
        if self.service is not None:
            service_pattern(self.service)
        for name in self.fields:
            _check_field_name(name, "fields")


class _RuleBase(msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, kw_only=True):
    """What every rule has. ``group_by`` fields become the alert's labels.

    ``repeat_interval``, ``resolve_after`` and ``cooldown`` override the
    section-wide values for this rule.
    """

    name: RuleName
    enabled: bool = True
    filter: Filter = msgspec.field(default_factory=Filter)
    group_by: List[FieldName] = []
    severity: AlertSeverity = "warning"
    summary: Optional[Annotated[str, Meta(min_length=1, max_length=1000)]] = None
    labels: Dict[LabelName, Annotated[str, Meta(max_length=1000)]] = {}
    repeat_interval: Optional[Duration] = None
    resolve_after: Optional[Duration] = None
    cooldown: Optional[Duration] = None

    def __post_init__(self) -> None:
        for name in self.group_by:
            _check_field_name(name, "group_by")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by: a field is listed twice in {self.group_by}")
        if self.summary is not None:
            _check_template(self.summary)
        if self.repeat_interval is not None and self.repeat_interval <= 0:
            raise ValueError(f"repeat_interval: must be > 0, got {format_duration(self.repeat_interval)}")

    @property
    def kind(self) -> str:
        return self.__struct_config__.tag  # type: ignore[return-value]


def positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {format_duration(value)}")


class RateRule(_RuleBase, tag="rate", kw_only=True):
    """Fires when more than ``threshold`` matching events fall in ``window`` (per group)."""

    window: Duration
    threshold: Annotated[float, Meta(ge=0)]
    op: RateOp = ">"

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("window", self.window)


class NewRule(_RuleBase, tag="new", kw_only=True):
    """Fires when a ``key`` value (per group) is seen for the first time.

    A key silent for ``regression_after`` that shows up again fires as a
    regression (``0s`` turns that off). Errors without a ``fingerprint`` are
    keyed by their ``error_type``. At most ``max_known`` keys are remembered,
    the least recently seen are forgotten first.
    """

    key: FieldName = "fingerprint"
    regression_after: Duration = Duration(7 * 86400)
    max_known: Annotated[int, Meta(ge=1)] = 100_000

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_field_name(self.key, "key")


class ValueRule(_RuleBase, tag="value", kw_only=True):
    """Fires when ``aggregate`` of the numeric ``field`` over ``window`` crosses ``threshold``.

    Percentiles come from a reservoir of at most ``max_samples`` values per
    group and window slice (exact below that); ``count``, ``sum``, ``avg``,
    ``min`` and ``max`` are always exact. Groups with fewer than
    ``min_samples`` values in the window never fire.
    """

    field: FieldName
    aggregate: Aggregate = "avg"
    op: CompareOp = ">"
    threshold: float
    window: Duration
    min_samples: Annotated[int, Meta(ge=1)] = 1
    max_samples: Annotated[int, Meta(ge=10, le=100_000)] = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("window", self.window)
        _check_field_name(self.field, "field")


class AbsenceRule(_RuleBase, tag="absence", kw_only=True):
    """Fires when a group (by default a service) seen before sends nothing matching for ``period``.

    Groups silent for longer than ``forget_after`` are dropped (a service that
    was decommissioned), which also resolves their alert.
    """

    group_by: List[FieldName] = msgspec.field(default_factory=lambda: ["service"])
    period: Duration
    forget_after: Duration = Duration(86400)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive("period", self.period)
        if self.forget_after <= self.period:
            raise ValueError(
                f"forget_after: must be longer than period ({format_duration(self.period)}), "
                f"got {format_duration(self.forget_after)}"
            )


Rule = Union[RateRule, NewRule, ValueRule, AbsenceRule]
