"""What instrumented loads learnt about models, and small helpers shared by the mlx modules."""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    "LoadedModel",
    "register_model",
    "model_info",
    "remember_model",
    "forget_model_id",
    "model_name",
    "percentile",
    "quantization",
    "model_identity",
    "encode_prompt",
]


@dataclass(frozen=True)
class LoadedModel:
    """What an instrumented ``load`` learnt about a model."""

    name: str
    path: str
    quantization: Optional[int | str]
    parameters: Optional[int]


# id(model) -> LoadedModel. mlx modules are dicts (unhashable), so entries are
# keyed by id and removed by a weakref finalizer when the model dies.
_models: dict[int, tuple[LoadedModel, weakref.finalize]] = {}
# Reentrant: a finalizer may run (garbage collection) while this thread holds it.
_models_lock = threading.RLock()

# sampler function -> the make_sampler settings it was built with.

def remember_model(model: Any, info: LoadedModel) -> None:
    key = id(model)
    with _models_lock:
        previous = _models.pop(key, None)
        if previous is not None:
            previous[1].detach()
        _models[key] = (info, weakref.finalize(model, forget_model_id, key))


def forget_model_id(key: int) -> Optional[LoadedModel]:
    with _models_lock:
        entry = _models.pop(key, None)
    if entry is None:
        return None
    entry[1].detach()
    return entry[0]


def register_model(model: Any, name: str, path: Optional[str] = None) -> None:
    """Name a model that was loaded without instrumentation, for its generation events."""
    remember_model(model, LoadedModel(name=name, path=path or name, quantization=None, parameters=None))


def model_info(model: Any) -> Optional[LoadedModel]:
    """What an instrumented load recorded about ``model``, if it was loaded that way."""
    entry = _models.get(id(model))
    return entry[0] if entry is not None else None


def model_name(model: Any) -> str:
    info = model_info(model)
    if info is not None:
        return info.name
    return str(getattr(model, "model_type", None) or type(model).__name__)


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (``pct`` in 0..100)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def quantization(config: Mapping[str, Any]) -> int | str:
    for key in ("quantization", "quantization_config"):
        section = config.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("bits"), int):
            return section["bits"]
    return "none"


def model_identity(path_or_hf_repo: Any) -> tuple[str, str]:
    """(name, path): a local directory by its name, a Hub repo by its id."""
    text = str(path_or_hf_repo)
    local = Path(text).expanduser()
    if local.exists():
        resolved = local.resolve()
        return resolved.name or text, str(resolved)
    return text, text


def encode_prompt(tokenizer: Any, prompt: Any) -> tuple[Any, Optional[str], int]:
    """(prompt for mlx-lm, prompt text if any, prompt token count).

    A text prompt is tokenized here exactly as ``stream_generate`` would, and the
    ids are passed on, so it is counted before generation starts without being
    tokenized twice.
    """
    if isinstance(prompt, str):
        bos = getattr(tokenizer, "bos_token", None)
        ids = tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos))
        return ids, prompt, len(ids)
    size = getattr(prompt, "size", None)
    return prompt, None, int(size) if isinstance(size, int) else len(prompt)

