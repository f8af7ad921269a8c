"""The real ``telemetry-collector run`` process against a real redis-server.

Crashes are real (SIGKILL), stops are real (SIGTERM), Redis really restarts
under the daemon, and garbage is written straight into the streams.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

import msgspec
import pytest
import redis

from collector.embedded import RedisProcess
from emitters import Emitter
from emitters.events import decode, encode
from tests.support.stream_entries import (
    GROUP,
    NAMES,
    add_events,
    custom_event,
    dead_letters,
    envelope,
    error_event,
    jsonl_ids,
    pending_count,
)
from tests.support.collector_process import CollectorProcess, collectors, launch  # noqa: F401  (fixture)
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def stream_event_ids(client: redis.Redis, stream: str = NAMES.events) -> set[str]:
    """The ids of every valid event in ``stream`` (what the files must end up holding)."""
    ids = set()
    for _, fields in client.xrange(stream):
        try:
            ids.add(decode(fields[b"event"]).id)
        except (KeyError, msgspec.DecodeError):
            continue
    return ids


def unprocessed(client: redis.Redis, stream: str = NAMES.events) -> int:
    """Entries the group has not read yet plus those read but not acked (6.2 and 7.x: counted by ids)."""
    (group,) = [g for g in client.xinfo_groups(stream) if g["name"] == GROUP.encode()]
    return len(client.xrange(stream, min="(" + group["last-delivered-id"].decode())) + int(group["pending"])


def file_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("events-*.jsonl"))


class Writer:
    """Adds valid events in the background, ``per_tick`` every 20 ms, up to ``total``."""

    def __init__(self, client: redis.Redis, total: int, per_tick: int = 200) -> None:
        self.client = client
        self.total = total
        self.per_tick = per_tick
        self.written = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.written < self.total and not self._stop.is_set():
            count = min(self.per_tick, self.total - self.written)
            add_events(self.client, [custom_event(self.written + n) for n in range(count)])
            self.written += count
            self._stop.wait(0.02)

    def __enter__(self) -> "Writer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self.thread.join(30)

    def wait(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert self.written == self.total


@pytest.mark.slow
class TestCollectorProcessDelivery:
    def test_fifty_thousand_emitted_events_all_reach_the_files(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """50,000 events through the Emitter: every id in the JSONL files exactly once, nothing pending."""
        collector = launch(collectors, tmp_path, redis_url)
        collector.wait_ready()
        emitter = Emitter("load-test", redis_url, events_maxlen=200_000, buffer_size=20_000, hash_secret="test")
        try:
            for chunk in range(10):
                for n in range(5000):
                    emitter.event("job.created", job_id=f"{chunk}-{n}")
                assert emitter.flush(60)
        finally:
            emitter.close()
        stats = emitter.stats()
        assert stats["sent"] == 50_000 and not any(stats["dropped"].values()), stats
        wait_for(lambda: unprocessed(redis_client) == 0, timeout=120, what="the group caught up")
        assert collector.terminate() == 0
        expected = stream_event_ids(redis_client)
        assert len(expected) == 50_000
        seen = jsonl_ids(collector.jsonl_dir)
        assert set(seen) == expected and max(seen.values()) == 1
        assert pending_count(redis_client) == 0

    def test_sigkill_twice_then_restart_loses_nothing(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """SIGKILL mid-run twice: every id at least once, duplicates within the batch size, pending drains."""
        batch = 200
        add_events(redis_client, [custom_event(n) for n in range(20_000)])
        kills = 0
        with Writer(redis_client, 10_000) as writer:
            for target in (4_000, 12_000):
                collector = launch(collectors, tmp_path, redis_url, "--batch-size", str(batch), name="crashy")
                wait_for(lambda: file_lines(collector.jsonl_dir) >= target, timeout=120, what=f"{target} lines")
                collector.kill()
                kills += 1
                assert unprocessed(redis_client) > 0, "the kill was meant to land mid-run"
            writer.wait()
            survivor = launch(collectors, tmp_path, redis_url, "--batch-size", str(batch), name="crashy")
            wait_for(lambda: unprocessed(redis_client) == 0, timeout=120, what="pending list drained")
        assert survivor.terminate() == 0
        seen = jsonl_ids(survivor.jsonl_dir)
        assert set(seen) == stream_event_ids(redis_client)
        duplicates = sum(count - 1 for count in seen.values())
        assert duplicates <= kills * batch, duplicates

    def test_two_collectors_split_the_work_and_claim_from_a_dead_one(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Both instances read; the survivor claims the SIGKILLed one's pending entries after --claim-idle."""
        first = launch(collectors, tmp_path, redis_url, "--batch-size", "100", name="first")
        second = launch(collectors, tmp_path, redis_url, "--batch-size", "100", name="second")
        first.wait_ready()
        second.wait_ready()

        def read_by(name: str) -> int:
            return int(redis_client.hget(NAMES.heartbeat(name), "read") or 0)

        def pending_of(name: str) -> int:
            return len(redis_client.xpending_range(NAMES.events, GROUP, "-", "+", 1000, consumername=name))

        with Writer(redis_client, 20_000, per_tick=300) as writer:
            wait_for(lambda: read_by("first") > 0 and read_by("second") > 0, timeout=60, what="both reading")
            # Freeze `first` at a moment it holds entries, then kill it: a crash mid-batch.
            for _ in range(200):
                first.signal(signal.SIGSTOP)
                wait_for(first.stopped, what="SIGSTOP taking effect")
                if pending_of("first"):
                    break
                first.signal(signal.SIGCONT)
                threading.Event().wait(0.01)
            first.kill()
            held = pending_of("first")
            assert held > 0
            writer.wait()
            wait_for(lambda: pending_of("first") == 0, timeout=60, what="first's entries claimed")
            wait_for(lambda: unprocessed(redis_client) == 0, timeout=120, what="the group caught up")
        wait_for(lambda: int(redis_client.hget(NAMES.heartbeat("second"), "claimed") or 0) >= held, what="claimed")
        assert second.logged("entries_claimed")
        assert second.terminate() == 0
        seen = jsonl_ids(first.jsonl_dir, second.jsonl_dir)
        assert set(seen) == stream_event_ids(redis_client)


@pytest.mark.slow
class TestCollectorProcessFaults:
    def test_garbage_is_dead_lettered_and_neighbours_delivered(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Random bytes, truncated msgpack, wrong types, missing fields, 8 MiB, odd field names: all in the DLQ."""
        good = [custom_event(n) for n in range(4)]
        newer = custom_event(type_="hologram.projected")
        payload = encode(custom_event())
        garbage = {
            "random bytes": {"event": b"\xc1" + os.urandom(64)},  # 0xc1: never valid MessagePack
            "truncated msgpack": {"event": payload[: len(payload) // 2]},
            "wrong field types": {"event": msgspec.msgpack.encode({**envelope(ts="yesterday"), "type": "job.created"})},
            "missing fields": {"evnt": payload, "other": b"1"},
            "8 MiB blob": {"event": os.urandom(8 * MiB)},
            "non-msgpack field name": {b"\xff\xfe\x00name": payload},
        }
        add_events(redis_client, good[:2])
        garbage_ids = {redis_client.xadd(NAMES.events, fields): what for what, fields in garbage.items()}
        add_events(redis_client, [good[2], newer])
        error_garbage = redis_client.xadd(NAMES.errors, {"event": b"\x93\x01\x02"})
        add_events(redis_client, [error_event()], NAMES.errors)
        add_events(redis_client, good[3:])

        collector = launch(collectors, tmp_path, redis_url)
        wait_for(lambda: redis_client.xlen(NAMES.dead) == 7, timeout=60, what="7 dead letters")
        wait_for(lambda: unprocessed(redis_client) == 0 and unprocessed(redis_client, NAMES.errors) == 0)
        assert not collector.exited()

        # Keyed by stream and id: the two streams can hand out the same entry id.
        letters = {(letter[b"stream"].decode(), letter[b"id"]): letter for letter in dead_letters(redis_client)}
        expected = {
            "random bytes": b"decode_error",
            "truncated msgpack": b"decode_error",
            "wrong field types": b"invalid",
            "missing fields": b"missing_field",
            "8 MiB blob": b"too_large",
            "non-msgpack field name": b"missing_field",
        }
        by_kind = {what: letters[(NAMES.events, entry_id)] for entry_id, what in garbage_ids.items()}
        for what, letter in by_kind.items():
            assert letter[b"reason"].startswith(expected[what] + b": "), (what, letter[b"reason"])
        assert letters[(NAMES.errors, error_garbage)][b"reason"].startswith(b"invalid: ")
        assert b"$.ts" in by_kind["wrong field types"][b"reason"]
        blob = by_kind["8 MiB blob"]
        assert blob[b"truncated"] == b"1" and len(blob[b"payload"]) == MiB
        odd = by_kind["non-msgpack field name"]
        assert msgspec.msgpack.decode(odd[b"fields"]) == {b"\xff\xfe\x00name": payload}

        seen = jsonl_ids(collector.jsonl_dir)
        assert {e.id for e in good} | {newer.id} <= set(seen)
        assert collector.terminate() == 0

    def test_sigterm_mid_stream_exits_0_with_nothing_read_left_pending(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """SIGTERM while events pour in: exit code 0 and every entry it had read is acked."""
        collector = launch(collectors, tmp_path, redis_url, "--batch-size", "100")
        collector.wait_ready()
        with Writer(redis_client, 50_000, per_tick=400):
            wait_for(lambda: file_lines(collector.jsonl_dir) > 2_000, timeout=60, what="delivery under way")
            assert collector.terminate(timeout=60) == 0
            assert pending_count(redis_client) == 0
        stopping = collector.logged("collector_stopping")
        stopped = collector.logged("collector_stopped")
        assert stopping and stopped and stopped[0]["acked"] == stopped[0]["read"]

    def test_second_signal_exits_at_once(
        self, redis_url: str, redis_client: redis.Redis, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """A second SIGTERM while the first is draining ends the process at once with a non-zero code."""
        # A JSONL directory whose parent turns into a file once running (run refuses one at start):
        # the batch is never accepted.
        parent = tmp_path / "a-file"
        collector = launch(collectors, tmp_path, redis_url, "--jsonl-dir", str(parent / "logs"), "--shutdown-timeout", "5m")
        collector.wait_ready()
        shutil.rmtree(parent, ignore_errors=True)
        parent.write_text("")
        add_events(redis_client, [custom_event()])
        wait_for(lambda: collector.logged("sink_unavailable"), timeout=60, what="the sink failing")
        collector.signal(signal.SIGTERM)
        wait_for(lambda: collector.logged("collector_stopping"), timeout=30, what="draining")
        assert not collector.exited()
        collector.signal(signal.SIGTERM)
        assert collector.proc is not None and collector.proc.wait(30) == 128 + signal.SIGTERM
        assert pending_count(redis_client) == 1  # not acked, not lost

    def test_redis_restart_under_the_running_collector(
        self, redis_process: RedisProcess, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """Redis stops and comes back: the daemon stays up, reconnects and delivers what follows."""
        client = redis_process.client()
        collector = launch(collectors, tmp_path, redis_process.url)
        collector.wait_ready()
        before = [custom_event(n) for n in range(500)]
        add_events(client, before)
        wait_for(lambda: set(jsonl_ids(collector.jsonl_dir)) >= {e.id for e in before}, timeout=60)
        redis_process.stop()
        wait_for(lambda: collector.logged("redis_connection_lost"), timeout=60, what="the loss noticed")
        assert not collector.exited()
        redis_process.start()
        client = redis_process.client()
        after = [custom_event(n) for n in range(500)]
        add_events(client, after)
        wait_for(lambda: set(jsonl_ids(collector.jsonl_dir)) >= {e.id for e in before + after}, timeout=90)
        assert collector.logged("redis_reconnected") and not collector.exited()
        assert collector.terminate() == 0
        client.close()

    def test_embedded_redis_when_no_url_is_configured(
        self, tmp_path: Path, collectors: list[CollectorProcess]
    ) -> None:
        """No Redis URL: a private redis-server starts (and says why), works, and stops with the daemon."""
        collector = launch(collectors, tmp_path, None, cwd=tmp_path)
        collector.wait_ready()
        (started,) = collector.logged("embedded_redis_started")
        assert "no Redis URL configured" in started["reason"]
        assert Path(started["data_dir"]) == tmp_path / ".telemetry" / "redis"
        client = redis.Redis.from_url(started["url"])
        event = custom_event()
        add_events(client, [event])
        wait_for(lambda: event.id in jsonl_ids(collector.jsonl_dir), timeout=60, what="delivery")
        assert collector.terminate() == 0
        with pytest.raises(redis.ConnectionError):
            client.ping()
