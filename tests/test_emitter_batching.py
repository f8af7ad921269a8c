"""When events leave the process without flush(): an idle worker sleeps until an event
arrives, and a generation's tokens leave together with the events that end it."""

from __future__ import annotations

import time

import redis

from emitters import Emitter, decode_live
from emitters.streams import stream_names
from tests.support.emitter_streams import host_events, read_stream, wait_for

NAMES = stream_names("telemetry")


class TestShippingWithoutFlush:
    def test_an_event_after_an_idle_spell_ships_on_its_own(self, redis_url: str, redis_client: redis.Redis) -> None:
        """The worker sleeps while nothing is buffered; the next event wakes it and ships
        within the flush interval, not at the next poll or at close."""
        with Emitter("engine-1", redis_url, hash_secret="s") as em:
            em.event("first.tick")
            assert wait_for(lambda: host_events(redis_client, NAMES.events), 5)
            time.sleep(0.3)  # idle: the worker is asleep now
            em.event("second.tick")
            events = wait_for(lambda: len(e := host_events(redis_client, NAMES.events)) == 2 and e, 5)
        assert [e.type for e in events] == ["first.tick", "second.tick"]

    def test_a_generation_leaves_in_one_batch_with_its_end(self, redis_url: str, redis_client: redis.Redis) -> None:
        """Tokens linger; generation.completed cuts the wait short, and the span.ended right
        behind it rides along: the live message arrives with both already on the stream."""
        pubsub = redis_client.pubsub()
        pubsub.subscribe(NAMES.live)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        with Emitter("engine-1", redis_url, hash_secret="s", live_flush_interval=5.0) as em:
            with em.context("gen", request_id="r1"):
                for index in range(20):
                    em.token_generated("tiny", "r1", f"t{index}", index)
                em.generation_completed("tiny", "r1", 3, 20, 12.5)
            message = pubsub.get_message(timeout=3)
            while message is not None and message["type"] != "message":
                message = pubsub.get_message(timeout=3)
            on_stream = [e.type for e in read_stream(redis_client, NAMES.events)]
            assert message is not None, "no live message within 3 s, though the linger is 5 s"
            assert [e.index for e in decode_live(message["data"])] == list(range(20))
            assert on_stream == ["generation.completed", "span.ended"]
        pubsub.close()
