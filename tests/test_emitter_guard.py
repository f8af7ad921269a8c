"""No call can raise into the host or leak a user id; every loss is counted once."""

from __future__ import annotations

import inspect
import math
import time
import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emitters
from collector.embedded import RedisProcess
from emitters import Emitter, ValidationError, decode_live
from emitters.streams import PAYLOAD_FIELD, stream_names
from tests.support.emitter_streams import host_events, read_stream, wait_for

NAMES = stream_names("telemetry")
RAW_ID = "alice@example.com"


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    __str__ = __repr__


def _recursive_list() -> list:
    items: list = [1]
    items.append(items)
    return items


def _recursive_dict() -> dict:
    mapping: dict = {"a": 1}
    mapping["self"] = mapping
    return mapping


ODD_VALUES = st.sampled_from(
    [None, _Unprintable(), object(), _recursive_list(), _recursive_dict(), "x" * 300_000, 2**100, -(2**70),
     math.nan, math.inf, b"\xff\x00", RuntimeError("boom"), ValueError(), {1: 2}, {"k": [1, {"n": None}]},
     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "f" * 32, "job.created", "generation.started",
     "token.generated", "span.ended", "client.report", "error", True, -1, 0, 1.5]  # fmt: skip
)
VALUES = st.one_of(
    ODD_VALUES,
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.recursive(st.none() | st.integers() | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6),
)
FIELD_NAMES = st.sampled_from(
    ["attrs", "user_id", "request_id", "trace_id", "span_id", "parent_span_id", "severity", "ts", "prompt",
     "model", "id", "service", "pid", "type", "context", "metadata", "error_type", "code", "name", "traceparent",
     "status", "dropped", "timeout", "tokens", "ünïcödé", "x" * 200]  # fmt: skip
) | st.text(min_size=1, max_size=12)

EVENT_METHODS = ("event", "model_loaded", "model_unloaded", "model_invalidated", "generation_started",
                 "token_generated", "generation_completed", "runtime_status", "error")  # fmt: skip
OTHER_METHODS = ("context", "correlation", "flush", "stats")
CALLS = st.tuples(
    st.sampled_from(EVENT_METHODS + OTHER_METHODS),
    st.lists(VALUES, max_size=6),
    st.dictionaries(FIELD_NAMES, VALUES, max_size=5),
)


def _binds(method: Any, args: list, kwargs: dict) -> bool:
    try:
        inspect.signature(method).bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def _call(emitter: Emitter, name: str, args: list, kwargs: dict) -> int:
    """Make the call as a host would; the number of events it should account for."""
    if name == "correlation":  # module level; its span ends through the latest emitter, this one
        with emitters.correlation(*args, **kwargs):
            emitter.event("inside.scope")
        return 2
    method = getattr(emitter, name)
    if name in ("flush", "stats"):
        method(*args, **kwargs)
        return 0
    if name == "context":
        with method(*args, **kwargs):
            emitter.event("inside.scope")
        return 1 + _binds(method, args, kwargs)
    method(*args, **kwargs)
    return 1


class TestNoCallRaises:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(calls=st.lists(CALLS, min_size=1, max_size=6))
    def test_any_call_returns_and_every_event_is_sent_or_counted_once(self, redis_url: str, calls: list) -> None:
        """Whatever the methods and arguments, nothing raises, each call is quick, and after close
        every event the calls made was either delivered or counted under exactly one reason."""
        prefix = f"t{uuid.uuid4().hex[:12]}"
        emitter = Emitter("engine-1", redis_url, stream_prefix=prefix, token_events="stream", hash_secret="s")
        expected = 0
        for name, args, kwargs in calls:
            started = time.monotonic()
            expected += _call(emitter, name, args, kwargs)
            assert time.monotonic() - started < 2.0, name
        emitter.close(10)
        stats = emitter.stats()
        assert stats["sent"] + sum(stats["dropped"].values()) == expected
        assert stats["dropped"]["redis_unavailable"] == stats["dropped"]["buffer_full"] == 0
        client = redis.Redis.from_url(redis_url)
        names = stream_names(prefix)
        delivered = host_events(client, names.events) + host_events(client, names.errors)
        spans = [e for e in read_stream(client, names.events) if e.type == "span.ended"]
        assert len(delivered) + len(spans) == stats["sent"]
        client.close()

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(call=CALLS)
    def test_strict_mode_raises_only_validation_errors(self, redis_url: str, call: tuple) -> None:
        """strict=True turns every rejected call into ValidationError, never another exception."""
        emitter = Emitter("engine-1", redis_url, strict=True, token_events="stream", hash_secret="s")
        try:
            _call(emitter, *call)
        except ValidationError as exc:
            assert str(exc) and "regex" not in str(exc)
        finally:
            emitter.close(5)


class TestStrictMessages:
    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (lambda em: em.event("job.created", trace_id="xyz"), r"Expected `str` of 32 lowercase hex digits - at `\$.trace_id`"),
            (lambda em: em.event("Not A Type"), r"dotted lowercase entity.action form, e.g. job.created - at `\$.type`"),
            (lambda em: em.event("job.created", attrs={"n": 2**70}), r"between -2\*\*63 and 2\*\*64-1 - at `\$.attrs.n`"),
            (lambda em: em.error("x" * 8000, error_type="Big"), r"max_event_bytes=4096"),
            (lambda em: em.generation_started("m", "r1", prompt=object()), r"token ids\) - at `\$.prompt`"),
            (lambda em: em.model_loaded("m"), r"missing required field `model_path`"),
            (lambda em: em.model_loaded("m", "/p", model="n"), r"both by position and by keyword - at `\$.model`"),
            (lambda em: em.model_unloaded("m", "extra"), r"at most 1 positional arguments, got 2"),
            (lambda em: em.event("job.created", attrs=5), r"Expected `object`, got `int` - at `\$.attrs`"),
        ],
    )
    def test_strict_mode_names_the_field_and_rule_in_words(self, redis_url: str, call: Any, message: str) -> None:
        """Each rejected call raises ValidationError with the field path and the rule, never a regex."""
        with Emitter("engine-1", redis_url, strict=True, max_event_bytes=4096, hash_secret="s") as em:
            with pytest.raises(ValidationError, match=message):
                call(em)

    def test_non_strict_logs_the_first_invalid_event_of_each_kind(self, redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
        """The warning names field and rule, once per kind; stats() keeps the latest."""
        with Emitter("engine-1", redis_url, hash_secret="s") as em:
            for _ in range(3):
                em.generation_completed("tiny", "r1", -1, 5, 10.0)
            assert em.flush(10)
            assert em.stats()["last_invalid"] == "Expected `int` >= 0 - at `$.prompt_tokens`"
        warnings = [r.getMessage() for r in caplog.records if "prompt_tokens" in r.getMessage()]
        assert len(warnings) <= 1  # once per process: an earlier test may have logged it


class TestConstruction:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"redis_url": "localhost:6379"}, r"redis_url: 'localhost:6379' has no redis://.*write it as redis://localhost:6379"),
            ({"redis_url": "redis://:hunter2@localhost:99999/0"}, r"redis_url: Port out of range.*'redis://:\*\*\*@"),
            ({"batch_size": 600, "buffer_size": 500}, r"batch_size: expected at most buffer_size \(500\), got 600"),
            ({"buffer_size": True}, r"buffer_size: expected an int >= 1"),
            ({"flush_interval": math.nan}, r"flush_interval: expected a finite number of seconds > 0"),
            ({"redis_options": {"no_such_option": 1}}, r"redis_options: redis-py rejected them"),
        ],
    )
    def test_bad_settings_raise_at_once_naming_the_setting(self, kwargs: dict, message: str) -> None:
        """Settings that would fail later on the worker fail at construction, naming setting and fix."""
        kwargs.setdefault("redis_url", "redis://localhost:6379/0")
        with pytest.raises(ValueError, match=message) as caught:
            Emitter("engine-1", hash_secret="s", **kwargs)
        assert "hunter2" not in str(caught.value)


class TestPrivacy:
    def test_no_entry_carries_a_raw_user_id_whichever_way_it_was_given(
        self, redis_url: str, redis_client: redis.Redis
    ) -> None:
        """Every way of giving a user id: decode every stream entry and live message, find only hashes."""
        pubsub = redis_client.pubsub()
        pubsub.subscribe(NAMES.live)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        em = Emitter("engine-1", redis_url, hash_secret="s", token_events="sample", token_sample_rate=2)
        hashed = em.keyed_hash(RAW_ID)
        em.event("user.login", user_id=RAW_ID)
        em.event("user.login", attrs={"user_id": RAW_ID})
        em.model_loaded("tiny", "/m", metadata={"user_id": RAW_ID})
        em.generation_started("tiny", "r1", user_id=RAW_ID, prompt=RAW_ID)
        em.error(KeyError("x"), user_id=RAW_ID)
        em.error("failed", attrs={"user_id": RAW_ID})
        with em.context("ctx", user_id=RAW_ID):
            em.event("user.action")
            for index in range(4):
                em.token_generated("tiny", "r1", "t", index)
        with emitters.correlation("corr", user_id=RAW_ID):
            em.event("user.action")
        em.runtime_status("ready", 1, user_id=RAW_ID)
        assert em.flush(10)
        em.close()
        raw = [fields[PAYLOAD_FIELD.encode()] for stream in (NAMES.events, NAMES.errors) for _, fields in redis_client.xrange(stream)]
        live = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            raw.append(message["data"])
            live.extend(decode_live(message["data"]))
        pubsub.close()
        assert live and all(RAW_ID.encode() not in payload.lower() for payload in raw)
        events = read_stream(redis_client, NAMES.events) + read_stream(redis_client, NAMES.errors) + live
        carried = [e for e in events if e.user_id or "user_id" in e.attrs or "user_id" in (getattr(e, "metadata", None) or {})]
        assert len(carried) >= 13
        for event in carried:
            for value in (event.user_id, event.attrs.get("user_id"), (getattr(event, "metadata", None) or {}).get("user_id")):
                assert value in (None, hashed)


class TestFaults:
    def test_wrong_url_then_down_then_up_then_worker_failure(
        self, redis_process: RedisProcess, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The host never sees an exception; stats() explains each state; events flow after recovery."""
        nowhere = Emitter("engine-1", "redis://127.0.0.1:1/0", socket_timeout=0.3, max_backoff=0.1, hash_secret="s")
        nowhere.event("lost.tick")
        stats = wait_for(lambda: (s := nowhere.stats())["connected"] is False and s, 10)
        assert "Connection refused" in stats["last_error"] and stats["buffered"] == 1
        nowhere.close(0.2)
        assert nowhere.stats()["dropped"]["redis_unavailable"] == 1

        client = redis_process.client()
        em = Emitter("engine-1", redis_process.url, socket_timeout=0.5, max_backoff=0.1, hash_secret="s")
        redis_process.stop()
        em.event("tick.down")
        stats = wait_for(lambda: (s := em.stats())["connected"] is False and s, 10)
        assert stats["last_error"].startswith("ConnectionError") and stats["buffered"] == 1
        redis_process.start()
        assert em.flush(30) and em.stats()["connected"] is True

        shipper = em._shipper
        real_ship = shipper.ship
        failures = iter([RuntimeError("injected worker fault")])

        def ship_failing_once(*args: Any) -> None:
            for failure in failures:
                raise failure
            real_ship(*args)

        monkeypatch.setattr(shipper, "ship", ship_failing_once)
        em.event("tick.after")
        assert em.flush(30)
        stats = em.stats()
        assert stats["worker_restarts"] == 1 and "injected worker fault" in stats["last_error"]
        assert [e.type for e in host_events(client, NAMES.events)] == ["tick.down", "tick.after"]
        em.close()

    def test_refused_writes_are_counted_as_redis_refused(self, redis_process: RedisProcess) -> None:
        """Redis answering OOM: after a few tries the batch is counted as redis_refused, not unavailable."""
        client = redis_process.client()
        client.set("filler", "x" * 100_000)
        client.config_set("maxmemory", "1")
        em = Emitter("engine-1", redis_process.url, max_backoff=0.05, hash_secret="s")
        for _ in range(7):
            em.event("oom.tick")
        stats = wait_for(lambda: (s := em.stats())["dropped"]["redis_refused"] == 7 and s, 20)
        assert stats and "OutOfMemoryError" in stats["last_error"] and stats["dropped"]["redis_unavailable"] == 0
        client.config_set("maxmemory", "0")
        em.event("after.oom")
        assert em.flush(10)
        em.close()
