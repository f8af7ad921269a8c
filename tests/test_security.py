"""Redis authentication, least-privilege ACL users, TLS, and secrets kept out of the logs.

Everything runs for real: a redis-server with an ACL file (and TLS with a CA
made at test time, see tests/tls.py), the emitter in this process and the
collector daemon as a subprocess whose whole output is captured.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator

import msgspec
import pytest
import redis

from collector.embedded import RedisProcess
from collector.sinks.jsonl import segment_files
from emitters import Emitter
from emitters.events import decode
from emitters.streams import PAYLOAD_FIELD, stream_names
from tests.support.waiting import wait_for
from tests.tls import Pki, make_test_pki

NAMES = stream_names("telemetry")
GROUP = "telemetry-collectors"
HASH_SECRET = "test-hash-secret"

# The ACL rule set the pipeline needs (Redis >= 7.0), documented in README "Redis ACL users".
# Each user may touch only the telemetry keys and channels and run only these commands.
EMITTER_RULES = (
    # The batch Lua script: SET NX on the batch token, XADD to both streams, PUBLISH live tokens;
    # over the cap, the exact trim and its loss accounting (issue #16).
    "resetkeys ~telemetry:events ~telemetry:errors ~telemetry:events:batch:* ~telemetry:accounting ~telemetry:losses "
    "resetchannels &telemetry:live "
    "-@all +ping +evalsha +script|load +xadd +set +publish +xlen +xrange +xtrim +xinfo|groups +xgroup|setid +hset +hincrby"
)
COLLECTOR_RULES = (
    "resetkeys ~telemetry:* resetchannels &telemetry:* -@all +ping +client|setname "
    # consuming, claiming, acking, dead-lettering, lag, retention, idle-consumer cleanup (a script)
    "+xgroup|create +xgroup|delconsumer +xreadgroup +xautoclaim +xpending +xack +xadd +xlen +xtrim "
    "+xinfo|groups +xinfo|consumers +evalsha +script|load "
    # loss accounting: counters, the losses stream (read each heartbeat), booked in a transaction
    "+xrange +multi +exec +xinfo|stream +xgroup|setid +script|exists "
    # heartbeat hash
    "+hset +expire +del "
    # the alert stage's shared state (its scripts run these), when alerts are enabled
    "+hget +hgetall +hdel +hincrby +hincrbyfloat +pexpire +pexpireat +zadd +zscore +zrange "
    "+zremrangebyscore +zremrangebyrank +rpush +lrange +llen +lset +xrevrange +publish +sadd"
)
OPS_RULES = (
    # telemetry-collector health/tail/search/timeline/errors/dlq: reads, the live channel, DLQ replay/purge
    "resetkeys ~telemetry:* resetchannels &telemetry:* -@all +ping +client|setname "
    "+xrange +xrevrange +xread +xlen +xinfo|stream +xinfo|groups +xinfo|consumers +xpending "
    "+hget +hgetall +exists +scan +time +info +memory|usage +subscribe +unsubscribe "
    "+xadd +xdel +xtrim +evalsha +script|load"
)
# redis-py announces itself with CLIENT SETINFO on connect and ignores a refusal.
IGNORED_DENIALS = {"client|setinfo"}


class Credentials(msgspec.Struct, frozen=True):
    admin: str
    emitter: str
    collector: str
    ops: str

    def all(self) -> list[str]:
        return [self.admin, self.emitter, self.collector, self.ops]


def acl_file_text(passwords: Credentials) -> str:
    return "".join(
        f"user {name} on >{password} {rules}\n"
        for name, password, rules in [
            ("default", passwords.admin, "~* &* +@all"),
            ("telemetry-emitter", passwords.emitter, EMITTER_RULES),
            ("telemetry-collector", passwords.collector, COLLECTOR_RULES),
            ("telemetry-ops", passwords.ops, OPS_RULES),
        ]
    )


@pytest.fixture
def passwords() -> Credentials:
    """Fresh random passwords per test, so any match in a log is a real leak."""
    return Credentials(*(f"pw-{role}-{secrets.token_hex(12)}" for role in ("admin", "emitter", "collector", "ops")))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


SecuredRedisFactory = Callable[..., RedisProcess]


class MutualTlsRedis(RedisProcess):
    """A TLS redis-server that also demands a client certificate (tls-auth-clients yes).

    Its own clients, including the readiness probe, present the test client certificate.
    """

    def __init__(self, *, pki: Pki, **kwargs: object) -> None:
        super().__init__(tls=pki.server, **kwargs)  # type: ignore[arg-type]
        self.config["tls-auth-clients"] = "yes"  # after RedisProcess's own "no", so it wins
        self.pki = pki

    def client(self, **kwargs: object) -> redis.Redis:
        certs = {"ssl_certfile": str(self.pki.client_cert), "ssl_keyfile": str(self.pki.client_key)}
        return super().client(**{**certs, **kwargs})


@pytest.fixture
def secured_redis(tmp_path: Path, passwords: Credentials) -> Iterator[SecuredRedisFactory]:
    """Start a redis-server whose users come from an ACL file; optionally TLS-only."""
    started: list[RedisProcess] = []

    def start(*, tls: Pki | None = None, client_certs: bool = False) -> RedisProcess:
        acl = tmp_path / "users.acl"
        acl.write_text(acl_file_text(passwords))
        acl.chmod(0o600)
        data_dir = tmp_path / f"redis-{len(started)}"
        data_dir.mkdir()
        options = {"data_dir": data_dir, "config": {"aclfile": str(acl)}, "appendonly": True}
        if client_certs:
            assert tls is not None
            server: RedisProcess = MutualTlsRedis(pki=tls, **options)
        else:
            server = RedisProcess(tls=tls.server if tls else None, **options)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


def admin_client(server: RedisProcess, passwords: Credentials) -> redis.Redis:
    return server.client(password=passwords.admin)


def user_url(server: RedisProcess, user: str, password: str | None = None) -> str:
    scheme = "rediss" if server.tls else "redis"
    auth = f"{user}:{password}" if password else user
    return f"{scheme}://{auth}@{server.host}:{server.port}/0"


def denials(admin: redis.Redis) -> list[tuple[str, str, str]]:
    """(user, reason, object) per ACL LOG entry: every command, key or channel a user was refused."""
    return [
        (str(entry["username"]), str(entry["reason"]), str(entry["object"]))
        for entry in admin.acl_log()
        if str(entry["object"]) not in IGNORED_DENIALS
    ]


class CollectorProcess:
    """`telemetry-collector run` as a subprocess, all of its output kept in a file."""

    def __init__(self, workdir: Path, env: dict[str, str], *, extra_config: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_dir = workdir / "logs"
        self.log_path = workdir / "collector.out"
        config = workdir / "collector.toml"
        config.write_text(
            "[collector]\n"
            'claim_idle = "1s"\nheartbeat_interval = "1s"\ntrim_interval = "1s"\n'
            'consumer_idle_timeout = "1s"\nblock_ms = 100\n' + extra_config
        )
        argv = [
            sys.executable, "-c", "from collector.cli import main; main()", "run",
            "--config", str(config), "--jsonl-dir", str(self.jsonl_dir),
            "--log-format", "json", "--log-level", "debug",
        ]  # fmt: skip
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("TELEMETRY_", "NOTIFY_SOCKET"))}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(argv, env={**clean, **env}, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """Poll ``condition`` until true; fail with the collector's output if it never is."""
        done = threading.Event()
        for _ in range(int(timeout / 0.05)):
            if condition():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"collector exited ({self.proc.returncode}) waiting for {what}:\n{self.output()}")
            done.wait(0.05)
        pytest.fail(f"timed out waiting for {what}:\n{self.output()[-4000:]}")

    def delivered_ids(self) -> set[str]:
        ids = set()
        for stem in ("events", "errors"):
            for path in segment_files(self.jsonl_dir, stem):
                for line in path.read_bytes().splitlines():
                    try:
                        ids.add(msgspec.json.decode(line)["id"])
                    except msgspec.DecodeError:
                        continue  # a line being written right now
        return ids

    def final_counters(self) -> dict[str, int]:
        """The counters of the `collector_stopped` log line."""
        for line in reversed(self.output().splitlines()):
            if '"collector_stopped"' in line:
                return msgspec.json.decode(line)  # type: ignore[no-any-return]
        pytest.fail(f"no collector_stopped line:\n{self.output()[-4000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"collector ignored SIGTERM:\n{self.output()[-4000:]}")


@pytest.fixture
def collectors(tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    started: list[CollectorProcess] = []

    def start(env: dict[str, str], **kwargs: str) -> CollectorProcess:
        collector = CollectorProcess(tmp_path / f"collector-{len(started)}", env, **kwargs)
        started.append(collector)
        return collector

    yield start
    for collector in started:
        if collector.proc.poll() is None:
            collector.proc.kill()
            collector.proc.wait()


def collector_env(server: RedisProcess, passwords: Credentials, **extra: str) -> dict[str, str]:
    """The collector's environment as an EnvironmentFile would give it: URL without the password."""
    return {
        "TELEMETRY_REDIS_URL": user_url(server, "telemetry-collector"),
        "TELEMETRY_REDIS_PASSWORD": passwords.collector,
        **extra,
    }


def stream_ids(admin: redis.Redis) -> set[str]:
    """Event ids of every valid entry now in the events and errors streams."""
    ids = set()
    for key in (NAMES.events, NAMES.errors):
        for _, fields in admin.xrange(key):
            try:
                ids.add(decode(fields[PAYLOAD_FIELD.encode()]).id)
            except msgspec.DecodeError:
                continue  # the garbage this test wrote on purpose
    return ids


def emit_mix(emitter: Emitter, count: int) -> None:
    """Events of every route: events stream, errors stream, live pub/sub, custom types, engine gauges."""
    for n in range(count):
        emitter.runtime_status("busy", 1, active_tasks=n)
        emitter.model_loaded(f"model-{n}", f"/models/{n}", load_ms=1.5)
        emitter.generation_completed("m", f"req-{n}", 10, 20, 30.0)
        emitter.token_generated("m", f"req-{n}", "tok", n)
        emitter.event("job.created", job_id=f"job-{n}")
        emitter.error(RuntimeError(f"boom {n}"), model="m")
    assert emitter.flush(30), emitter.stats()


def group_pending(admin: redis.Redis) -> int:
    return sum(admin.xpending(key, GROUP)["pending"] for key in (NAMES.events, NAMES.errors))


def assert_no_secret(text: str, passwords: Credentials) -> None:
    for password in passwords.all():
        assert password not in text, "a password leaked into the collector's output"


class TestRedisAcl:
    @pytest.mark.slow
    def test_pipeline_works_with_least_privilege_users(
        self,
        secured_redis: SecuredRedisFactory,
        collectors: Callable[..., CollectorProcess],
        passwords: Credentials,
    ) -> None:
        """Emitter and collector each under their own ACL user: every path (deliver, claim,
        dead-letter, idle-consumer removal, heartbeat, trim) runs without a single refusal."""
        server = secured_redis()
        admin = admin_client(server, passwords)
        emitter = Emitter("secure-svc", user_url(server, "telemetry-emitter", passwords.emitter), strict=True, hash_secret=HASH_SECRET)
        emit_mix(emitter, 20)
        # Left by earlier collectors: one died holding an entry (to be claimed after claim_idle),
        # one sits idle with nothing pending (to be removed).
        for key in (NAMES.events, NAMES.errors):
            admin.xgroup_create(key, GROUP, id="0")
        assert admin.xreadgroup(GROUP, "dead-consumer", {NAMES.events: ">"}, count=1)
        admin.xgroup_createconsumer(NAMES.errors, GROUP, "idle-consumer")
        admin.xadd(NAMES.events, {PAYLOAD_FIELD: b"\xc1 not msgpack"})
        collector = collectors(collector_env(server, passwords))
        emit_mix(emitter, 6)
        emitter.close()

        expected = stream_ids(admin)
        assert len(expected) == 26 * 5  # token.generated goes to pub/sub only
        collector.wait_for(lambda: collector.delivered_ids() >= expected, "every event in the JSONL files")
        collector.wait_for(lambda: admin.xlen(NAMES.dead) == 1, "the garbage entry dead-lettered")
        collector.wait_for(lambda: group_pending(admin) == 0, "the pending list to drain")
        collector.wait_for(
            lambda: "idle-consumer" not in {c["name"] for c in admin.xinfo_consumers(NAMES.errors, GROUP)},
            "the idle consumer to be removed",
        )
        health = subprocess.run(
            [sys.executable, "-c", "from collector.cli import main; main()", "health", "--json"],
            env={
                **os.environ,
                "TELEMETRY_REDIS_URL": user_url(server, "telemetry-ops"),
                "TELEMETRY_REDIS_PASSWORD": passwords.ops,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert collector.stop() == 0
        assert health.returncode != 2, health.stdout + health.stderr  # 2: unreachable (or refused)
        assert denials(admin) == []
        assert admin.hlen(NAMES.engines) == 1  # the /metrics stage's board of engine gauges
        counters = collector.final_counters()
        assert counters["claimed"] >= 1 and counters["dead_lettered"] == 1
        assert_no_secret(collector.output() + health.stdout + health.stderr, passwords)

    def test_users_cannot_step_outside_their_rules(
        self, secured_redis: SecuredRedisFactory, passwords: Credentials
    ) -> None:
        """The ACL is real: no anonymous access, no other keys or channels, no admin commands."""
        server = secured_redis()
        admin = admin_client(server, passwords)
        anonymous = server.client()
        emitter = server.client(username="telemetry-emitter", password=passwords.emitter)
        collector = server.client(username="telemetry-collector", password=passwords.collector)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError):
            server.client(username="telemetry-collector", password=passwords.emitter).ping()
        refused: list[Callable[[], object]] = [
            lambda: emitter.xrevrange(NAMES.events),  # emitters write, they do not read (their script trims)
            lambda: emitter.xadd("billing:events", {"event": b"x"}),
            lambda: emitter.set("telemetry:collector:fake", "1"),  # not a batch token key
            lambda: emitter.publish("other-channel", "x"),
            lambda: collector.set("billing:balance", "0"),
            lambda: collector.flushall(),
            lambda: collector.config_get("requirepass"),
            lambda: collector.keys("*"),
            lambda: collector.eval("return 1", 0),  # only known scripts, by hash
        ]
        for attempt in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()
        assert emitter.xadd(NAMES.events, {"event": b"x"})
        assert collector.xlen(NAMES.events) == 1
        reasons = sorted(reason for _, reason, _ in denials(admin))
        # collector.set is refused as a command (it never needs SET), the other SET as a key.
        assert reasons == ["auth"] + ["channel"] + ["command"] * 6 + ["key"] * 2


class TestTls:
    @pytest.mark.slow
    def test_pipeline_over_tls_with_acl_users(
        self,
        secured_redis: SecuredRedisFactory,
        collectors: Callable[..., CollectorProcess],
        passwords: Credentials,
        pki: Pki,
    ) -> None:
        """rediss:// end to end: the server speaks only TLS, verified against the test CA."""
        server = secured_redis(tls=pki)
        admin = admin_client(server, passwords)
        with pytest.raises(redis.ConnectionError):
            redis.Redis(host=server.host, port=server.port, password=passwords.admin, socket_timeout=5).ping()
        emitter = Emitter(
            "tls-svc",
            user_url(server, "telemetry-emitter", passwords.emitter),
            strict=True,
            hash_secret=HASH_SECRET,
            redis_options={"ssl_ca_certs": str(pki.ca_cert)},
        )
        emit_mix(emitter, 10)
        emitter.close()
        expected = stream_ids(admin)
        assert len(expected) == 50
        collector = collectors(collector_env(server, passwords, TELEMETRY_REDIS_TLS_CA_FILE=str(pki.ca_cert)))
        collector.wait_for(lambda: collector.delivered_ids() >= expected, "every event over TLS")
        collector.wait_for(lambda: group_pending(admin) == 0, "the pending list to drain")
        assert collector.stop() == 0
        assert denials(admin) == []
        assert_no_secret(collector.output(), passwords)

    def test_an_untrusted_server_certificate_is_refused(
        self,
        secured_redis: SecuredRedisFactory,
        collectors: Callable[..., CollectorProcess],
        passwords: Credentials,
        pki: Pki,
    ) -> None:
        """Without the CA the collector does not connect: at start it exits 2 (a config error systemd
        does not retry) with one line naming the verification failure and TELEMETRY_REDIS_TLS_CA_FILE."""
        server = secured_redis(tls=pki)
        collector = collectors(collector_env(server, passwords))
        assert collector.proc.wait(timeout=60) == 2
        assert "CERTIFICATE_VERIFY_FAILED" in collector.output() and "TELEMETRY_REDIS_TLS_CA_FILE" in collector.output()
        assert '"collector_ready"' not in collector.output()
        assert_no_secret(collector.output(), passwords)

    @pytest.mark.slow
    def test_client_certificates_when_redis_requires_them(
        self,
        secured_redis: SecuredRedisFactory,
        collectors: Callable[..., CollectorProcess],
        passwords: Credentials,
        pki: Pki,
    ) -> None:
        """With tls-auth-clients yes a collector without a client certificate is turned away;
        with TELEMETRY_REDIS_TLS_CERT_FILE/KEY_FILE it delivers."""
        server = secured_redis(tls=pki, client_certs=True)
        admin = admin_client(server, passwords)
        admin.xadd(NAMES.events, {PAYLOAD_FIELD: b"\xc1"})  # anything, to see it dead-lettered
        env = collector_env(server, passwords, TELEMETRY_REDIS_TLS_CA_FILE=str(pki.ca_cert))
        refused = collectors(env)
        # TLS 1.3 sends "certificate required" after the handshake: the start-up probe reads either that
        # alert (a lasting TLS problem: exit 2 naming the client-certificate variables) or a dropped
        # connection (retried with backoff). Both turn the collector away; which one is a race.
        wait_for(
            lambda: '"redis_unavailable"' in refused.output() or refused.proc.poll() is not None,
            what="the refused handshake",
        )
        if refused.proc.poll() is None:
            assert refused.stop() == 0
        else:
            assert refused.proc.returncode == 2 and "TELEMETRY_REDIS_TLS_CERT_FILE" in refused.output()
        accepted = collectors(
            {
                **env,
                "TELEMETRY_REDIS_TLS_CERT_FILE": str(pki.client_cert),
                "TELEMETRY_REDIS_TLS_KEY_FILE": str(pki.client_key),
            }
        )
        accepted.wait_for(lambda: admin.xlen(NAMES.dead) == 1, "delivery with a client certificate")
        assert accepted.stop() == 0
        assert_no_secret(refused.output() + accepted.output(), passwords)


class TestSecretsStayOutOfLogs:
    @pytest.mark.slow
    def test_inline_url_password_never_logged_through_failures(
        self,
        secured_redis: SecuredRedisFactory,
        collectors: Callable[..., CollectorProcess],
        passwords: Credentials,
        tmp_path: Path,
    ) -> None:
        """Password inside TELEMETRY_REDIS_URL, debug logging, a Redis restart under the collector,
        a wrong password, and check-config: no output line ever carries a password."""
        server = secured_redis()
        admin = admin_client(server, passwords)
        emitter = Emitter("leak-svc", user_url(server, "telemetry-emitter", passwords.emitter), strict=True, hash_secret=HASH_SECRET)
        collector = collectors({"TELEMETRY_REDIS_URL": user_url(server, "telemetry-collector", passwords.collector)})
        emit_mix(emitter, 3)
        first = stream_ids(admin)
        collector.wait_for(lambda: collector.delivered_ids() >= first, "delivery before the restart")
        server.restart()
        emit_mix(emitter, 3)
        emitter.close()
        everything = stream_ids(admin)
        collector.wait_for(lambda: collector.delivered_ids() >= everything, "delivery after the restart")
        heartbeats = [admin.hgetall(key) for key in admin.scan_iter(f"{NAMES.heartbeat_prefix}*")]
        assert collector.stop() == 0
        assert "redis_connection_lost" in collector.output()

        wrong = collectors({"TELEMETRY_REDIS_URL": user_url(server, "telemetry-collector", passwords.ops)})
        assert wrong.proc.wait(timeout=60) == 2  # refused credentials at start: exit 2, naming the fix
        assert "refused the password in the URL" in wrong.output()

        config = tmp_path / "leaky.toml"
        config.write_text(f'[redis]\nurl = "{user_url(server, "telemetry-collector", passwords.collector)}"\n')
        shown = subprocess.run(
            [sys.executable, "-c", "from collector.cli import main; main()", "check-config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert "telemetry-collector:***@" in shown.stdout

        for text in (collector.output(), wrong.output(), shown.stdout + shown.stderr, repr(heartbeats)):
            assert_no_secret(text, passwords)
