"""Pure rule logic: matching, windows, aggregates, lifecycle planning, payloads (no Redis)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.alerts.config import Filter
from collector.alerts.channels import alert_event, alertmanager_payload
from collector.alerts.kinds import AlertRule, compile_rules
from collector.alerts.kinds.absence import evaluate_absence
from collector.alerts.kinds.rate import evaluate_rate
from collector.alerts.observation import Matcher, Observation
from collector.alerts.records import AlertRecord, StoredAlert, alert_fingerprint, human_duration, iso_time
from collector.alerts.routing import MAX_TYPES, Router
from collector.alerts.rules import Snapshot, collect, plan, warming_up
from collector.alerts.windows import BucketStats, Measure, Updates, aggregate, weighted_percentile, window_buckets
from emitters.events import CustomEvent, validate
from tests.support.alerts import alerts_config, completed, custom, envelope, error_event, records, status

NOW = 1_800_000_000.0


def rules_of(**raw: object) -> list[AlertRule]:
    return compile_rules(alerts_config(defaults=False, **raw))


class TestMatcher:
    def test_type_glob_and_service_glob(self) -> None:
        """Type and service globs match as fnmatch does, anchored."""
        match = Matcher(Filter(type="generation.*", service="engine-?"))
        assert match(Observation.from_event(completed(NOW, ttft_ms=1, service="engine-1")))
        assert not match(Observation.from_event(completed(NOW, ttft_ms=1, service="engine-12")))
        assert not match(Observation.from_event(status(NOW, service="engine-1")))

    def test_severity_exact_and_minimum(self) -> None:
        """`severity` is exact; `min_severity` takes that level and above."""
        exact, least = Matcher(Filter(severity="error")), Matcher(Filter(min_severity="error"))
        critical = Observation.from_event(error_event(NOW, severity="critical"))
        warn = Observation.from_event(custom(NOW, "job.slow", severity="warn"))
        assert not exact(critical) and least(critical)
        assert not least(warn)

    def test_field_equality(self) -> None:
        """`fields` compare typed fields, attrs (bare or dotted) and nested maps; true is not 1."""
        event = error_event(NOW, error_type="TimeoutError", context={"shard": "a"}, attrs={"cached": True, "n": 1})
        obs = Observation.from_event(event)
        assert Matcher(Filter(fields={"error_type": "TimeoutError", "context.shard": "a", "cached": True}))(obs)
        assert Matcher(Filter(fields={"attrs.n": 1}))(obs)
        assert not Matcher(Filter(fields={"attrs.n": True}))(obs)
        assert not Matcher(Filter(fields={"attrs.cached": 1}))(obs)
        assert not Matcher(Filter(fields={"error_type": "ValueError"}))(obs)

    def test_lag_is_seen_only_by_rules_naming_its_type(self) -> None:
        """The collector's own lag observations never count as "any event"."""
        lag = Observation.lag("events", 10, 100, NOW)
        assert not Matcher(Filter())(lag)
        assert not Matcher(Filter(min_severity="debug"))(lag)
        assert Matcher(Filter(type="collector.*"))(lag) and lag.get("ratio") == 0.1

    def test_lookup_of_absent_fields(self) -> None:
        """A field the event lacks reads as None, never raises."""
        obs = Observation.from_event(status(NOW))
        assert obs.get("ttft_ms") is None and obs.get("context.x") is None and obs.get("type") == "runtime.status"


class TestCollect:
    def test_counts_by_group_and_slice(self) -> None:
        """Matching events count into their time slice, per group."""
        rules = rules_of(rules=[{"kind": "rate", "name": "r", "filter": {"min_severity": "error"}, "group_by": ["service"], "window": "1m", "threshold": 1}])
        events = [error_event(NOW - 1, service="a"), error_event(NOW - 1, service="a"), error_event(NOW - 1, service="b"), status(NOW)]
        updates = collect(rules, [Observation.from_event(event) for event in events], NOW)
        (key, tally), = updates.counts.items()
        assert key[0] == "r"
        assert tally.groups == {'["a"]': [events[0].id[:16], events[1].id[:16]], '["b"]': [events[2].id[:16]]}

    def test_old_events_skipped_and_future_clamped(self) -> None:
        """An event older than the window cannot change it; one from the future counts as now."""
        rules = rules_of(rules=[{"kind": "rate", "name": "r", "window": "1m", "threshold": 1}])
        updates = collect(rules, [Observation.from_event(error_event(NOW - 61)), Observation.from_event(error_event(NOW + 3600))], NOW)
        (bucket_key, tally), = updates.counts.items()
        assert len(tally) == 1
        assert bucket_key[1] == window_buckets(60, NOW)[-1]

    def test_value_samples_skip_non_numbers(self) -> None:
        """Value rules keep finite numbers of the field, ignoring events without it."""
        rules = rules_of(rules=[{"kind": "value", "name": "v", "field": "ttft_ms", "aggregate": "max", "threshold": 1, "window": "1m"}])
        obs = [Observation.from_event(completed(NOW, ttft_ms=5.5)), Observation.from_event(status(NOW))]
        updates = collect(rules, obs, NOW)
        assert [[value for _, value in slot.items] for slot in updates.samples.values()] == [[5.5]]

    def test_new_rule_keeps_first_event_and_latest_time(self) -> None:
        """Per key, the first event of a batch describes the alert; the latest time is remembered."""
        rules = rules_of(rules=[{"kind": "new", "name": "n", "group_by": ["error_type"]}])
        first = error_event(NOW - 5, message="first", fingerprint="aaaaaaaa")
        later = error_event(NOW - 1, message="later", fingerprint="aaaaaaaa")
        updates = collect(rules, [Observation.from_event(first), Observation.from_event(later)], NOW)
        (sighting,) = updates.sightings.values()
        assert sighting.ts == NOW - 1
        assert "first" in sighting.first.summary
        assert sighting.first.labels == {"fingerprint": "aaaaaaaa", "service": "engine", "error_type": "ValueError", "severity": "warning"}

    def test_errors_without_fingerprint_key_on_type_and_message_template(self) -> None:
        """Without a fingerprint, errors group like the emitter groups them: type plus message template."""
        rules = rules_of(rules=[{"kind": "new", "name": "n"}])
        events = [error_event(NOW, message="timeout after 31s"), error_event(NOW, message="timeout after 2s"), error_event(NOW, message="disk full")]
        updates = collect(rules, [Observation.from_event(event) for event in events], NOW)
        assert len(updates.sightings) == 2


def _normalized(updates: Updates | None) -> dict[str, object]:
    if updates is None:
        updates = Updates()
    return {
        "counts": {key: (tally.expire_ms, tally.groups) for key, tally in updates.counts.items()},
        "samples": {key: (slot.expire_ms, slot.cap, slot.items) for key, slot in updates.samples.items()},
        "seen": updates.seen,
        "sightings": {key: (sighting.group, sighting.ts, sighting.first.fingerprint) for key, sighting in updates.sightings.items()},
    }


def _event(ts: float, type: str, severity: str, service: str = "engine", **attrs: object) -> CustomEvent:
    return CustomEvent(**envelope(ts, service, type=type, severity=severity, attrs=attrs))


class TestRouter:
    RULES = [
        {"kind": "rate", "name": "critical", "filter": {"severity": "critical"}, "window": "1m", "threshold": 1},
        {"kind": "rate", "name": "errors", "filter": {"min_severity": "error"}, "group_by": ["service"], "window": "1m", "threshold": 1},
        {"kind": "rate", "name": "jobs", "filter": {"type": "job.*", "service": "engine-?"}, "window": "10s", "threshold": 1},
        {"kind": "rate", "name": "eu", "filter": {"fields": {"region": "eu"}}, "group_by": ["attrs.region"], "window": "1m", "threshold": 1},
        {"kind": "value", "name": "ttft", "filter": {"type": "generation.*"}, "group_by": ["model"], "field": "ttft_ms", "aggregate": "p95", "threshold": 1, "window": "1m"},
        {"kind": "new", "name": "kinds", "filter": {"type": "error"}, "group_by": ["error_type"]},
        {"kind": "absence", "name": "quiet", "filter": {"type": "runtime.*", "min_severity": "info"}, "period": "1m"},
    ]

    def test_agrees_with_collect(self) -> None:
        """The routing table sends each event to exactly the rules `collect` would (same updates)."""
        rules = rules_of(rules=self.RULES)
        events = [
            completed(NOW - 1, ttft_ms=5, model="a"), completed(NOW - 2, ttft_ms=7, model="b"),
            completed(NOW + 30, ttft_ms=9, model="a"),  # from the future: counts as now
            error_event(NOW - 3), error_event(NOW - 4, severity="critical", error_type="OSError"),
            error_event(NOW - 90, severity="critical"),  # older than every window but new's
            status(NOW - 5), status(NOW - 6, service="other"),
            _event(NOW - 1, "job.created", "info", service="engine-1"), _event(NOW - 1, "job.created", "warn", service="engine-12"),
            _event(NOW - 1, "job.failed", "error", service="engine-2"), _event(NOW - 1, "cache.miss", "debug", region="eu"),
            _event(NOW - 1, "cache.miss", "debug", region="us"), _event(NOW - 1, "cache.miss", "critical", region="eu"),
        ]  # fmt: skip
        routed = Router(rules).collect(records(*events), NOW)
        expected = collect(rules, [Observation.from_event(event) for event in events], NOW)
        assert _normalized(routed) == _normalized(expected)
        assert set(name for name, _ in routed.counts) == {"critical", "errors", "jobs", "eu"}  # type: ignore[union-attr]

    def test_unmatched_batch_adds_nothing(self) -> None:
        """Events no rule accepts (info generations under the defaults) leave no updates at all."""
        rules = compile_rules(alerts_config())
        batch = records(*(completed(NOW, ttft_ms=1) for _ in range(10)), status(NOW))
        assert Router(rules).collect(batch, NOW) is None

    def test_many_types_stay_routed(self) -> None:
        """Past the table's bound on types (custom events are open-ended) routing starts over, still exact."""
        rules = rules_of(rules=[{"kind": "rate", "name": "t", "filter": {"type": "t.*"}, "window": "1m", "threshold": 1}])
        router = Router(rules)
        count = MAX_TYPES + 10
        batch = records(*(_event(NOW, f"t.x{n}", "info") for n in range(count)), _event(NOW, "u.x", "info"))
        updates = router.collect(batch, NOW)
        assert updates is not None and sum(len(tally) for tally in updates.counts.values()) == count


class TestAggregates:
    def test_percentile_nearest_rank(self) -> None:
        """p95 of 1..20 is 19 and p50 is 10 (nearest rank), as a textbook would say."""
        slices = [BucketStats(20, 210.0, 1.0, 20.0, [float(x) for x in range(1, 21)])]
        assert aggregate("p95", slices) == 19
        assert aggregate("p50", slices) == 10
        assert aggregate("avg", slices) == 10.5
        assert aggregate("count", slices) == 20

    def test_reservoir_samples_weigh_by_count(self) -> None:
        """A slice whose reservoir stands for many values outweighs a small one."""
        big = BucketStats(1000, 1000 * 5000.0, 5000.0, 5000.0, [5000.0] * 10)
        small = BucketStats(10, 10.0, 1.0, 1.0, [1.0] * 10)
        assert aggregate("p50", [big, small]) == 5000.0
        assert aggregate("min", [big, small]) == 1.0

    def test_empty_window_has_no_value(self) -> None:
        """No values, no aggregate: a `<` rule must not fire on silence."""
        assert aggregate("avg", []) is None
        assert aggregate("p99", [BucketStats(0, 0.0, math.inf, -math.inf, [])]) is None

    @given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200), st.sampled_from([0.5, 0.9, 0.95, 0.99]))
    def test_weighted_percentile_matches_nearest_rank(self, values: list[float], q: float) -> None:
        """With unit weights the percentile is the ceil(q*n)-th smallest value."""
        expected = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]
        assert weighted_percentile([(value, 1.0) for value in values], q) == expected


class TestEvaluate:
    def test_rate_sums_slices_and_compares(self) -> None:
        """A rate is the sum over the window's slices; `>` means strictly more."""
        (rule,) = rules_of(rules=[{"kind": "rate", "name": "r", "window": "1m", "threshold": 10}])
        measures = evaluate_rate(">", 10, [{"[]": 6}, {"[]": 4}])
        assert measures["[]"] == (10.0, False)
        measures = evaluate_rate(">", 10, [{"[]": 6}, {"[]": 5}])
        assert measures["[]"] == (11.0, True)

    def test_absence_measures_silence(self) -> None:
        """A group silent longer than the period breaches; the value is the silence."""
        measures = evaluate_absence(30, {'["quiet"]': NOW - 31, '["busy"]': NOW - 2}, NOW)
        assert measures['["quiet"]'].breached and measures['["quiet"]'].value == pytest.approx(31)
        assert not measures['["busy"]'].breached


def stored(rule: AlertRule, group: str, *, status: str = "firing", resolved: float | None = None) -> StoredAlert:
    draft = rule.draft(group, 11.0)
    record = AlertRecord(
        rule=draft.rule, kind="rate", status=status, labels=draft.labels, summary=draft.summary,  # type: ignore[arg-type]
        value=draft.value, threshold=draft.threshold, starts_at=iso_time(NOW - 100), ends_at=None, fingerprint=draft.fingerprint,
    )
    return StoredAlert(status=status, group=group, notified=NOW - 100, record=record, resolved=resolved)  # type: ignore[arg-type]


class TestPlan:
    def test_breached_groups_become_active_candidates(self) -> None:
        """Every breached group is sent as active, with the rule's timings."""
        config = alerts_config(defaults=False, rules=[{"kind": "rate", "name": "r", "group_by": ["service"], "window": "1m", "threshold": 1, "cooldown": "7s"}])
        rules = compile_rules(config)
        snapshot = Snapshot(measures={"r": evaluate_rate(">", 1, [{'["a"]': 5, '["b"]': 1}])}, alerts={})
        candidates, expired = plan(rules, snapshot, NOW, config)
        assert [(c.group, c.active, c.cooldown) for c in candidates] == [('["a"]', True, 7.0)]
        assert candidates[0].record.labels == {"service": "a", "severity": "warning"}
        assert expired == []

    def test_firing_alert_without_breach_is_sent_clear(self) -> None:
        """A firing alert whose group no longer breaches goes in as clear with its own labels."""
        config = alerts_config(defaults=False, rules=[{"kind": "rate", "name": "r", "group_by": ["service"], "window": "1m", "threshold": 10}])
        rules = compile_rules(config)
        alert = stored(rules[0], '["a"]')
        snapshot = Snapshot(measures={"r": {'["a"]': Measure(2.0, False)}}, alerts={alert.record.fingerprint: alert})
        (clear,), _ = plan(rules, snapshot, NOW, config)
        assert not clear.active and clear.fp == alert.record.fingerprint
        assert clear.record.value == 2.0 and clear.record.labels == alert.record.labels

    def test_alert_of_removed_rule_clears_with_section_timings(self) -> None:
        """Removing a rule resolves its alerts instead of leaving them firing forever."""
        old = rules_of(rules=[{"kind": "rate", "name": "gone", "window": "1m", "threshold": 1}])[0]
        alert = stored(old, "[]")
        config = alerts_config(defaults=False, resolve_after="9s")
        (clear,), _ = plan([], Snapshot({}, {alert.record.fingerprint: alert}), NOW, config)
        assert not clear.active and clear.resolve_after == 9.0

    def test_withheld_rules_neither_fire_nor_clear(self) -> None:
        """A rule still warming up produces no breach and leaves its firing alerts alone."""
        config = alerts_config(defaults=False, rules=[{"kind": "absence", "name": "a", "period": "30s"}])
        rules = compile_rules(config)
        alert = stored(rules[0], '["x"]')
        snapshot = Snapshot({"a": evaluate_absence(30, {'["y"]': NOW - 100}, NOW)}, {alert.record.fingerprint: alert})
        assert plan(rules, snapshot, NOW, config, withheld={"a"}) == ([], [])
        assert warming_up(rules, NOW - 30, NOW) == {"a"} and warming_up(rules, NOW - 31, NOW) == set()
        candidates, _ = plan(rules, snapshot, NOW, config)
        assert sorted((c.group, c.active) for c in candidates) == [('["x"]', False), ('["y"]', True)]

    def test_resolved_alert_expires_after_cooldown(self) -> None:
        """A resolved alert is forgotten only once its cooldown is over."""
        config = alerts_config(defaults=False, cooldown="60s", rules=[{"kind": "rate", "name": "r", "window": "1m", "threshold": 1}])
        rules = compile_rules(config)
        recent, old = stored(rules[0], "[]", status="resolved", resolved=NOW - 30), stored(rules[0], "[]", status="resolved", resolved=NOW - 61)
        assert plan(rules, Snapshot({}, {"x": recent}), NOW, config) == ([], [])
        _, expired = plan(rules, Snapshot({}, {"x": old}), NOW, config)
        assert [(item.fp, item.resolved) for item in expired] == [("x", NOW - 61)]


class TestRecords:
    def test_fingerprint_is_rule_plus_sorted_labels(self) -> None:
        """The dedup key ignores label order and changes with the rule or any label."""
        assert alert_fingerprint("r", {"a": "1", "b": "2"}) == alert_fingerprint("r", {"b": "2", "a": "1"})
        assert alert_fingerprint("r", {"a": "1"}) != alert_fingerprint("s", {"a": "1"})
        assert alert_fingerprint("r", {"a": "1"}) != alert_fingerprint("r", {"a": "2"})

    def test_summary_template_and_fallback(self) -> None:
        """A summary template sees labels, value and threshold; one that cannot render falls back."""
        (rule,) = rules_of(rules=[{"kind": "value", "name": "v", "field": "ttft_ms", "aggregate": "p95", "threshold": 2000, "window": "5m", "group_by": ["model"], "summary": "TTFT p95 {value:.0f}ms on {model} (limit {threshold:g})"}])
        assert rule.draft('["tiny"]', 2345.4).summary == "TTFT p95 2345ms on tiny (limit 2000)"
        assert rule.describe('["tiny"]', {}, None, firing=False) == "no ttft_ms values in 5m for model=tiny"

    def test_event_severity_label_does_not_shadow_alert_severity(self) -> None:
        """Grouping by the event's severity labels it `event_severity`; `severity` stays the alert's."""
        (rule,) = rules_of(rules=[{"kind": "rate", "name": "r", "window": "1m", "threshold": 1, "group_by": ["severity", "attrs.region"], "severity": "critical"}])
        assert rule.labels('["error","eu"]') == {"event_severity": "error", "region": "eu", "severity": "critical"}

    def test_times(self) -> None:
        """RFC 3339 with milliseconds in UTC; short human durations in summaries."""
        assert iso_time(0.5) == "1970-01-01T00:00:00.500Z"
        assert human_duration(133) == "2m13s" and human_duration(2.25) == "2.2s"


def _record(**overrides: object) -> AlertRecord:
    fields: dict[str, object] = dict(
        rule="service-errors", kind="rate", status="firing", labels={"service": "api", "severity": "warning", "empty": ""},
        summary="6 events", value=6.0, threshold=5.0, starts_at="2024-05-01T12:00:00.000Z", ends_at=None, fingerprint="f" * 16,
    )
    fields.update(overrides)
    return AlertRecord(**fields)  # type: ignore[arg-type]


class TestPayloads:
    def test_alertmanager_firing(self) -> None:
        """A firing alert: alertname plus labels, annotations, startsAt and an endsAt ahead by the hold."""
        (alert,) = alertmanager_payload([_record()], now=0.0, hold=lambda rule: 7200.0, generator_url="http://grafana/x")
        assert alert["labels"] == {"alertname": "service-errors", "service": "api", "severity": "warning"}
        assert alert["annotations"] == {"summary": "6 events", "kind": "rate", "value": "6", "threshold": "5"}
        assert alert["startsAt"] == "2024-05-01T12:00:00.000Z"
        assert alert["endsAt"] == "1970-01-01T02:00:00.000Z"
        assert alert["generatorURL"] == "http://grafana/x"

    def test_alertmanager_resolved_keeps_its_end(self) -> None:
        """A resolved alert carries its own endsAt, which tells Alertmanager it is over."""
        (alert,) = alertmanager_payload([_record(status="resolved", ends_at="2024-05-01T12:05:00.000Z")], now=0.0, hold=lambda rule: 1.0)
        assert alert["endsAt"] == "2024-05-01T12:05:00.000Z"
        assert alert["generatorURL"] == "urn:mlx-telemetry:alert:service-errors"

    def test_alert_event_is_a_valid_event(self) -> None:
        """The OTLP form of an alert passes the wire contract, with severity by status and alert severity."""
        firing = validate(alert_event(_record(labels={"severity": "critical"}), host="h", pid=1, now=NOW))
        resolved = validate(alert_event(_record(status="resolved", ends_at="x"), host="h", pid=1, now=NOW))
        assert (firing.type, firing.severity) == ("alert.firing", "critical")
        assert (resolved.type, resolved.severity) == ("alert.resolved", "info")
        assert firing.attrs["alert.rule"] == "service-errors" and firing.attrs["alert.value"] == 6.0
        assert json.loads(json.dumps(firing.attrs))["alert.label.severity"] == "critical"
