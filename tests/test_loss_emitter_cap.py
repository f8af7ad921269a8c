"""The emitters' cap guard books what it trims, on Redis 6.2 and 7 alike."""

from __future__ import annotations

from collector.embedded import RedisProcess
from emitters import Emitter
from emitters.streams import stream_names
from tests.support.redis_versions import versioned_redis  # noqa: F401  (fixture)

NAMES = stream_names("telemetry")


class TestCapGuard:
    def test_a_group_that_read_nothing_gets_every_trimmed_entry_booked(self, versioned_redis: RedisProcess) -> None:
        """A group made at 0 that never read: each entry the cap trims is counted lost for
        it and the group steps past them. On 6.2 (no ENTRIESREAD) the batch script once
        failed here, and the emitter dropped the batches as refused instead."""
        client = versioned_redis.client()
        client.xgroup_create(NAMES.events, "collectors", id="0", mkstream=True)
        with Emitter("cap-test", versioned_redis.url, events_maxlen=100, batch_size=50, hash_secret="t") as em:
            for n in range(300):
                em.event("job.created", n=n)
            assert em.flush(10)
            stats = em.stats()
        assert sum(stats["dropped"].values()) == 0 and stats["sent"] == 300, stats
        assert client.xlen(NAMES.events) == 100
        assert int(client.hget(NAMES.accounting, "lost:events:collectors")) == 200
        (group,) = client.xinfo_groups(NAMES.events)
        oldest_kept = client.xrange(NAMES.events, count=1)[0][0]
        assert _id(group["last-delivered-id"]) < _id(oldest_kept)  # stepped past what it lost
        client.close()


def _id(entry_id: bytes) -> tuple[int, ...]:
    return tuple(map(int, entry_id.split(b"-")))
