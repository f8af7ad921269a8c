"""The ``[alerts]`` config section: rules, lifecycle timings and the webhook.

Rules are a tagged union on ``kind`` (``rate``, ``new``, ``value``,
``absence``), converted with ``msgspec.convert(..., dec_hook=collector.durations.dec_hook)``
like the rest of the config, so a bad rule is reported with its field path::

    Invalid value 'rates' - at `$.alerts.rules[0].kind`
    window: must be > 0, got 0s - at `$.alerts.rules[1]`
    type: bad glob 'error[': unclosed '[' - at `$.alerts.rules[2].filter`

With no config at all the built-in :data:`DEFAULT_RULES` are active: critical
errors above 10 a minute, more than 5 errors a minute from one service, a new
error kind, and collector lag close to the stream's MAXLEN.
"""

from __future__ import annotations

import fnmatch
import re
import string
from typing import Annotated, Dict, List, Literal, Optional, Union

import msgspec
from msgspec import Meta

from collector.durations import Duration, format_duration
from collector.redisconn import secret_from_env

__all__ = [
    "EventSeverity",
    "AlertSeverity",
    "Aggregate",
    "Filter",
    "RateRule",
    "NewRule",
    "ValueRule",
    "AbsenceRule",
    "Rule",
    "WebhookConfig",
    "InhibitRule",
    "AlertsConfig",
    "DEFAULT_RULES",
    "CLI_OPTIONS",
    "LAG_EVENT_TYPE",
    "compile_glob",
    "type_pattern",
    "service_pattern",
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
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]

NESTED_FIELDS = ("attrs", "context", "metadata")

# The synthetic event `AlertEngine.observe_lag` feeds to the rules: fields
# `stream`, `lag`, `maxlen` and `ratio` (lag / maxlen).
LAG_EVENT_TYPE = "collector.lag"

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


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {format_duration(value)}")


class RateRule(_RuleBase, tag="rate", kw_only=True):
    """Fires when more than ``threshold`` matching events fall in ``window`` (per group)."""

    window: Duration
    threshold: Annotated[float, Meta(ge=0)]
    op: RateOp = ">"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("window", self.window)


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
        _positive("window", self.window)
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
        _positive("period", self.period)
        if self.forget_after <= self.period:
            raise ValueError(
                f"forget_after: must be longer than period ({format_duration(self.period)}), "
                f"got {format_duration(self.forget_after)}"
            )


Rule = Union[RateRule, NewRule, ValueRule, AbsenceRule]


class WebhookConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An HTTP endpoint for alerts.

    ``alertmanager``: ``POST {url}/api/v2/alerts`` with the Alertmanager v2
    body; ``json``: ``POST {url}`` with a JSON list of alert records.
    ``headers`` are plain values; ``headers_env`` maps a header to the
    environment variable holding its (secret) value, or to ``$NAME_FILE``.
    """

    url: Annotated[str, Meta(pattern=r"^https?://[^/\s?#]+[^\s]*$")]
    format: Literal["alertmanager", "json"] = "alertmanager"
    timeout: Duration = Duration(5)
    retries: Annotated[int, Meta(ge=0, le=100)] = 3
    headers: Dict[HeaderName, str] = {}
    headers_env: Dict[HeaderName, EnvName] = {}
    generator_url: Optional[Annotated[str, Meta(pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")]] = None

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        for header, env in self.headers_env.items():
            if secret_from_env(env) is None:
                raise ValueError(
                    f"headers_env.{header}: environment variable {env} (or {env}_FILE) is not set"
                )

    def resolved_headers(self) -> dict[str, str]:
        """``headers`` plus the values of ``headers_env``, read now."""
        headers = dict(self.headers)
        for header, env in self.headers_env.items():
            value = secret_from_env(env)
            if value is None:
                raise ValueError(f"alerts.webhook.headers_env.{header}: {env} is not set")
            headers[header] = value
        return headers


class InhibitRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Alertmanager's inhibition: while an alert matching ``source_match`` fires, alerts matching
    ``target_match`` with the same values of the ``equal`` labels are not notified.

    Matches compare label values for equality; ``alertname`` is the rule's name.
    """

    source_match: Dict[LabelName, str]
    target_match: Dict[LabelName, str]
    equal: List[LabelName] = []

    def __post_init__(self) -> None:
        if not self.source_match or not self.target_match:
            raise ValueError("source_match and target_match: each needs at least one label")


# `run` options bound to fields of this section: (flag, field, help); rules live in the TOML file.
CLI_OPTIONS: tuple[tuple[str, ...], ...] = (
    ("--alerts/--no-alerts", "enabled", "Evaluate the alert rules ([alerts] in the config) [default: on]."),
)

DEFAULT_RULES: tuple[Rule, ...] = (
    RateRule(
        name="critical-errors",
        filter=Filter(severity="critical"),
        window=Duration(60),
        threshold=10,
        severity="critical",
    ),
    RateRule(
        name="service-errors",
        filter=Filter(min_severity="error"),
        group_by=["service"],
        window=Duration(60),
        threshold=5,
        severity="warning",
    ),
    NewRule(
        name="new-error-kind",
        filter=Filter(type="error"),
        group_by=["error_type"],
        severity="warning",
    ),
    ValueRule(
        name="collector-lag",
        filter=Filter(type=LAG_EVENT_TYPE),
        group_by=["stream"],
        field="ratio",
        aggregate="max",
        op=">=",
        threshold=0.8,
        window=Duration(60),
        severity="critical",
        summary="collector lag on {stream} reached {value:.0%} of the stream's MAXLEN: "
        "unread entries are about to be trimmed",
    ),
)
DEFAULT_RULE_NAMES = tuple(rule.name for rule in DEFAULT_RULES)


class AlertsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Alert rules and how alerts are delivered.

    ``defaults`` turns the built-in rules on; ``disable`` names built-in rules
    to leave out, and a rule in ``rules`` with a built-in's name replaces it.
    """

    enabled: bool = True
    defaults: bool = True
    disable: List[str] = []
    rules: List[Rule] = []
    # Notification policy (Alertmanager's route): alerts with the same values of these labels
    # (``alertname`` is the rule) go out together, ``group_wait`` after the group's first alert,
    # then at most every ``group_interval`` when it changes, and again every ``repeat_interval``.
    group_by: List[LabelName] = msgspec.field(default_factory=lambda: ["alertname"])
    group_wait: Duration = Duration(30)
    group_interval: Duration = Duration(300)
    repeat_interval: Duration = Duration(3600)
    inhibit_rules: List[InhibitRule] = []
    resolve_after: Duration = Duration(120)
    cooldown: Duration = Duration(300)
    evaluate_interval: Duration = Duration(1)
    history: Annotated[int, Meta(ge=1)] = 10_000  # MAXLEN of the {prefix}:alerts stream
    queue_size: Annotated[int, Meta(ge=1)] = 1000  # per delivery channel
    webhook: Optional[WebhookConfig] = None

    def __post_init__(self) -> None:
        _positive("repeat_interval", self.repeat_interval)
        _positive("evaluate_interval", self.evaluate_interval)
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by: a label is listed twice in {self.group_by}")
        seen: dict[str, int] = {}
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                raise ValueError(
                    f"rules[{index}].name: duplicate rule name {rule.name!r} (also rules[{seen[rule.name]}])"
                )
            seen[rule.name] = index
        for name in self.disable:
            if name not in DEFAULT_RULE_NAMES:
                raise ValueError(
                    f"disable: {name!r} is not a built-in rule (built-in: {', '.join(DEFAULT_RULE_NAMES)})"
                )

    def active_rules(self) -> list[Rule]:
        """The rules to evaluate: built-ins not disabled or replaced, then the enabled ``rules``."""
        if not self.enabled:
            return []
        replaced = {rule.name for rule in self.rules}
        builtin = [
            rule
            for rule in DEFAULT_RULES
            if self.defaults and rule.name not in self.disable and rule.name not in replaced
        ]
        return builtin + [rule for rule in self.rules if rule.enabled]

    def repeat_interval_for(self, rule: Rule) -> float:
        return self.repeat_interval if rule.repeat_interval is None else rule.repeat_interval

    def resolve_after_for(self, rule: Rule) -> float:
        return self.resolve_after if rule.resolve_after is None else rule.resolve_after

    def cooldown_for(self, rule: Rule) -> float:
        return self.cooldown if rule.cooldown is None else rule.cooldown

    def hold_for(self, rule_name: str) -> float:
        """How long a receiver should keep a firing alert of ``rule_name`` active without news:
        twice its repeat interval, so it resolves on its own only if we stop sending altogether."""
        rule = next((rule for rule in self.active_rules() if rule.name == rule_name), None)
        return 2 * (self.repeat_interval if rule is None else self.repeat_interval_for(rule))
