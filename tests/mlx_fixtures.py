"""Fixtures for the mlx-lm tests: the tiny model (built offline) and an engine emitter.

Import the fixtures into a test module by name. Nothing here touches the network:
the Hugging Face libraries are told so before they are first imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402
from typing import Any, Iterator  # noqa: E402

import pytest  # noqa: E402
import redis  # noqa: E402

from emitters import Emitter, decode  # noqa: E402
from emitters.events import Event  # noqa: E402
from emitters.streams import PAYLOAD_FIELD, stream_names  # noqa: E402

__all__ = ["tiny_model_dir", "tiny_model", "engine_emitter", "read_stream", "of_type"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama model, built once per session into a temporary directory."""
    from collector.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) loaded by mlx-lm's own, unpatched loader."""
    from mlx_lm.utils import load

    from emitters.mlx import register_model, uninstrument

    uninstrument()
    model, tokenizer = load(str(tiny_model_dir))
    register_model(model, "tiny-llama", str(tiny_model_dir))
    return model, tokenizer


@pytest.fixture
def engine_emitter(redis_url: str) -> Iterator[Emitter]:
    """A strict emitter (contract violations raise) with token events in the stream."""
    emitter = Emitter(
        "test-engine",
        redis_url,
        strict=True,
        token_events="stream",
        flush_interval=0.005,
        hash_secret="test-secret",
    )
    yield emitter
    emitter.close()


def read_stream(client: redis.Redis, stream: str = "events", prefix: str = "telemetry") -> list[Event]:
    """Every event in ``{prefix}:{stream}``, oldest first."""
    key = getattr(stream_names(prefix), stream)
    return [decode(fields[PAYLOAD_FIELD.encode()]) for _, fields in client.xrange(key)]


def of_type(events: list[Event], event_type: str) -> list[Any]:
    return [event for event in events if event.type == event_type]
