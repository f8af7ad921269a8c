"""The [alerts] config section: rule validation with field paths, defaults, overrides."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from collector.alerts.config import (
    DEFAULT_RULES,
    AbsenceRule,
    AlertsConfig,
    NewRule,
    RateRule,
    ValueRule,
    WebhookConfig,
)
from collector.durations import dec_hook


def convert(raw: dict[str, Any]) -> AlertsConfig:
    return msgspec.convert(raw, AlertsConfig, dec_hook=dec_hook)


def rejected(raw: dict[str, Any]) -> str:
    with pytest.raises(msgspec.ValidationError) as info:
        convert(raw)
    return str(info.value)


RATE = {"kind": "rate", "name": "r", "window": "1m", "threshold": 5}


class TestRuleValidation:
    def test_unknown_kind_names_the_field(self) -> None:
        """A rule kind that does not exist is refused at `$.rules[N].kind`."""
        message = rejected({"rules": [RATE, {"kind": "ratio", "name": "x"}]})
        assert message == "Invalid value 'ratio' - at `$.rules[1].kind`"

    def test_missing_kind(self) -> None:
        """A rule without a kind says which rule lacks it."""
        assert "missing required field `kind` - at `$.rules[0]`" in rejected({"rules": [{"name": "x"}]})

    def test_negative_window(self) -> None:
        """A negative window is refused with the field path."""
        message = rejected({"rules": [{**RATE, "window": "-5m"}]})
        assert message.endswith("- at `$.rules[0].window`")
        message = rejected({"rules": [{**RATE, "window": -300}]})
        assert "must be >= 0" in message and message.endswith("`$.rules[0].window`")

    def test_zero_window(self) -> None:
        """A window of zero could never hold an event: refused, naming `window`."""
        message = rejected({"rules": [{**RATE, "window": "0s"}]})
        assert message.startswith("window: must be > 0") and message.endswith("- at `$.rules[0]`")

    @pytest.mark.parametrize(
        ("glob", "reason"),
        [
            ("error[", "unclosed '['"),
            ("error]", "']' without '['"),
            ("error.[]x", "empty character class"),
            ("Error", "only the characters"),
            ("gen eration.*", "only the characters"),
            ("", "empty pattern"),
        ],
    )
    def test_bad_type_glob(self, glob: str, reason: str) -> None:
        """A malformed type glob is refused with the filter's path and why, instead of never matching."""
        message = rejected({"rules": [{**RATE, "filter": {"type": glob}}]})
        assert message.startswith("type: bad glob")
        assert reason in message
        assert message.endswith("- at `$.rules[0].filter`")

    def test_bad_service_glob(self) -> None:
        """Service globs are checked the same way."""
        message = rejected({"rules": [{**RATE, "filter": {"service": "engine-[0-9"}}]})
        assert message.startswith("service: bad glob") and "unclosed" in message

    def test_good_globs(self) -> None:
        """Globs with *, ?, classes and negated classes are accepted."""
        config = convert({"rules": [{**RATE, "filter": {"type": "gen*.[!x]ompleted", "service": "engine-?"}}]})
        assert config.rules[0].filter.type == "gen*.[!x]ompleted"

    def test_unknown_aggregate(self) -> None:
        """An aggregate that does not exist is refused at its path."""
        rule = {"kind": "value", "name": "v", "field": "ttft_ms", "aggregate": "p42", "threshold": 1, "window": "5m"}
        assert rejected({"rules": [rule]}) == "Invalid enum value 'p42' - at `$.rules[0].aggregate`"

    def test_unknown_field_in_rule(self) -> None:
        """A misspelt option is refused rather than ignored."""
        assert "unknown field `treshold`" in rejected({"rules": [{**RATE, "treshold": 3}]})

    def test_missing_threshold(self) -> None:
        """Kind-specific required fields are required."""
        rule = {"kind": "rate", "name": "r", "window": "1m"}
        assert "missing required field `threshold`" in rejected({"rules": [rule]})

    def test_nested_field_outside_maps(self) -> None:
        """Dotted names only reach into attrs, context and metadata."""
        message = rejected({"rules": [{**RATE, "group_by": ["model.name"]}]})
        assert message.startswith("group_by: 'model.name' is not a field")

    def test_duplicate_rule_names(self) -> None:
        """Two rules with one name would share alert state: refused, naming both."""
        message = rejected({"rules": [RATE, {**RATE, "threshold": 9}]})
        assert message.startswith("rules[1].name: duplicate rule name 'r' (also rules[0])")

    def test_forget_after_must_exceed_period(self) -> None:
        """An absence rule cannot forget a group before it could fire."""
        message = rejected({"rules": [{"kind": "absence", "name": "a", "period": "10m", "forget_after": "5m"}]})
        assert message.startswith("forget_after: must be longer than period")

    def test_bad_summary_template(self) -> None:
        """A summary template that cannot be parsed is refused at start, not at the first alert."""
        message = rejected({"rules": [{**RATE, "summary": "value {value"}]})
        assert message.startswith("summary: bad template")

    def test_each_kind_converts(self) -> None:
        """One rule of each kind, as a TOML file would give them."""
        config = convert(
            {
                "rules": [
                    RATE,
                    {"kind": "new", "name": "n", "key": "error_type", "regression_after": "3d"},
                    {
                        "kind": "value",
                        "name": "v",
                        "filter": {"type": "generation.completed"},
                        "field": "ttft_ms",
                        "aggregate": "p95",
                        "threshold": 2000,
                        "window": "5m",
                    },
                    {"kind": "absence", "name": "a", "filter": {"type": "runtime.status"}, "period": "2m"},
                ]
            }
        )
        kinds = [type(rule) for rule in config.rules]
        assert kinds == [RateRule, NewRule, ValueRule, AbsenceRule]
        assert config.rules[1].regression_after == 3 * 86400
        assert config.rules[3].group_by == ["service"]


class TestDefaults:
    def test_builtins_active_without_config(self) -> None:
        """With no config the four built-in rules are active."""
        names = [rule.name for rule in AlertsConfig().active_rules()]
        assert names == ["critical-errors", "service-errors", "new-error-kind", "collector-lag", "engine-drops", "entries-lost"]
        critical = DEFAULT_RULES[0]
        assert isinstance(critical, RateRule) and critical.threshold == 10 and critical.window == 60

    def test_disable_and_replace(self) -> None:
        """`disable` drops a built-in; a rule with a built-in's name replaces it."""
        config = convert({"disable": ["collector-lag"], "rules": [{**RATE, "name": "critical-errors", "threshold": 50}]})
        rules = {rule.name: rule for rule in config.active_rules()}
        assert "collector-lag" not in rules
        assert rules["critical-errors"].threshold == 50  # type: ignore[union-attr]
        assert len(rules) == len(DEFAULT_RULES) - 1

    def test_disable_unknown_builtin(self) -> None:
        """Disabling a rule that is not built in is a typo worth reporting."""
        assert rejected({"disable": ["critical-error"]}).startswith("disable: 'critical-error' is not a built-in rule")

    def test_defaults_off_and_enabled_off(self) -> None:
        """`defaults = false` leaves only the configured rules; `enabled = false` leaves none."""
        assert [rule.name for rule in convert({"defaults": False, "rules": [RATE]}).active_rules()] == ["r"]
        assert convert({"enabled": False, "rules": [RATE]}).active_rules() == []
        assert convert({"rules": [{**RATE, "enabled": False}], "defaults": False}).active_rules() == []

    def test_rule_timings_override_section(self) -> None:
        """A rule's own repeat/resolve/cooldown win over the section's."""
        config = convert({"resolve_after": "3m", "rules": [{**RATE, "resolve_after": "10s"}, {**RATE, "name": "s"}]})
        assert config.resolve_after_for(config.rules[0]) == 10
        assert config.resolve_after_for(config.rules[1]) == 180


class TestWebhookConfig:
    def test_url_scheme(self) -> None:
        """Only http(s) URLs are accepted."""
        assert rejected({"webhook": {"url": "ftp://example/x"}}).endswith("- at `$.webhook.url`")

    def test_header_env_missing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A header whose secret is not in the environment is refused at start, naming both."""
        monkeypatch.delenv("ALERT_TOKEN", raising=False)
        monkeypatch.delenv("ALERT_TOKEN_FILE", raising=False)
        message = rejected({"webhook": {"url": "http://am:9093", "headers_env": {"Authorization": "ALERT_TOKEN"}}})
        assert message.startswith("headers_env.Authorization: environment variable ALERT_TOKEN")
        assert message.endswith("- at `$.webhook`")

    def test_header_from_env_and_file(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
        """Secret header values come from $NAME or the file named by $NAME_FILE."""
        secret = tmp_path / "token"
        secret.write_text("Bearer from-file\n")
        monkeypatch.setenv("HOOK_TOKEN_FILE", str(secret))
        monkeypatch.setenv("HOOK_TENANT", "t1")
        webhook = msgspec.convert(
            {"url": "http://am:9093", "headers": {"X-Static": "1"}, "headers_env": {"Authorization": "HOOK_TOKEN", "X-Tenant": "HOOK_TENANT"}},
            WebhookConfig,
            dec_hook=dec_hook,
        )
        assert webhook.resolved_headers() == {"X-Static": "1", "Authorization": "Bearer from-file", "X-Tenant": "t1"}


class TestRunFlag:
    def test_no_alerts_flag_reaches_the_config(self) -> None:
        """`run --no-alerts` (and TELEMETRY_ALERTS) is a real option of the daemon, mapped to alerts.enabled."""
        from collector.commands.run import run

        with run.make_context("run", ["--no-alerts"]) as ctx:
            assert ctx.params["alerts__enabled"] is False
        with run.make_context("run", [], default_map=None) as ctx:
            assert ctx.params["alerts__enabled"] is None  # unset: the file or the default decides
        option = next(param for param in run.params if param.name == "alerts__enabled")
        assert option.envvar == "TELEMETRY_ALERTS"
