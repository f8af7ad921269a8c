"""`telemetry-collector tail` as a real process: new events only, filters, live tokens, no stolen work."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys

import pytest
import redis

from collector.embedded import RedisProcess
from collector.records import parse_id
from tests.support.tool_runs import REPO, blocked_in_xread, cli, group_pending, json_lines, tool_process
from tests.support.tool_events import emitters
from tests.support.waiting import wait_for

GROUP = "telemetry-collectors"


def _finish(process: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"tail did not finish: stdout={out!r} stderr={err!r}") from None
    assert process.returncode == 0, err
    return out, err


def _tags(rows: list[dict]) -> list[str]:
    return [str((row.get("attrs") or {}).get("tag") or (row.get("context") or {}).get("tag")) for row in rows]


class TestTail:
    """tail follows both streams from the moment it starts."""

    def test_prints_only_events_after_start_and_steals_nothing(self, redis_url: str, redis_client: redis.Redis) -> None:
        """Events from before the start are not shown, later ones are, in order; no group's pending count moves."""
        with emitters(redis_url, "api") as (api,):
            api.event("request.received", tag="before")
            api.error("old failure", tag="before-error")
        for key in ("telemetry:events", "telemetry:errors"):
            redis_client.xgroup_create(key, GROUP, id="0")
        redis_client.xreadgroup(GROUP, "busy-consumer", {"telemetry:events": ">"}, count=1)
        pending_before = {key: group_pending(redis_client, key) for key in ("telemetry:events", "telemetry:errors")}
        assert pending_before["telemetry:events"] == {GROUP: 1}

        everything = tool_process("tail", "--redis-url", redis_url, "--json", "--count", "3", "--timeout", "60s")
        errors_only = tool_process("tail", "--redis-url", redis_url, "--json", "--count", "1", "--severity", "error", "--timeout", "60s")
        wait_for(lambda: sum(c.get("cmd") == "xread" for c in redis_client.client_list()) == 2, what="both tails in XREAD")
        with emitters(redis_url, "api", "engine") as (api, engine):
            api.event("request.received", tag="after-1")
            assert api.flush(10)
            engine.error("engine fell over", error_type="RuntimeError", tag="after-error")
            assert engine.flush(10)
            api.event("request.completed", tag="after-2")
        out, _ = _finish(everything)
        assert _tags(json_lines(out)) == ["after-1", "after-error", "after-2"]
        errors_out, _ = _finish(errors_only)
        rows = json_lines(errors_out)
        assert _tags(rows) == ["after-error"] and rows[0]["stream"] == "errors" and rows[0]["stream_id"]
        pending_after = {key: group_pending(redis_client, key) for key in ("telemetry:events", "telemetry:errors")}
        assert pending_after == pending_before
        # Both new events still undelivered (by ids: Redis 6.2 reports no lag).
        delivered = parse_id(redis_client.xinfo_groups("telemetry:events")[0]["last-delivered-id"])
        assert all(parse_id(entry_id) > delivered for entry_id, _ in redis_client.xrevrange("telemetry:events", count=2))

    def test_readable_lines_and_live_tokens(self, redis_url: str, redis_client: redis.Redis) -> None:
        """--live adds the pub/sub token events; one line per event; --request keeps only that request."""
        process = tool_process(
            "tail", "--redis-url", redis_url, "--live", "--request", "r-live", "--count", "5", "--timeout", "60s"
        )
        wait_for(lambda: blocked_in_xread(redis_client, "telemetry-tail"), what="tail in XREAD")
        wait_for(lambda: redis_client.pubsub_numsub("telemetry:live")[0][1] == 1, what="tail subscribed")
        with emitters(redis_url, "engine") as (engine,):
            engine.generation_started("tiny", "r-other")
            engine.generation_started("tiny", "r-live", prompt_tokens=3)
            assert engine.flush(10)
            for index, token in enumerate(["Hel", "lo", " world"]):
                engine.token_generated("tiny", "r-live", token, index)
            assert engine.flush(10)
            engine.generation_completed("tiny", "r-live", 3, 3, 41.5)
        out, _ = _finish(process)
        lines = out.splitlines()
        assert len(lines) == 5
        assert "generation.started" in lines[0] and "req=r-live" in lines[0] and "engine" in lines[0]
        tokens = [line for line in lines if "token.generated" in line]
        assert [line.split("index=")[1].split()[0] for line in tokens] == ["0", "1", "2"]
        assert 'token=" world"' in tokens[2]
        assert "generation.completed" in lines[4] and "\x1b[" not in out  # no colour into a pipe

    def test_survives_a_redis_restart(self, redis_process: RedisProcess) -> None:
        """Redis restarts under a running tail: it reconnects and prints what is emitted afterwards."""
        client = redis_process.client()
        process = tool_process("tail", "--redis-url", redis_process.url, "--json", "--count", "1", "--timeout", "90s")
        try:
            wait_for(lambda: blocked_in_xread(client, "telemetry-tail"), what="tail in XREAD")
            redis_process.restart()
            with emitters(redis_process.url, "api") as (api,):
                api.event("request.received", tag="after-restart")
            out, err = _finish(process, timeout=90)
        finally:
            client.close()
            if process.poll() is None:
                process.kill()
        assert _tags(json_lines(out)) == ["after-restart"]
        assert "lost Redis" in err and "Redis is back" in err


    def test_sigterm_ends_it_cleanly(self, redis_url: str, redis_client: redis.Redis) -> None:
        """SIGTERM (docker stop, kill) ends a tail with no --count or --timeout, exit status 0."""
        process = tool_process("tail", "--redis-url", redis_url)
        wait_for(lambda: blocked_in_xread(redis_client, "telemetry-tail"), what="tail in XREAD")
        process.send_signal(signal.SIGTERM)
        out, err = _finish(process, timeout=30)
        assert out == "" and err == ""


class TestColour:
    """Colour only on a terminal, never with NO_COLOR."""

    def test_colour_on_a_tty_only(self, redis_url: str, redis_client: redis.Redis) -> None:
        """The same search prints ANSI styles into a pseudo-terminal, none into a pipe or with NO_COLOR set."""
        with emitters(redis_url, "api") as (api,):
            api.error("kaput", error_type="RuntimeError")

        def run_on_tty(extra_env: dict[str, str]) -> str:
            leader, follower = pty.openpty()
            env = {name: value for name, value in os.environ.items() if name != "NO_COLOR"}
            env.update(PYTHONPATH=str(REPO), **extra_env)
            child = subprocess.Popen(
                [sys.executable, "-c", "from collector.cli import main; main()", "search", "--redis-url", redis_url],
                cwd=REPO, env=env, stdout=follower, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            child.wait(30)
            os.close(leader)
            return b"".join(chunks).decode()

        on_tty = run_on_tty({})
        assert "\x1b[31m" in on_tty and "RuntimeError: kaput" in on_tty
        assert "\x1b[" not in run_on_tty({"NO_COLOR": "1"})
        piped = cli("search", "--redis-url", redis_url).stdout
        assert "RuntimeError: kaput" in piped and "\x1b[" not in piped


@pytest.mark.parametrize("command", ["tail", "search"])
def test_unreachable_redis_is_one_line_exit_2(command: str) -> None:
    """Without Redis the tools say so in one line and exit 2, like every command (collector.exitcodes)."""
    result = cli(command, "--redis-url", "redis://127.0.0.1:1/0", "--timeout" if command == "tail" else "--limit", "1")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
