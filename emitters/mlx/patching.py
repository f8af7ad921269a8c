"""Patching mlx-lm in place (``instrument``/``uninstrument``) and the explicit, patch-free entry points."""

from __future__ import annotations

import importlib
import sys
import threading
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Optional

from emitters.emitter import Emitter
from emitters.mlx.batching import instrumented_batch_generator
from emitters.mlx.hooks import HookSet, mark, original_class, patch
from emitters.mlx.instrumentation import Instrumentation, RuntimeHeartbeat
from emitters.mlx.serving import install_server_hooks

__all__ = ["instrument", "uninstrument", "current_instrumentation", "load", "stream_generate", "generate"]

_PATCHED_NAMES = ("load", "stream_generate", "make_sampler")


@dataclass
class _Patches:
    instrumentation: Instrumentation
    hooks: HookSet
    heartbeat: Optional[RuntimeHeartbeat]


_active: Optional[_Patches] = None
_patch_lock = threading.Lock()


def _mlx_lm_modules() -> list[ModuleType]:
    for name in ("mlx_lm", "mlx_lm.generate", "mlx_lm.utils", "mlx_lm.sample_utils"):
        importlib.import_module(name)
    return [
        module
        for name, module in list(sys.modules.items())
        if isinstance(module, ModuleType) and (name == "mlx_lm" or name.startswith("mlx_lm."))
    ]


def _server_module(hooks: HookSet) -> Optional[ModuleType]:
    try:
        return importlib.import_module("mlx_lm.server")
    except ImportError as exc:  # an mlx-lm without the server, or one of its optional imports missing
        hooks.miss("mlx_lm.server", f"cannot be imported ({exc})")
        return None


def instrument(
    emitter: Emitter,
    *,
    capture_prompts: Optional[bool] = None,
    capture_logprobs: bool = False,
    heartbeat_interval: Optional[float] = None,
) -> Instrumentation:
    """Patch mlx-lm so that every load and generation reports to ``emitter``.

    Covers ``load``, ``stream_generate``/``generate``, ``BatchGenerator`` (so
    ``batch_generate`` too) and the stock ``mlx_lm.server`` (one request scope
    and one generation per HTTP request). Calling it again re-targets the
    patches to the new emitter. With ``heartbeat_interval`` a ``runtime.status``
    thread starts too (stopped by :func:`uninstrument`). What this mlx-lm does
    not offer is logged once and listed in the result's ``missing_hooks``; the
    rest works.
    """
    global _active
    with _patch_lock:
        _restore_locked()
        hooks = HookSet()
        instrumentation = Instrumentation(
            emitter, capture_prompts=capture_prompts, capture_logprobs=capture_logprobs
        )
        heartbeat = RuntimeHeartbeat(instrumentation, heartbeat_interval) if heartbeat_interval is not None else None
        server = _server_module(hooks)
        replacements = {
            "load": (instrumentation._load_fn, instrumentation.load),
            "stream_generate": (instrumentation._stream_fn, instrumentation.stream_generate),
            "make_sampler": (instrumentation._make_sampler_fn, instrumentation.make_sampler),
        }
        batch_generator = getattr(importlib.import_module("mlx_lm.generate"), "BatchGenerator", None)
        if isinstance(batch_generator, type):
            batch_generator = original_class(batch_generator)
            instrumented_batches = mark(instrumented_batch_generator(batch_generator, instrumentation))
        else:
            hooks.miss("mlx_lm.generate.BatchGenerator", "not found (no batched generations, no occupancy)")
        for module in _mlx_lm_modules():
            for attribute in _PATCHED_NAMES:
                original, replacement = replacements[attribute]
                # The server reports its requests itself (see serving): its
                # stream_generate only observes, so no generation counts twice.
                if module is server and attribute == "stream_generate":
                    continue
                if getattr(module, attribute, None) is original:
                    hooks.replace(module, attribute, patch(original, replacement))
            if batch_generator is not None and getattr(module, "BatchGenerator", None) is batch_generator:
                hooks.replace(module, "BatchGenerator", instrumented_batches)
        if server is not None:
            install_server_hooks(server, instrumentation, hooks)
        hooks.warn_missing()
        instrumentation.missing_hooks = tuple(hooks.missing)
        _active = _Patches(instrumentation, hooks, heartbeat.start() if heartbeat is not None else None)
        return instrumentation


def uninstrument() -> bool:
    """Restore mlx-lm's functions and classes; False if nothing was instrumented."""
    with _patch_lock:
        return _restore_locked()


def _restore_locked() -> bool:
    global _active
    if _active is None:
        return False
    _active.hooks.restore()
    if _active.heartbeat is not None:
        _active.heartbeat.stop()
    _active = None
    return True


def current_instrumentation() -> Optional[Instrumentation]:
    """The instrumentation :func:`instrument` installed, if any."""
    return _active.instrumentation if _active is not None else None


# -- explicit, patch-free entry points ------------------------------------------

_explicit: "weakref.WeakKeyDictionary[Emitter, Instrumentation]" = weakref.WeakKeyDictionary()


def _for(emitter: Emitter) -> Instrumentation:
    instrumentation = _explicit.get(emitter)
    if instrumentation is None:
        instrumentation = _explicit[emitter] = Instrumentation(emitter)
    return instrumentation


def load(emitter: Emitter, path_or_hf_repo: str, *args: Any, **kwargs: Any) -> Any:
    """``mlx_lm.load`` reporting to ``emitter``, without patching anything."""
    return _for(emitter).load(path_or_hf_repo, *args, **kwargs)


def stream_generate(emitter: Emitter, model: Any, tokenizer: Any, prompt: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """``mlx_lm.stream_generate`` reporting to ``emitter``, without patching anything."""
    return _for(emitter).stream_generate(model, tokenizer, prompt, *args, **kwargs)


def generate(emitter: Emitter, model: Any, tokenizer: Any, prompt: Any, **kwargs: Any) -> str:
    """``mlx_lm.generate`` reporting to ``emitter``, without patching anything."""
    return _for(emitter).generate(model, tokenizer, prompt, **kwargs)

