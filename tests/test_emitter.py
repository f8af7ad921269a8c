"""The emitter against a real redis-server: routing, faults, fork, exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
import redis

from collector.embedded import RedisProcess
from emitters import Emitter, ValidationError, decode_live
from emitters.streams import stream_names
from tests.support.emitter_streams import host_events as read_stream

NAMES = stream_names("telemetry")


@pytest.fixture
def emitter(redis_url: str):
    emitter = Emitter("engine-1", redis_url, hash_secret="test-secret", strict=False)
    yield emitter
    emitter.close(2)


class TestRouting:
    def test_typed_helpers_land_on_the_events_stream(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """Each typed helper produces one event of its type, typed fields at the top, extras in attrs."""
        emitter.model_loaded("tiny", "/m/tiny", load_ms=3.5, parameters=1234, quantization=4, shard="a")
        emitter.model_unloaded("tiny", reason="idle")
        emitter.model_invalidated("tiny", "weights changed")
        emitter.generation_started("tiny", "r1", prompt_tokens=3, max_tokens=8)
        emitter.generation_completed("tiny", "r1", 3, 8, 40.0, ttft_ms=5.0, finish_reason="length")
        emitter.runtime_status("ready", 1, active_tasks=0)
        emitter.event("job.created", job_id="j-1", queue="default")
        assert emitter.flush(10)
        events = read_stream(redis_client, NAMES.events)
        assert [e.type for e in events] == [
            "model.loaded", "model.unloaded", "model.invalidated", "generation.started",
            "generation.completed", "runtime.status", "job.created",
        ]  # fmt: skip
        loaded, job = events[0], events[-1]
        assert loaded.parameters == 1234 and loaded.attrs == {"shard": "a"}
        assert job.job_id == "j-1" and job.attrs == {"queue": "default"}
        assert all(e.service == "engine-1" and e.pid == os.getpid() for e in events)
        assert redis_client.xlen(NAMES.errors) == 0

    def test_errors_go_to_the_error_stream_with_fingerprint_and_stack(
        self, emitter: Emitter, redis_client: redis.Redis
    ) -> None:
        """Exceptions, error messages and severity>=error events go to the error stream."""

        def fail(n: int) -> None:
            raise KeyError(f"missing shard {n}")

        for n in (1, 2):
            try:
                fail(n)
            except KeyError as exc:
                emitter.error(exc, model="tiny", shard=n)
        emitter.error("disk quota exceeded on /var/data", severity="critical", error_type="QuotaError")
        emitter.event("job.failed", severity="error", job_id="j-2")
        assert emitter.flush(10)
        errors = read_stream(redis_client, NAMES.errors)
        assert [e.type for e in errors] == ["error", "error", "error", "job.failed"]
        first, second, quota = errors[:3]
        assert first.error_type == "KeyError" and "fail" in first.stack and first.model == "tiny"
        assert first.context == {"shard": 1}
        assert first.fingerprint == second.fingerprint  # same code path, different message
        assert quota.severity == "critical" and quota.error_type == "QuotaError" and quota.stack is None
        assert quota.fingerprint != first.fingerprint
        assert read_stream(redis_client, NAMES.events) == []

    @pytest.mark.parametrize(
        ("mode", "to_stream", "to_live"),
        [("live", 0, 20), ("stream", 20, 0), ("sample", 4, 16), ("off", 0, 0)],
    )
    def test_token_events_follow_the_mode(
        self, redis_server: RedisProcess, redis_client: redis.Redis, mode: str, to_stream: int, to_live: int
    ) -> None:
        """token_events decides between the live channel, the stream, 1-in-N sampling, or nothing."""
        pubsub = redis_client.pubsub()
        pubsub.subscribe(NAMES.live)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        with Emitter("engine-1", redis_server.url, token_events=mode, token_sample_rate=5, hash_secret="s") as em:
            for index in range(20):
                em.token_generated("tiny", "r1", f"t{index}", index)
            assert em.flush(10)
        live = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            live.extend(decode_live(message["data"]))
        pubsub.close()
        assert len(read_stream(redis_client, NAMES.events)) == to_stream
        assert len(live) == to_live
        assert all(e.type == "token.generated" for e in live)


class TestPrivacyAndCorrelation:
    def test_user_id_is_hashed_before_leaving_the_process(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """The raw user id never reaches Redis; the same id hashes the same way."""
        emitter.event("user.login", user_id="alice@example.com")
        with emitter.context(user_id="alice@example.com"):
            emitter.event("user.action")
        assert emitter.flush(10)
        raw = b"".join(fields[b"event"] for _, fields in redis_client.xrange(NAMES.events))
        assert b"alice" not in raw
        login, action = read_stream(redis_client, NAMES.events)
        assert login.user_id == action.user_id == emitter.keyed_hash("alice@example.com")

    def test_prompt_text_is_not_sent_unless_configured(self, redis_url: str, redis_client: redis.Redis) -> None:
        """By default only the prompt length and a keyed hash travel; capture_prompts sends the text."""
        for capture in (False, True):
            with Emitter("engine-1", redis_url, capture_prompts=capture, hash_secret="s") as em:
                em.generation_started("tiny", "r1", prompt="secret plans")
                assert em.flush(10)
        hidden, shown = read_stream(redis_client, NAMES.events)
        assert hidden.prompt is None and hidden.prompt_chars == 12 and len(hidden.prompt_hash) == 32
        assert shown.prompt == "secret plans"

    def test_context_carries_ids_and_nests_spans(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """Events in a scope share its trace and ids; a nested scope is a child span; outside, no trace."""
        with emitter.context(request_id="req-9", job_id="job-3") as outer:
            emitter.event("request.received")
            with emitter.context(worker_id="w-1") as inner:
                emitter.event("request.dispatched")
        emitter.event("unrelated.thing")
        emitter.event("unrelated.other")
        assert emitter.flush(10)
        received, dispatched, lone1, lone2 = read_stream(redis_client, NAMES.events)
        assert received.trace_id == dispatched.trace_id == outer["trace_id"]
        assert received.span_id == outer["span_id"] and dispatched.span_id == inner["span_id"]
        assert dispatched.parent_span_id == outer["span_id"]
        assert (dispatched.request_id, dispatched.job_id, dispatched.worker_id) == ("req-9", "job-3", "w-1")
        assert received.worker_id is None
        assert lone1.trace_id is lone2.trace_id is None and lone1.span_id is None and lone1.request_id is None

    def test_explicit_trace_id_is_adopted(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """A trace id propagated from elsewhere is used as given; a malformed one starts a new trace."""
        with emitter.context(trace_id="f" * 32):
            emitter.event("request.received")
        with emitter.context(trace_id="not-a-trace-id"):
            emitter.event("request.received")
        assert emitter.flush(10)
        good, replaced = read_stream(redis_client, NAMES.events)
        assert good.trace_id == "f" * 32
        assert len(replaced.trace_id) == 32 and replaced.trace_id != "not-a-trace-id"


class TestNeverCrashTheHost:
    def test_invalid_events_are_counted_not_raised(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """Bad input is counted as invalid and dropped; valid events around it still ship."""
        emitter.generation_completed("tiny", "r1", -1, 5, 10.0)  # negative tokens
        emitter.model_loaded("", "/p")  # empty model
        emitter.runtime_status("sleeping", 1)  # bad enum
        emitter.event("job.created", payload=object())  # not a scalar attribute
        emitter.event("Not A Type")
        emitter.event("job.created", trace_id="xyz")  # malformed propagated id
        emitter.event("job.created", job_id="ok")
        assert emitter.flush(10)
        stats = emitter.stats()
        assert stats["dropped"]["invalid"] == 6
        assert stats["sent"] == 1
        assert [e.job_id for e in read_stream(redis_client, NAMES.events)] == ["ok"]

    def test_strict_mode_raises_with_the_field(self, redis_url: str) -> None:
        """strict=True raises at the call site with the field path and rule."""
        with Emitter("engine-1", redis_url, strict=True, hash_secret="s") as em:
            with pytest.raises(ValidationError, match=r">= 0 - at `\$.generation_tokens`"):
                em.generation_completed("tiny", "r1", 1, -5, 10.0)
            with pytest.raises(ValidationError, match=r"\$.trace_id"):
                em.event("job.created", trace_id="not-hex")
        with pytest.raises(ValueError, match="service: expected a name of 1 to 100 letters"):
            Emitter("bad name!", redis_url, hash_secret="s")

    def test_oversized_events_are_dropped_as_too_large(self, redis_url: str, redis_client: redis.Redis) -> None:
        """An event over max_event_bytes is counted as too_large; the limit is on the encoded size."""
        with Emitter("engine-1", redis_url, max_event_bytes=2048, hash_secret="s") as em:
            em.error("x" * 4000, error_type="Big")
            em.error("small", error_type="Small")
            assert em.flush(10)
            assert em.stats()["dropped"]["too_large"] == 1
        assert [e.error_type for e in read_stream(redis_client, NAMES.errors)] == ["Small"]

    def test_emit_after_close_is_counted(self, redis_url: str) -> None:
        """Events emitted after close are counted as closed, not silently lost."""
        em = Emitter("engine-1", redis_url, hash_secret="s")
        em.close()
        em.event("job.created")
        assert em.stats()["dropped"]["closed"] == 1


class TestOutages:
    def test_hung_redis_bounds_the_buffer_and_delivers_exactly_once(self, redis_process: RedisProcess) -> None:
        """100,000 emits while Redis is SIGSTOPped: bounded buffer, exact drop counts, then every
        buffered event arrives exactly once after SIGCONT (the worker's timed-out batch is retried
        with its token, so a batch Redis applied late is not applied twice)."""
        client = redis_process.client()
        em = Emitter(
            "engine-1", redis_process.url, buffer_size=5_000, batch_size=500,
            socket_timeout=0.5, max_backoff=0.2, events_maxlen=100_000, hash_secret="s",
        )  # fmt: skip
        em.event("warmup.done")
        assert em.flush(10)
        redis_process.pause()
        try:
            for index in range(100_000):
                em.event("load.tick", attrs={"n": index})
            paused = em.stats()
        finally:
            redis_process.resume()
        accepted = 100_000 - paused["dropped"]["buffer_full"]
        assert paused["buffered"] <= 5_000 + 2 * 500  # the buffer, plus one batch in flight and one staged
        assert accepted == paused["buffered"] + paused["sent"] - 1
        assert paused["dropped"]["invalid"] == paused["dropped"]["too_large"] == 0
        assert em.flush(60)
        final = em.stats()
        assert final["sent"] == accepted + 1 and final["buffered"] == 0
        ticks = [e.attrs["n"] for e in read_stream(client, NAMES.events) if e.type == "load.tick"]
        assert len(ticks) == len(set(ticks)) == accepted
        em.close()

    def test_redis_restart_mid_stream_recovers_without_host_help(self, redis_process: RedisProcess) -> None:
        """Redis stopped and started again: buffered events ship once it is back."""
        client = redis_process.client()
        em = Emitter("engine-1", redis_process.url, socket_timeout=1, max_backoff=0.2, hash_secret="s")
        for index in range(100):
            em.event("load.tick", attrs={"n": index})
        assert em.flush(10)
        redis_process.stop()
        for index in range(100, 300):
            em.event("load.tick", attrs={"n": index})
        assert not em.flush(0.5)
        assert em.stats()["connected"] is False
        redis_process.start()
        assert em.flush(30)
        ticks = sorted(e.attrs["n"] for e in read_stream(client, NAMES.events))
        assert ticks == list(range(300))
        assert em.stats()["connected"] is True
        em.close()

    def test_close_counts_what_redis_never_took(self, redis_process: RedisProcess) -> None:
        """Closing while Redis is down loses the buffer, and says so as redis_unavailable."""
        em = Emitter("engine-1", redis_process.url, socket_timeout=0.5, max_backoff=0.2, hash_secret="s")
        redis_process.kill()
        for _ in range(50):
            em.event("load.tick")
        em.close(timeout=0.5)
        stats = em.stats()
        assert stats["dropped"]["redis_unavailable"] == 50 and stats["buffered"] == 0

    def test_concurrent_emitters_lose_nothing(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """Eight host threads emitting at once: every event arrives exactly once."""

        def work(thread: int) -> None:
            for index in range(500):
                emitter.event("load.tick", attrs={"k": f"{thread}-{index}"})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert emitter.flush(30)
        keys = [e.attrs["k"] for e in read_stream(redis_client, NAMES.events)]
        assert len(keys) == len(set(keys)) == 4000


class TestProcessLifecycle:
    def test_forked_child_can_emit_and_parent_keeps_emitting(self, emitter: Emitter, redis_client: redis.Redis) -> None:
        """After fork the child gets its own buffer and worker; neither duplicates the other's events."""
        emitter.event("before.fork")
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                for _ in range(10):
                    emitter.event("child.tick")
                code = 0 if emitter.flush(10) and emitter.stats()["sent"] == 10 else 1
            finally:
                os._exit(code)
        for _ in range(10):
            emitter.event("parent.tick")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert emitter.flush(10)
        events = read_stream(redis_client, NAMES.events)
        by_type: dict[str, set[int]] = {}
        for event in events:
            by_type.setdefault(event.type, set()).add(event.pid)
        assert by_type["child.tick"] == {pid}
        assert by_type["parent.tick"] == {os.getpid()}
        assert sum(1 for e in events if e.type == "before.fork") == 1
        assert len(events) == 21

    def test_flushes_at_interpreter_exit(self, redis_url: str, redis_client: redis.Redis) -> None:
        """A script that never calls close still delivers its events at exit."""
        script = textwrap.dedent(
            f"""
            from emitters import Emitter
            em = Emitter("script", {redis_url!r}, flush_interval=5.0, hash_secret="s")
            for i in range(250):
                em.event("script.tick", attrs={{"n": i}})
            """
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
        assert len(read_stream(redis_client, NAMES.events)) == 250

    def test_import_stays_light(self) -> None:
        """`import emitters` pulls in no structlog, click, OpenTelemetry, mlx or collector module."""
        probe = (
            "import sys, emitters; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('structlog', 'click', 'opentelemetry', 'collector', 'mlx', 'mlx_lm')]; "
            "print(','.join(heavy))"
        )
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == ""
