"""The ``[alerts]`` config section: rules, lifecycle timings, notification policy and the webhook.

Rules (:mod:`collector.alerts.rule_config`) are a tagged union on ``kind`` (``rate``, ``new``, ``value``,
``absence``), converted with ``msgspec.convert(..., dec_hook=collector.durations.dec_hook)``
like the rest of the config, so a bad rule is reported with its field path::

    Invalid value 'rates' - at `$.alerts.rules[0].kind`
    window: must be > 0, got 0s - at `$.alerts.rules[1]`
    type: bad glob 'error[': unclosed '[' - at `$.alerts.rules[2].filter`

With no config at all the built-in :data:`DEFAULT_RULES` are active: critical
errors above 10 a minute, more than 5 errors a minute from one service, a new
error kind, collector lag close to the stream's MAXLEN, and an engine reporting
dropped events.
"""

from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional

import msgspec
from msgspec import Meta

from collector.alerts.rule_config import (
    AbsenceRule,
    Aggregate,
    AlertSeverity,
    EventSeverity,
    Filter,
    LabelName,
    NewRule,
    RateRule,
    Rule,
    ValueRule,
    compile_glob,
    positive,
    service_pattern,
    type_pattern,
)
from collector.durations import Duration
from collector.redisconn import secret_from_env

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
    "WebhookConfig",
    "InhibitRule",
    "AlertsConfig",
    "DEFAULT_RULES",
    "CLI_OPTIONS",
    "LAG_EVENT_TYPE",
    "LOSS_EVENT_TYPE",
    "compile_glob",
    "type_pattern",
    "service_pattern",
]

EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
HeaderName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]

# The synthetic event `AlertStage.observe_lag` feeds to the rules: fields
# `stream`, `lag`, `maxlen` and `ratio` (lag / maxlen).
LAG_EVENT_TYPE = "collector.lag"
# The synthetic event `AlertStage.observe_loss` feeds to the rules (issue #16): fields
# `stream` and `count` (entries trimmed before they were acked, one observation per range).
LOSS_EVENT_TYPE = "collector.entries_lost"


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
        positive("timeout", self.timeout)
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
    # Engines report their own losses (emitters' client.report events, #13).
    ValueRule(
        name="engine-drops",
        filter=Filter(type="client.report"),
        group_by=["service"],
        field="dropped_total",
        aggregate="sum",
        op=">",
        threshold=0,
        window=Duration(300),
        severity="warning",
        summary="engine {service} dropped {value:.0f} telemetry events in 5m (its client reports): "
        "see 'telemetry-collector health'",
    ),
)
DEFAULT_RULES += (
    ValueRule(
        name="entries-lost",
        filter=Filter(type=LOSS_EVENT_TYPE),
        group_by=["stream"],
        field="count",
        aggregate="sum",
        op=">",
        threshold=0,
        window=Duration(3600),
        severity="critical",
        summary="{value:.0f} entries of {stream} were trimmed before they were acked: lost "
        "(the collector log names the id ranges)",
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
        positive("repeat_interval", self.repeat_interval)
        positive("evaluate_interval", self.evaluate_interval)
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
