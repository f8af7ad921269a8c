"""Token events of a generation: later tokens are built from the first one's validated event.

What a reader sees must not depend on which path built a token: every field of
every token equals what the full path builds, ids stay unique, privacy and the
contract hold for each token, and a fork starts from the child's own pid.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from emitters import Emitter, decode_live
from emitters.streams import stream_names
from tests.support.emitter_streams import host_events

NAMES = stream_names("telemetry")
_PER_TOKEN = {"id", "ts", "token", "index", "logprob"}


def _shared_fields(event: Any) -> dict[str, Any]:
    return {name: getattr(event, name) for name in event.__struct_fields__ if name not in _PER_TOKEN}


class TestTokensOfOneGeneration:
    def test_every_token_carries_the_generation_fields_and_its_own_values(self, redis_url: str, redis_client: redis.Redis) -> None:
        """Scope ids, a hashed user id, model and request id on every token; token, index,
        logprob and a fresh id per token; interleaved generations keep their own ids."""
        with Emitter("engine-1", redis_url, token_events="stream", hash_secret="s") as em:
            with em.context("gen-a", request_id="ra", user_id="alice") as scope_a:
                for index in range(5):
                    em.token_generated("tiny", "ra", f"a{index}", index, logprob=-0.5 * index)
                    with em.context("gen-b", request_id="rb") as scope_b:
                        em.token_generated("tiny", "rb", f"b{index}", index)
            assert em.flush(10)
            hashed = em.keyed_hash("alice")
        tokens = [e for e in host_events(redis_client, NAMES.events) if e.type == "token.generated"]
        a = [e for e in tokens if e.request_id == "ra"]
        b = [e for e in tokens if e.request_id == "rb"]
        assert [(e.token, e.index, e.logprob) for e in a] == [(f"a{i}", i, -0.5 * i) for i in range(5)]
        assert [(e.token, e.index, e.logprob) for e in b] == [(f"b{i}", i, None) for i in range(5)]
        assert all(_shared_fields(e) == _shared_fields(a[0]) for e in a)
        assert a[0].user_id == hashed and a[0].trace_id == scope_a["trace_id"] and a[0].span_id == scope_a["span_id"]
        # Each gen-b scope is a new span: tokens never take another scope's ids.
        assert len({e.span_id for e in b}) == 5 and all(e.parent_span_id == scope_a["span_id"] for e in b)
        assert scope_b["span_id"] == b[-1].span_id
        assert len({e.id for e in tokens}) == 10
        assert all(e.ts <= later.ts for e, later in zip(a, a[1:]))

    def test_an_invalid_token_after_valid_ones_is_dropped_naming_its_field(self, redis_url: str, redis_client: redis.Redis) -> None:
        """The contract holds for every token, not only the first of a generation."""
        pubsub = redis_client.pubsub()
        pubsub.subscribe(NAMES.live)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        with Emitter("engine-1", redis_url, hash_secret="s") as em:
            with em.context("gen", request_id="r1"):
                em.token_generated("tiny", "r1", "ok", 0)
                em.token_generated("tiny", "r1", "bad", -1)
                assert em.flush(10) and "$.index" in em.stats()["last_invalid"]
                em.token_generated("tiny", "r1", "x" * 1025, 2)
                assert em.flush(10) and "$.token" in em.stats()["last_invalid"]
                em.token_generated("tiny", "r1", "nan", 3, logprob=float("nan"))
                assert em.flush(10) and "$.logprob" in em.stats()["last_invalid"]
                em.token_generated("tiny", "r1", "bool", True)
                em.token_generated("tiny", "r1", "ok", 5, extra="attr")
                em.token_generated("tiny", "r1", "ok", 6)
            assert em.flush(10)
            stats = em.stats()
        live = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            live.extend(decode_live(message["data"]))
        pubsub.close()
        assert stats["dropped"]["invalid"] == 4
        assert [(e.token, e.index) for e in live if e.type == "token.generated"] == [("ok", 0), ("ok", 5), ("ok", 6)]
        assert next(e for e in live if e.index == 5).attrs == {"extra": "attr"}

    def test_a_forked_child_sends_its_own_pid_in_a_generation_the_parent_began(
        self, redis_url: str, redis_client: redis.Redis
    ) -> None:
        """The child continues the scope it inherited, but its tokens say who sent them."""
        em = Emitter("engine-1", redis_url, token_events="stream", hash_secret="s")
        with em.context("gen", request_id="r1"):
            em.token_generated("tiny", "r1", "parent", 0)
            assert em.flush(10)
            pid = os.fork()
            if pid == 0:  # child
                code = 1
                try:
                    em.token_generated("tiny", "r1", "child", 1)
                    code = 0 if em.flush(10) else 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
        em.close(5)
        assert os.waitstatus_to_exitcode(status) == 0
        tokens = {e.token: e for e in host_events(redis_client, NAMES.events) if e.type == "token.generated"}
        assert tokens["parent"].pid == os.getpid() and tokens["child"].pid == pid
        assert tokens["child"].trace_id == tokens["parent"].trace_id
