"""Telemetry for mlx-lm engines: one line to instrument, or explicit wrappers.

One line, before the engine imports ``stream_generate``/``load`` by name::

    from emitters import Emitter
    from emitters.mlx import instrument

    telemetry = instrument(Emitter("engine", "redis://localhost:6379/0"))
    model, tokenizer = mlx_lm.load("mlx-community/...")            # -> model.loaded
    text = mlx_lm.generate(model, tokenizer, prompt, max_tokens=64)  # -> generation.*

``instrument`` replaces ``load``, ``stream_generate`` and ``make_sampler`` in the
mlx-lm modules that export them (``mlx_lm``, ``mlx_lm.generate``, ``mlx_lm.utils``,
``mlx_lm.sample_utils`` and any other ``mlx_lm.*`` module already imported);
``uninstrument()`` puts the originals back. ``generate`` is not replaced: mlx-lm's
``generate`` calls ``stream_generate`` through its module, so it is covered
once, never twice.

Without patching, the same instrumentation is explicit::

    telemetry = Instrumentation(emitter)
    model, tokenizer = telemetry.load(path)
    for response in telemetry.stream_generate(model, tokenizer, prompt, request_id="r-1"):
        ...

Events of one generation (``generation.started``, one ``token.generated`` per
token, ``generation.completed`` or ``error``) share one span, with the
``request_id`` given by the caller (keyword ``request_id=``, or an enclosing
``emitter.context(request_id=...)``) or a generated one. Token events are routed
by the emitter's ``token_events`` mode (live pub/sub by default) and skipped
entirely when it is ``off``. Times come from ``time.perf_counter``.

mlx-lm is imported when an :class:`Instrumentation` is made, never by
``import emitters``.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
import math
import sys
import threading
import time
import weakref
from array import array
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from emitters import context as _context
from emitters.emitter import Emitter
from emitters.privacy import prompt_fields

__all__ = [
    "Instrumentation",
    "LoadedModel",
    "RuntimeHeartbeat",
    "register_model",
    "model_info",
    "instrument",
    "uninstrument",
    "current_instrumentation",
    "load",
    "stream_generate",
    "generate",
    "percentile",
]

_clock = time.perf_counter
# mlx-lm's own default when the caller gives no max_tokens.
_FALLBACK_MAX_TOKENS = 256
_PATCHED_NAMES = ("load", "stream_generate", "make_sampler")
# Sampler settings that generation.started carries, as make_sampler names them.
_SAMPLER_FIELDS = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p"}


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
_samplers: "weakref.WeakKeyDictionary[Callable[..., Any], dict[str, float | int]]" = weakref.WeakKeyDictionary()


def _remember_model(model: Any, info: LoadedModel) -> None:
    key = id(model)
    with _models_lock:
        previous = _models.pop(key, None)
        if previous is not None:
            previous[1].detach()
        _models[key] = (info, weakref.finalize(model, _forget_model_id, key))


def _forget_model_id(key: int) -> Optional[LoadedModel]:
    with _models_lock:
        entry = _models.pop(key, None)
    if entry is None:
        return None
    entry[1].detach()
    return entry[0]


def register_model(model: Any, name: str, path: Optional[str] = None) -> None:
    """Name a model that was loaded without instrumentation, for its generation events."""
    _remember_model(model, LoadedModel(name=name, path=path or name, quantization=None, parameters=None))


def model_info(model: Any) -> Optional[LoadedModel]:
    """What an instrumented load recorded about ``model``, if it was loaded that way."""
    entry = _models.get(id(model))
    return entry[0] if entry is not None else None


def _model_name(model: Any) -> str:
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


def _quantization(config: Mapping[str, Any]) -> int | str:
    for key in ("quantization", "quantization_config"):
        section = config.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("bits"), int):
            return section["bits"]
    return "none"


def _model_identity(path_or_hf_repo: Any) -> tuple[str, str]:
    """(name, path): a local directory by its name, a Hub repo by its id."""
    text = str(path_or_hf_repo)
    local = Path(text).expanduser()
    if local.exists():
        resolved = local.resolve()
        return resolved.name or text, str(resolved)
    return text, text


def _encode_prompt(tokenizer: Any, prompt: Any) -> tuple[Any, Optional[str], int]:
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


class Instrumentation:
    """mlx-lm wrappers that report to one :class:`~emitters.Emitter`.

    ``capture_prompts`` (None: the emitter's setting) sends prompt text; otherwise
    only its length and a keyed hash. ``capture_logprobs`` adds each token's
    log-probability to ``token.generated`` (one small mlx read per token).
    """

    def __init__(
        self,
        emitter: Emitter,
        *,
        capture_prompts: Optional[bool] = None,
        capture_logprobs: bool = False,
    ) -> None:
        self.emitter = emitter
        self.capture_prompts = emitter.capture_prompts if capture_prompts is None else capture_prompts
        self.capture_logprobs = capture_logprobs
        mlx_lm = importlib.import_module("mlx_lm")
        generate_module = importlib.import_module("mlx_lm.generate")
        sample_utils = importlib.import_module("mlx_lm.sample_utils")
        self._mx = importlib.import_module("mlx.core")
        self._load_fn: Callable[..., Any] = _original(mlx_lm.load)
        self._stream_fn: Callable[..., Any] = _original(generate_module.stream_generate)
        self._make_sampler_fn: Callable[..., Any] = _original(sample_utils.make_sampler)
        self._greedy = sample_utils.greedy_sampler
        self._load_signature = inspect.signature(self._load_fn)
        self._sampler_signature = inspect.signature(self._make_sampler_fn)
        self._stream_signature = inspect.signature(self._stream_fn)
        max_tokens = self._stream_signature.parameters.get("max_tokens")
        self._default_max_tokens = (
            max_tokens.default
            if max_tokens is not None and isinstance(max_tokens.default, int)
            else _FALLBACK_MAX_TOKENS
        )
        self._lock = threading.Lock()
        self._active = 0
        # Models this instrumentation loaded and that are still alive (for runtime.status).
        self._loaded: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()

    # -- load ---------------------------------------------------------------

    def load(self, path_or_hf_repo: str, *args: Any, **kwargs: Any) -> Any:
        """``mlx_lm.load`` that emits ``model.loaded`` (or ``error``, then re-raises)."""
        bound = self._load_signature.bind(path_or_hf_repo, *args, **kwargs)
        caller_wants_config = bool(bound.arguments.get("return_config", False))
        # The config tells the quantization; the caller gets the shape they asked for.
        bound.arguments["return_config"] = True
        name, path = _model_identity(path_or_hf_repo)
        started = _clock()
        try:
            model, tokenizer, config = self._load_fn(*bound.args, **bound.kwargs)
        except Exception as exc:
            self.emitter.error(exc, model=name, model_path=path, operation="load")
            raise
        load_ms = (_clock() - started) * 1000.0
        info = LoadedModel(
            name=name,
            path=path,
            quantization=_quantization(config),
            parameters=self._count_parameters(model),
        )
        _remember_model(model, info)
        self._loaded[id(model)] = model
        self.emitter.model_loaded(
            info.name,
            info.path,
            quantization=info.quantization,
            parameters=info.parameters,
            load_ms=load_ms,
            metadata={"model_type": str(config.get("model_type", "unknown"))},
        )
        return (model, tokenizer, config) if caller_wants_config else (model, tokenizer)

    @staticmethod
    def _count_parameters(model: Any) -> Optional[int]:
        # mlx-lm's helper walks the parameter tree and counts packed quantized
        # weights at their unpacked size.
        from mlx_lm.utils import get_total_parameters

        count = int(get_total_parameters(model))
        return count if count > 0 else None

    def model_unloaded(self, model: Any, reason: Optional[str] = None) -> None:
        """Report that an engine dropped ``model`` (the object or its name)."""
        if isinstance(model, str):
            name = model
        else:
            info = _forget_model_id(id(model))
            self._loaded.pop(id(model), None)
            name = info.name if info is not None else _model_name(model)
        self.emitter.model_unloaded(name, reason=reason)

    # -- sampling -----------------------------------------------------------

    def make_sampler(self, *args: Any, **kwargs: Any) -> Callable[..., Any]:
        """``make_sampler`` that remembers its settings for ``generation.started``."""
        sampler = self._make_sampler_fn(*args, **kwargs)
        bound = self._sampler_signature.bind(*args, **kwargs)
        bound.apply_defaults()
        if sampler is not self._greedy:
            settings = {
                field: bound.arguments[name]
                for name, field in _SAMPLER_FIELDS.items()
                if isinstance(bound.arguments.get(name), (int, float))
            }
            try:
                _samplers[sampler] = settings
            except TypeError:  # not weak-referenceable: its settings stay unknown
                pass
        return sampler

    def _sampler_fields(self, sampler: Any) -> dict[str, float | int]:
        if sampler is None or sampler is self._greedy:
            return {"temperature": 0.0}
        try:
            settings = _samplers.get(sampler)
        except TypeError:  # not weak-referenceable, so never registered
            settings = None
        if settings is None:
            return {}
        fields: dict[str, float | int] = {"temperature": float(settings.get("temperature", 0.0))}
        # Values at make_sampler's "disabled" setting mean the filter is off.
        if 0.0 < settings.get("top_p", 0.0) < 1.0:
            fields["top_p"] = float(settings["top_p"])
        if settings.get("top_k", 0) > 0:
            fields["top_k"] = int(settings["top_k"])
        if settings.get("min_p", 0.0) > 0.0:
            fields["min_p"] = float(settings["min_p"])
        return fields

    # -- generation ---------------------------------------------------------

    def stream_generate(
        self,
        model: Any,
        tokenizer: Any,
        prompt: Any,
        *args: Any,
        request_id: Optional[str] = None,
        model_name: Optional[str] = None,
        **kwargs: Any,
    ) -> Iterator[Any]:
        """``mlx_lm.stream_generate`` that reports the generation.

        ``request_id`` and ``model_name`` are ours; everything else goes to mlx-lm.
        The correlation scope is taken now, at the call, like mlx-lm's arguments.
        """
        return self._generation(
            contextvars.copy_context(), model, tokenizer, prompt, args, kwargs, request_id, model_name
        )

    def generate(self, model: Any, tokenizer: Any, prompt: Any, **kwargs: Any) -> str:
        """``mlx_lm.generate`` without ``verbose``: the concatenated text."""
        kwargs.pop("verbose", None)
        return "".join(response.text for response in self.stream_generate(model, tokenizer, prompt, **kwargs))

    def _generation(
        self,
        ctx: contextvars.Context,
        model: Any,
        tokenizer: Any,
        prompt: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        request_id: Optional[str],
        model_name: Optional[str],
    ) -> Iterator[Any]:
        emitter = self.emitter
        run = ctx.run  # every emit happens in the caller's scope, never across our yields
        name = model_name or _model_name(model)
        if request_id is None:
            outer = run(_context.current) or {}
            request_id = outer.get("request_id") or _context.new_trace_id()
        scope = emitter.context(request_id=request_id)
        run(scope.__enter__)
        with self._lock:
            self._active += 1
        inner: Any = None
        times = array("d")
        mark = times.append
        response: Any = None
        prompt_tokens = 0
        started = _clock()
        try:
            try:
                mlx_prompt, text, prompt_tokens = _encode_prompt(tokenizer, prompt)
                run(self._emit_started, name, request_id, text, prompt_tokens, args, kwargs)
                inner = self._stream_fn(model, tokenizer, mlx_prompt, *args, **kwargs)
                token_event = emitter.token_generated if emitter.token_events != "off" else None
                logprobs = self.capture_logprobs
                for response in inner:
                    mark(_clock())
                    if token_event is not None:
                        if logprobs:
                            run(
                                token_event, name, request_id, response.text, len(times) - 1,
                                logprob=response.logprobs[response.token].item(),
                            )  # fmt: skip
                        else:
                            run(token_event, name, request_id, response.text, len(times) - 1)
                    yield response
            except GeneratorExit:
                # The consumer stopped early: the generation ends here, as cancelled.
                run(self._emit_completed, name, request_id, response, prompt_tokens, started, _clock(), times, "cancelled")
                raise
            except Exception as exc:
                run(emitter.error, exc, model=name, operation="generate", tokens_generated=len(times))
                raise
            finished = times[-1] if times else _clock()
            run(self._emit_completed, name, request_id, response, prompt_tokens, started, finished, times, None)
        finally:
            if inner is not None:
                inner.close()
            with self._lock:
                self._active -= 1
            run(scope.__exit__, None, None, None)

    def _emit_started(
        self,
        name: str,
        request_id: str,
        text: Optional[str],
        prompt_tokens: int,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
    ) -> None:
        bound = self._stream_signature.bind_partial(None, None, None, *args, **kwargs).arguments
        max_tokens = bound.get("max_tokens", self._default_max_tokens)
        fields: dict[str, Any] = {"prompt_tokens": prompt_tokens}
        if isinstance(max_tokens, int) and max_tokens > 0:  # -1 means no limit
            fields["max_tokens"] = max_tokens
        extra = bound.get("kwargs") or {}
        fields.update(self._sampler_fields(extra.get("sampler")))
        if bound.get("draft_model") is not None:
            fields["speculative"] = True
        fields.update(prompt_fields(text, capture=self.capture_prompts, keyed_hash=self.emitter.keyed_hash))
        # event() rather than generation_started(): the helper would apply the
        # emitter's capture setting, and this instrumentation's may differ.
        self.emitter.event("generation.started", model=name, request_id=request_id, **fields)

    def _emit_completed(
        self,
        name: str,
        request_id: str,
        last: Any,
        prompt_tokens: int,
        started: float,
        finished: float,
        times: array,
        finish_reason: Optional[str],
    ) -> None:
        fields: dict[str, Any] = {}
        if times:
            fields["ttft_ms"] = (times[0] - started) * 1000.0
            gaps = sorted(later - earlier for earlier, later in zip(times, times[1:]))
            if gaps:
                fields["itl_p50_ms"] = percentile(gaps, 50) * 1000.0
                fields["itl_p99_ms"] = percentile(gaps, 99) * 1000.0
        if last is not None:
            prompt_tokens = last.prompt_tokens
            generation_tokens = last.generation_tokens
            fields["tokens_per_second"] = last.generation_tps
            fields["prompt_tps"] = last.prompt_tps
            fields["peak_memory_gb"] = last.peak_memory
            finish_reason = last.finish_reason or finish_reason
        else:
            generation_tokens = 0
        if finish_reason:
            fields["finish_reason"] = finish_reason
        self.emitter.generation_completed(
            name, request_id, prompt_tokens, generation_tokens, (finished - started) * 1000.0, **fields
        )

    # -- runtime status -----------------------------------------------------

    @property
    def active_generations(self) -> int:
        return self._active

    @property
    def models_loaded(self) -> int:
        return len(self._loaded)

    def runtime_status(self, status: Optional[str] = None, **fields: Any) -> None:
        """Emit ``runtime.status``; the status defaults to busy/ready by active generations."""
        active = self._active
        self.emitter.runtime_status(
            status or ("busy" if active else "ready"),
            fields.pop("models_loaded", self.models_loaded),
            active_tasks=active,
            memory_gb=self._mx.get_active_memory() / 1e9,
            peak_memory_gb=self._mx.get_peak_memory() / 1e9,
            **fields,
        )

    def heartbeat(self, interval: float = 10.0) -> "RuntimeHeartbeat":
        """Start a thread that emits ``runtime.status`` every ``interval`` seconds."""
        return RuntimeHeartbeat(self, interval).start()


class RuntimeHeartbeat:
    """A daemon thread emitting ``runtime.status`` periodically until stopped."""

    def __init__(self, instrumentation: Instrumentation, interval: float = 10.0) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.instrumentation = instrumentation
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mlx-telemetry-heartbeat", daemon=True)

    def start(self) -> "RuntimeHeartbeat":
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.instrumentation.runtime_status()
            if self._stop.wait(self.interval):
                return

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> "RuntimeHeartbeat":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- patching ---------------------------------------------------------------


def _original(function: Callable[..., Any]) -> Callable[..., Any]:
    """The mlx-lm function behind one of our patches (other wrappers are kept)."""
    while getattr(function, "_mlx_telemetry_patch", False):
        function = function.__wrapped__  # type: ignore[attr-defined]
    return function


def _patch(original: Callable[..., Any], replacement: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        return replacement(*args, **kwargs)

    patched._mlx_telemetry_patch = True  # type: ignore[attr-defined]
    return patched


@dataclass
class _Patches:
    instrumentation: Instrumentation
    applied: list[tuple[ModuleType, str, Callable[..., Any]]]
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


def instrument(
    emitter: Emitter,
    *,
    capture_prompts: Optional[bool] = None,
    capture_logprobs: bool = False,
    heartbeat_interval: Optional[float] = None,
) -> Instrumentation:
    """Patch mlx-lm so that every load and generation reports to ``emitter``.

    Calling it again re-targets the patches to the new emitter. With
    ``heartbeat_interval`` a ``runtime.status`` thread starts too (stopped by
    :func:`uninstrument`).
    """
    global _active
    with _patch_lock:
        _restore_locked()
        instrumentation = Instrumentation(
            emitter, capture_prompts=capture_prompts, capture_logprobs=capture_logprobs
        )
        heartbeat = RuntimeHeartbeat(instrumentation, heartbeat_interval) if heartbeat_interval is not None else None
        replacements = {
            "load": (instrumentation._load_fn, instrumentation.load),
            "stream_generate": (instrumentation._stream_fn, instrumentation.stream_generate),
            "make_sampler": (instrumentation._make_sampler_fn, instrumentation.make_sampler),
        }
        applied: list[tuple[ModuleType, str, Callable[..., Any]]] = []
        for module in _mlx_lm_modules():
            for attribute in _PATCHED_NAMES:
                original, replacement = replacements[attribute]
                if getattr(module, attribute, None) is original:
                    setattr(module, attribute, _patch(original, replacement))
                    applied.append((module, attribute, original))
        _active = _Patches(instrumentation, applied, heartbeat.start() if heartbeat is not None else None)
        return instrumentation


def uninstrument() -> bool:
    """Restore mlx-lm's functions; False if nothing was instrumented."""
    with _patch_lock:
        return _restore_locked()


def _restore_locked() -> bool:
    global _active
    if _active is None:
        return False
    for module, attribute, original in _active.applied:
        current = getattr(module, attribute, None)
        # Leave alone an attribute someone else replaced after us.
        if getattr(current, "_mlx_telemetry_patch", False):
            setattr(module, attribute, original)
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
