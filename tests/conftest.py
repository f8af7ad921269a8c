"""Shared fixtures: a real redis-server on loopback, never fakeredis."""

from __future__ import annotations

from typing import Iterator

import pytest
import redis

from collector.embedded import RedisProcess


@pytest.fixture(scope="session")
def _shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(data_dir=tmp_path_factory.mktemp("redis-shared"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_server(_shared_redis: RedisProcess) -> Iterator[RedisProcess]:
    """The session's redis-server, flushed before each test.

    Tests that stop, kill, pause or reconfigure Redis use ``redis_process``.
    """
    _shared_redis.start()  # a previous test may have broken it
    client = _shared_redis.client()
    client.flushall()
    client.close()
    yield _shared_redis


@pytest.fixture
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server this test may stop, SIGKILL, SIGSTOP or restart."""
    server = RedisProcess(data_dir=tmp_path_factory.mktemp("redis-private"), appendonly=True)
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()
