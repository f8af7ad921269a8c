"""The collector daemon in-process against a real redis-server: delivery, dead letters, faults.

The end-to-end runs of the real ``telemetry-collector run`` process (SIGKILL,
SIGTERM, Redis restarts, two instances) are in ``test_daemon_process.py``; the
helpers both use are in tests/support/ (stream_entries, inprocess_collector).
"""

from __future__ import annotations

import collections
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

import msgspec
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from collector.consumer import decode_entries
from collector.daemon import Backoff, Collector
from collector.deadletter import DeadLetter, dead_letter_fields
from collector.embedded import RedisProcess
from collector.records import Record
from collector.sinks import SinkAuthError, SinkRejected, SinkUnavailable
from emitters.events import ModelLoaded, encode
from emitters.streams import DEFAULT_ERRORS_MAXLEN, DEFAULT_EVENTS_MAXLEN
from tests.support.inprocess_collector import FaultySink, RecordingSink, Running, heartbeat, make_config, running
from tests.support.stream_entries import (
    GROUP,
    NAMES,
    add_events,
    add_old_events,
    custom_event,
    dead_letters,
    envelope,
    error_event,
    jsonl_ids,
    pending_count,
)
from tests.support.waiting import wait_for

MiB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------------------


def read_and_crash(client: redis.Redis, consumer: str, count: Optional[int] = None) -> None:
    """``consumer`` reads entries of the events stream and never acks them: a crash mid-batch."""
    client.xgroup_create(NAMES.events, GROUP, id="0", mkstream=True)
    client.xreadgroup(GROUP, consumer, {NAMES.events: ">"}, count=count)


# --- in-process fixtures ---------------------------------------------------------------------------


class RecordingAlertEngine:
    """Stands in for AlertEngine: records the daemon's calls to its hooks."""

    def __init__(self) -> None:
        self.observed: list[Record] = []
        self.lags: list[tuple[str, int, int]] = []
        self.losses: list[tuple[str, int]] = []
        self.ticks = 0
        self.closed = False

    def write(self, records: Sequence[Record]) -> None:
        self.observed.extend(records)

    def observe_lag(self, stream: str, lag: int, maxlen: int) -> None:
        self.lags.append((stream, lag, maxlen))

    def observe_loss(self, stream: str, count: int) -> None:
        self.losses.append((stream, count))

    def tick(self, now: Optional[float] = None) -> None:
        self.ticks += 1

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True


# --- pure parts ------------------------------------------------------------------------------------


class TestDecodeEntries:
    def test_valid_typed_and_custom_events_become_records(self) -> None:
        """Typed and custom events decode to Records carrying stream, id and the raw payload."""
        loaded = ModelLoaded(model="m", model_path="/m", **envelope())
        custom = custom_event(1)
        entries = [[b"1-0", [b"event", encode(loaded)]], [b"1-1", [b"event", encode(custom)]]]
        decoded = decode_entries("events", NAMES.events, entries, max_size=MiB)
        assert [r.event.id for r in decoded.records] == [loaded.id, custom.id]
        assert [r.stream_id for r in decoded.records] == ["1-0", "1-1"]
        assert decoded.records[0].raw == encode(loaded) and decoded.records[0].event.type == "model.loaded"
        assert decoded.ids == [b"1-0", b"1-1"] and not decoded.dead and not decoded.lost

    def test_unknown_type_from_a_newer_emitter_is_a_record(self) -> None:
        """A type this collector has never heard of decodes generically, it is not dead-lettered."""
        newer = custom_event(type_="quantum.entangled")
        decoded = decode_entries("events", NAMES.events, [[b"2-0", [b"event", encode(newer)]]], max_size=MiB)
        assert [r.event.type for r in decoded.records] == ["quantum.entangled"] and not decoded.dead

    @pytest.mark.parametrize(
        ("fields", "category", "detail"),
        [
            ([b"event", b"\xc1"], "decode_error", "MessagePack"),
            ([b"event", encode(custom_event())[:20]], "decode_error", "truncated"),
            ([b"event", msgspec.msgpack.encode({**envelope(), "type": "x.y", "ts": "noon"})], "invalid", "$.ts"),
            ([b"event", msgspec.msgpack.encode({**envelope(id=None), "type": "x.y"})], "invalid", "$.id"),
            ([b"payload", b"x"], "missing_field", "no `event` field"),
            ([b"\xff\xfe", b"x"], "missing_field", "\\xff\\xfe"),
            ([b"event", encode(custom_event()), b"extra", b"1"], "invalid", "expected only the `event` field"),
            ([b"event", b"\x00" * (MiB + 1)], "too_large", "limit is 1048576"),
        ],
    )
    def test_bad_entries_become_dead_letters(self, fields: list[bytes], category: str, detail: str) -> None:
        """Each kind of garbage gets its category and a detail naming what is wrong."""
        decoded = decode_entries("events", NAMES.events, [[b"3-0", fields]], max_size=MiB)
        assert not decoded.records and decoded.ids == [b"3-0"]
        (letter,) = decoded.dead
        assert letter.category == category and detail in letter.detail, letter.reason
        assert letter.fields == fields and letter.stream == NAMES.events

    def test_entries_trimmed_while_pending_are_lost_not_dead(self) -> None:
        """[id, nil] (data trimmed away) is reported as lost and still acked."""
        decoded = decode_entries("events", NAMES.events, [[b"4-0", None], [b"4-1", []]], max_size=MiB)
        assert decoded.lost == [b"4-0", b"4-1"] == decoded.ids and not decoded.dead


class TestDeadLetterFields:
    def test_single_payload_is_kept_and_capped(self) -> None:
        """The event bytes are stored as `payload`, cut at the cap with truncated=1 and the true size."""
        letter = DeadLetter(NAMES.events, b"5-0", "too_large", "big", [b"event", b"x" * 5000])
        fields = dead_letter_fields(letter, consumer="c", max_bytes=1024, now_ms=1)
        assert fields["payload"] == b"x" * 1024 and fields["truncated"] == "1" and fields["size"] == "5000"
        assert fields["reason"] == "too_large: big" and fields["id"] == "5-0" and fields["stream"] == NAMES.events
        assert "fields" not in fields

    def test_other_fields_go_into_a_msgpack_map_sharing_the_cap(self) -> None:
        """Several fields: all names kept, the cap shared, non-UTF-8 names preserved as bytes."""
        original = [b"\xff\xfename", b"a" * 4000, b"other", b"b" * 10]
        letter = DeadLetter(NAMES.events, b"6-0", "missing_field", "no event", original)
        fields = dead_letter_fields(letter, consumer="c", max_bytes=1000, now_ms=1)
        stored = msgspec.msgpack.decode(fields["fields"])
        assert stored == {b"\xff\xfename": b"a" * 500, b"other": b"b" * 10}
        assert fields["truncated"] == "1" and fields["size"] == str(sum(map(len, original)))


class TestBackoff:
    def test_grows_jittered_to_the_cap_and_resets(self) -> None:
        """Delays double (with jitter in [d/2, d]) up to the cap; reset() starts over."""
        backoff = Backoff(0.1, 1.0)
        delays = [backoff.next() for _ in range(8)]
        assert 0.05 <= delays[0] <= 0.1 and 0.1 <= delays[1] <= 0.2
        assert all(0.5 <= delay <= 1.0 for delay in delays[4:])
        backoff.reset()
        assert backoff.next() <= 0.1


# --- the collector against real Redis ---------------------------------------------------------------


class TestCollectorDelivery:
    def test_every_entry_is_written_then_acked(self, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
        """1,200 events and 30 errors land in the JSONL files, nothing stays pending, counters add up."""
        events = [custom_event(n) for n in range(1200)]
        errors = [error_event(f"e{n}") for n in range(30)]
        add_events(redis_client, events)
        add_events(redis_client, errors, NAMES.errors)
        collector = Collector(make_config(redis_url, tmp_path))
        with running(collector):
            wait_for(lambda: collector.counters.acked == 1230, what="all entries acked")
        assert jsonl_ids(tmp_path / "logs") == collections.Counter(e.id for e in events + errors)
        assert pending_count(redis_client) == 0 and pending_count(redis_client, NAMES.errors) == 0
        counters = collector.counters
        assert (counters.read, counters.written, counters.dead_lettered) == (1230, 1230, 0)

    def test_error_stream_is_served_first(self, redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
        """With both streams backed up, errors come before events in what the sinks see."""
        add_events(redis_client, [custom_event(n) for n in range(50)])
        add_events(redis_client, [error_event() for _ in range(5)], NAMES.errors)
        sink = RecordingSink()
        collector = Collector(make_config(redis_url, tmp_path), sinks=[sink])
        with running(collector):
            wait_for(lambda: len(sink.records) == 55, what="55 records")
        assert [r.stream for r in sink.records[:5]] == ["errors"] * 5

    def test_unknown_type_is_delivered_not_dead_lettered(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """An event type from a newer emitter ends in the JSONL file; the dead-letter stream stays empty."""
        newer = custom_event(type_="robot.uprising_started")
        add_events(redis_client, [newer])
        collector = Collector(make_config(redis_url, tmp_path))
        with running(collector):
            wait_for(lambda: collector.counters.acked == 1, what="the entry acked")
        assert jsonl_ids(tmp_path / "logs") == {newer.id: 1}
        assert redis_client.xlen(NAMES.dead) == 0

    def test_alert_engine_sees_delivered_batches_lag_and_ticks(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """write() gets every delivered record, observe_lag() both streams with their MAXLEN, tick() runs."""
        events = [custom_event(n) for n in range(20)]
        add_events(redis_client, events)
        engine = RecordingAlertEngine()
        config = make_config(redis_url, tmp_path)
        collector = Collector(config, sinks=[RecordingSink()], alert_engine=engine)  # type: ignore[arg-type]
        with running(collector):
            wait_for(lambda: len(engine.observed) == 20 and engine.lags and engine.ticks, what="hooks called")
        assert {r.event.id for r in engine.observed} == {e.id for e in events}
        assert {(stream, maxlen) for stream, _, maxlen in engine.lags} >= {("events", DEFAULT_EVENTS_MAXLEN), ("errors", DEFAULT_ERRORS_MAXLEN)}
        assert engine.closed

    def test_heartbeat_hash_carries_the_documented_fields(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """`{prefix}:collector:<consumer>` has status and counters, a TTL, and is gone after a clean stop."""
        add_events(redis_client, [custom_event(n) for n in range(3)])
        collector = Collector(make_config(redis_url, tmp_path, consumer="hb-1"), sinks=[RecordingSink()])
        key = NAMES.heartbeat("hb-1")
        with running(collector):
            beat = wait_for(lambda: (h := heartbeat(redis_client, collector)).get("acked") == "3" and h, what="beat")
            assert 0 < redis_client.ttl(key) <= 3
        for name in ("consumer", "group", "host", "pid", "started_at", "last_seen", "status", "read", "written",
                     "acked", "dead_lettered", "claimed"):  # fmt: skip
            assert name in beat, name
        assert beat["status"] == "running" and beat["consumer"] == "hb-1" and beat["group"] == GROUP
        assert not redis_client.exists(key)


class TestCollectorGarbage:
    @pytest.mark.slow
    def test_hypothesis_malformed_entries_all_end_in_dead_letters(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Over 1,000 generated malformed entries: each is dead-lettered with a reason, valid ones still flow."""
        valid = msgspec.msgpack.decode(encode(custom_event()))
        payload = encode(custom_event())
        bad_values = {
            "id": st.integers(-(2**63), 2**63 - 1),
            "ts": st.text(max_size=10),
            "service": st.just("bad service!"),
            "host": st.just(""),
            "pid": st.integers(-(2**63), -1),
            "trace_id": st.text(max_size=8),
            "span_id": st.binary(max_size=8),
            "severity": st.just("loud"),
            "type": st.sampled_from(["", "NoDots", "UPPER.case", 42]),
            "attrs": st.integers(-(2**63), 2**63 - 1),
        }
        wrong_type = st.sampled_from(sorted(bad_values)).flatmap(
            lambda name: bad_values[name].map(lambda value: {b"event": msgspec.msgpack.encode({**valid, name: value})})
        )
        # trace_id and span_id are optional: an event outside every scope carries neither.
        missing = st.sampled_from(["id", "ts", "service", "host", "pid", "type"]).map(
            lambda name: {b"event": msgspec.msgpack.encode({k: v for k, v in valid.items() if k != name})}
        )
        random_bytes = st.binary(max_size=300).map(lambda raw: {b"event": raw})
        truncated = st.integers(0, len(payload) - 1).map(lambda cut: {b"event": payload[:cut]})
        names = st.binary(min_size=1, max_size=24).filter(lambda name: name != b"event")
        no_event = st.dictionaries(names, st.binary(max_size=40), min_size=1, max_size=4)
        extra = no_event.map(lambda fields: {b"event": payload, **fields})
        malformed = st.one_of(wrong_type, missing, random_bytes, truncated, no_event, extra)

        collector = Collector(make_config(redis_url, tmp_path), sinks=[RecordingSink()])
        sink = collector.sinks[0]
        thrown: list[int] = []

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.lists(malformed, min_size=45, max_size=60))
        def check(entries: list[dict[bytes, bytes]]) -> None:
            marker = custom_event()
            before_dead = redis_client.xlen(NAMES.dead)
            pipe = redis_client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(NAMES.events, fields)
            pipe.xadd(NAMES.events, {"event": encode(marker)})
            ids = pipe.execute()
            wait_for(lambda: any(r.event.id == marker.id for r in sink.records), what="the valid marker")
            wait_for(lambda: redis_client.xlen(NAMES.dead) == before_dead + len(entries), what="dead letters")
            letters = {f[b"id"]: f for f in dead_letters(redis_client)[before_dead:]}
            assert set(letters) == set(ids[:-1])
            for letter in letters.values():
                category = letter[b"reason"].split(b":")[0].decode()
                assert category in {"decode_error", "invalid", "missing_field"}, letter[b"reason"]
            thrown.append(len(entries))

        with running(collector) as handle:
            check()
            assert handle.thread.is_alive()
            wait_for(lambda: pending_count(redis_client) == 0, what="nothing pending")
        assert sum(thrown) >= 1000

    def test_oversized_blob_is_dead_lettered_capped(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """An 8 MiB entry becomes a too_large dead letter cut to max_event_size; neighbours are delivered."""
        before, after = custom_event(1), custom_event(2)
        add_events(redis_client, [before])
        redis_client.xadd(NAMES.events, {"event": secrets.token_bytes(8 * MiB)})
        add_events(redis_client, [after])
        sink = RecordingSink()
        collector = Collector(make_config(redis_url, tmp_path), sinks=[sink])
        with running(collector):
            wait_for(lambda: collector.counters.acked == 3, what="3 acked")
        assert [r.event.id for r in sink.records] == [before.id, after.id]
        (letter,) = dead_letters(redis_client)
        assert letter[b"reason"].startswith(b"too_large: ")
        assert len(letter[b"payload"]) == MiB and letter[b"truncated"] == b"1" and letter[b"size"] == b"8388608"


class TestCollectorSinkFaults:
    def test_unavailable_sink_backpressures_and_only_it_is_retried(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """While one sink is down nothing is acked; the healthy sink gets the batch once, not per retry."""
        add_events(redis_client, [custom_event(n) for n in range(10)])
        healthy = RecordingSink()
        outage = threading.Event()
        outage.set()
        flaky = FaultySink(lambda batch: SinkUnavailable("backend down") if outage.is_set() else None)
        collector = Collector(make_config(redis_url, tmp_path), sinks=[healthy, flaky])
        with running(collector):
            wait_for(lambda: flaky.attempts >= 3, what="retries")
            wait_for(lambda: heartbeat(redis_client, collector).get("status") == "backpressure", what="status")
            assert pending_count(redis_client) == 10 and collector.counters.acked == 0
            outage.clear()
            wait_for(lambda: collector.counters.acked == 10, what="acked after recovery")
            wait_for(lambda: heartbeat(redis_client, collector).get("status") == "running", what="running again")
        assert len(healthy.batches) == 1 and len(flaky.records) == 10
        assert pending_count(redis_client) == 0

    def test_retry_after_from_the_sink_is_honoured(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """A SinkUnavailable with retry_after holds the next attempt back at least that long."""
        add_events(redis_client, [custom_event()])
        attempts: list[float] = []

        def fault(batch: Sequence[Record]) -> Optional[Exception]:
            attempts.append(time.monotonic())
            return SinkUnavailable("429", retry_after=0.6) if len(attempts) == 1 else None

        collector = Collector(make_config(redis_url, tmp_path), sinks=[FaultySink(fault)])
        with running(collector):
            wait_for(lambda: collector.counters.acked == 1, what="acked")
        assert attempts[1] - attempts[0] >= 0.6

    def test_rejected_records_are_dead_lettered_and_the_rest_acked(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """SinkRejected for some records: those go to the DLQ as `rejected`, everything is acked."""
        events = [custom_event(n) for n in range(6)]
        add_events(redis_client, events)
        collector = Collector(
            make_config(redis_url, tmp_path),
            sinks=[FaultySink(lambda batch: SinkRejected("400 bad attribute", batch[:2]))],
        )
        with running(collector):
            wait_for(lambda: collector.counters.acked == 6, what="all acked")
        letters = dead_letters(redis_client)
        assert [json.loads(msgspec.json.encode(msgspec.msgpack.decode(f[b"payload"])))["id"] for f in letters] == [
            e.id for e in events[:2]
        ]
        assert all(f[b"reason"] == b"rejected: faulty: 400 bad attribute" for f in letters)
        assert collector.counters.written == 4 and collector.counters.dead_lettered == 2

    def test_rejected_entries_with_the_same_id_on_both_streams_each_get_a_letter(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Both streams hand out ``<ms>-0`` in the same millisecond: each rejected entry is its own letter."""
        same_id = f"{int(time.time() * 1000)}-0"
        event, error = custom_event(), error_event()
        pipe = redis_client.pipeline(transaction=True)
        pipe.xadd(NAMES.events, {"event": encode(event)}, id=same_id)
        pipe.xadd(NAMES.errors, {"event": encode(error)}, id=same_id)
        pipe.execute()
        collector = Collector(
            make_config(redis_url, tmp_path),
            sinks=[FaultySink(lambda batch: SinkRejected("400 bad attribute", batch))],
        )
        with running(collector):
            wait_for(lambda: collector.counters.acked == 2, what="both acked")
        letters = {(f[b"stream"], f[b"id"]): msgspec.msgpack.decode(f[b"payload"])["id"] for f in dead_letters(redis_client)}
        assert letters == {
            (NAMES.events.encode(), same_id.encode()): event.id,
            (NAMES.errors.encode(), same_id.encode()): error.id,
        }
        assert all(f[b"reason"] == b"rejected: faulty: 400 bad attribute" for f in dead_letters(redis_client))
        assert collector.counters.written == 0 and collector.counters.dead_lettered == 2

    def test_auth_error_pauses_with_entries_pending(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """SinkAuthError: status paused_auth, a clear error in the log, entries stay pending until it works."""
        add_events(redis_client, [custom_event(n) for n in range(4)])
        refused = threading.Event()
        refused.set()
        sink = FaultySink(lambda batch: SinkAuthError("401 unauthorized") if refused.is_set() else None)
        config = make_config(redis_url, tmp_path, auth_retry_interval="200ms")
        collector = Collector(config, sinks=[sink])
        with capture_logs() as logs, running(collector):
            wait_for(lambda: heartbeat(redis_client, collector).get("status") == "paused_auth", what="paused")
            assert pending_count(redis_client) == 4
            refused.clear()
            wait_for(lambda: collector.counters.acked == 4, what="acked after credentials work")
        failures = [entry for entry in logs if entry["event"] == "sink_auth_failed"]
        assert failures and failures[0]["log_level"] == "error" and "credentials" in failures[0]["action"]


class TestCollectorRedelivery:
    def test_own_pending_entries_are_read_first(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """A restarted consumer with the same name delivers what it had read but not acked."""
        events = [custom_event(n) for n in range(5)]
        add_events(redis_client, events)
        read_and_crash(redis_client, "same-name", count=3)
        sink = RecordingSink()
        collector = Collector(make_config(redis_url, tmp_path, consumer="same-name", claim_idle="1h"), sinks=[sink])
        with running(collector):
            wait_for(lambda: collector.counters.acked == 5, what="all acked")
        assert [r.event.id for r in sink.records] == [e.id for e in events]
        assert collector.counters.claimed == 0

    def test_dead_consumers_entries_are_claimed_after_claim_idle(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Entries another consumer read and never acked are claimed once idle > claim_idle."""
        events = [custom_event(n) for n in range(7)]
        add_events(redis_client, events)
        read_and_crash(redis_client, "crashed", count=4)
        sink = RecordingSink()
        collector = Collector(make_config(redis_url, tmp_path, claim_idle="500ms"), sinks=[sink])
        with running(collector):
            wait_for(lambda: collector.counters.acked == 7, what="all acked")
        assert sorted(r.event.id for r in sink.records) == sorted(e.id for e in events)
        assert collector.counters.claimed == 4

    def test_entries_delivered_too_often_are_dead_lettered(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """An entry whose delivery count passed max_deliveries goes to the DLQ as max_deliveries."""
        poison, fine = custom_event(1), custom_event(2)
        poison_id, fine_id = add_events(redis_client, [poison, fine])
        read_and_crash(redis_client, "crashy", count=2)
        for _ in range(3):  # three more crash-and-claim rounds for the poison entry only
            redis_client.xclaim(NAMES.events, GROUP, "crashy", 0, [poison_id])
        sink = RecordingSink()
        collector = Collector(make_config(redis_url, tmp_path, claim_idle="200ms", max_deliveries=3), sinks=[sink])
        with running(collector):
            wait_for(lambda: collector.counters.acked == 2, what="both acked")
        assert [r.event.id for r in sink.records] == [fine.id]
        (letter,) = dead_letters(redis_client)
        assert letter[b"id"] == poison_id and letter[b"reason"] == b"max_deliveries: delivered 5 times, the limit is 3"
        assert msgspec.msgpack.decode(letter[b"payload"])["id"] == poison.id

    @pytest.mark.parametrize("consumer", ["same-name", "someone-else"])
    def test_entries_trimmed_while_pending_are_counted_lost(
        self, consumer: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Entries MAXLEN-trimmed while pending: acked or dropped, counted as lost, with a warning."""
        add_events(redis_client, [custom_event(n) for n in range(5)])
        read_and_crash(redis_client, consumer)
        redis_client.xtrim(NAMES.events, maxlen=0)
        config = make_config(redis_url, tmp_path, consumer="same-name", claim_idle="200ms")
        collector = Collector(config, sinks=[RecordingSink()])
        with capture_logs() as logs, running(collector):
            wait_for(lambda: collector.counters.lost == 5, what="5 lost")
            wait_for(lambda: pending_count(redis_client) == 0, what="pending list empty")
            wait_for(lambda: any(entry["event"] == "entries_lost" for entry in logs), what="loss logged")
        (logged,) = [entry for entry in logs if entry["event"] == "entries_lost"]
        assert logged["count"] == 5 and logged["by"] == "deleted-while-pending"
        assert redis_client.hget(NAMES.accounting, f"lost:events:{GROUP}") == b"5"  # durable
        assert redis_client.xlen(NAMES.dead) == 0


class TestCollectorHousekeeping:
    def test_idle_consumers_are_removed_only_without_pending(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """An idle consumer with nothing pending leaves the group; one holding entries never does."""
        add_events(redis_client, [custom_event(n) for n in range(3)])
        read_and_crash(redis_client, "holding", count=2)
        redis_client.xgroup_createconsumer(NAMES.events, GROUP, "empty")
        config = make_config(
            redis_url, tmp_path, claim_idle="1h", consumer_idle_timeout="300ms", trim_interval="200ms"
        )
        collector = Collector(config, sinks=[RecordingSink()])

        def consumers() -> dict[str, int]:
            return {c["name"].decode(): c["pending"] for c in redis_client.xinfo_consumers(NAMES.events, GROUP)}

        with running(collector):
            wait_for(lambda: "empty" not in consumers(), what="the empty consumer removed")
            wait_for(lambda: collector.counters.acked == 1, what="the unread entry delivered")
            assert consumers()["holding"] == 2

    def test_retention_trims_old_entries_once_processed(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """XTRIM MINID drops entries older than the retention after they were acked."""
        add_old_events(redis_client, 300, age_s=2 * 3600)
        config = make_config(redis_url, tmp_path, events_retention="1h", trim_interval="200ms")
        collector = Collector(config, sinks=[RecordingSink()])
        with running(collector):
            wait_for(lambda: redis_client.xlen(NAMES.events) < 300, what="old entries trimmed")
        assert collector.counters.acked == 300

    def test_retention_never_trims_what_a_group_has_not_read(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Old entries another group has not read yet survive the retention trim."""
        add_old_events(redis_client, 300, age_s=2 * 3600)
        redis_client.xgroup_create(NAMES.events, "archiver", id="0")
        config = make_config(redis_url, tmp_path, events_retention="1h", trim_interval="100ms")
        collector = Collector(config, sinks=[RecordingSink()])
        with capture_logs() as logs, running(collector):
            wait_for(lambda: collector.counters.acked == 300, what="all acked")
            done = len(logs)
            wait_for(
                lambda: [e for e in logs[done:] if e["event"] == "stream_trimmed" and e["stream"] == NAMES.events],
                what="a trim pass after the acks",
            )
        passes = [e for e in logs[done:] if e["event"] == "stream_trimmed" and e["stream"] == NAMES.events]
        assert passes[0]["held_back"] and passes[0]["removed"] == 0
        assert redis_client.xlen(NAMES.events) == 300

    def test_lag_near_maxlen_is_warned_and_reported(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """Unacked entries past lag_warn_ratio x MAXLEN: a warning, the lag in the heartbeat and to alerts."""
        add_events(redis_client, [custom_event(n) for n in range(150)])
        engine = RecordingAlertEngine()
        config = make_config(redis_url, tmp_path, events_maxlen=200, lag_warn_ratio=0.5, shutdown_timeout="500ms")
        down = FaultySink(lambda batch: SinkUnavailable("down"))
        collector = Collector(config, sinks=[down], alert_engine=engine)  # type: ignore[arg-type]
        with capture_logs() as logs, running(collector):
            wait_for(lambda: heartbeat(redis_client, collector).get("lag_events") == "150", what="lag in heartbeat")
            wait_for(lambda: ("events", 150, 200) in engine.lags, what="lag observed")
        warnings = [entry for entry in logs if entry["event"] == "unacked_data_at_risk"]
        assert warnings and warnings[0]["unacked"] == 150 and warnings[0]["maxlen"] == 200


class TestCollectorLifecycle:
    def test_stop_finishes_the_in_flight_batch(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """request_stop() while a sink is writing: the batch completes, is acked, sinks are closed."""
        add_events(redis_client, [custom_event(n) for n in range(40)])
        writing, release = threading.Event(), threading.Event()

        def slow(batch: Sequence[Record]) -> None:
            writing.set()
            release.wait(10)

        sink = FaultySink(slow)  # type: ignore[arg-type]
        collector = Collector(make_config(redis_url, tmp_path), sinks=[sink])
        handle = Running(collector)
        handle.thread.start()
        writing.wait(10)
        collector.request_stop()
        release.set()
        handle.thread.join(10)
        assert not handle.thread.is_alive() and handle.error is None
        assert len(sink.records) == 40 and pending_count(redis_client) == 0 and sink.closed

    def test_stop_with_a_dead_sink_returns_by_the_deadline_leaving_entries_pending(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path
    ) -> None:
        """A sink that never recovers cannot hold shutdown past shutdown_timeout; nothing is acked."""
        add_events(redis_client, [custom_event(n) for n in range(5)])
        sink = FaultySink(lambda batch: SinkUnavailable("down"))
        collector = Collector(make_config(redis_url, tmp_path, shutdown_timeout="1s"), sinks=[sink])
        handle = Running(collector)
        handle.thread.start()
        wait_for(lambda: sink.attempts >= 1, what="a first attempt")
        started = time.monotonic()
        collector.request_stop()
        handle.thread.join(15)
        assert not handle.thread.is_alive() and handle.error is None
        assert time.monotonic() - started < 10  # generous: the deadline is 1s
        assert pending_count(redis_client) == 5 and collector.counters.acked == 0

    def test_redis_down_at_start_is_waited_for(self, redis_process: RedisProcess, tmp_path: Path) -> None:
        """Started while Redis is stopped, the collector waits with backoff and works once it is up."""
        url = redis_process.url
        redis_process.stop()
        sink = RecordingSink()
        collector = Collector(make_config(url, tmp_path), sinks=[sink])
        with running(collector) as handle:
            threading.Event().wait(0.5)
            assert handle.thread.is_alive()
            redis_process.start()
            client = redis_process.client()
            event = custom_event()
            add_events(client, [event])
            wait_for(lambda: [r.event.id for r in sink.records] == [event.id], what="delivery after start")
            client.close()
