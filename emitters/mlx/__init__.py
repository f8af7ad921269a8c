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
once, never twice. ``BatchGenerator`` (hence ``batch_generate``) becomes an
instrumented subclass (:mod:`emitters.mlx.batching`), and the stock
``mlx_lm.server`` reports one request scope and one generation per HTTP request
(:mod:`emitters.mlx.serving`; run it with ``python -m emitters.mlx.server``).
What a given mlx-lm does not offer is logged once and listed in the returned
instrumentation's ``missing_hooks``.

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

from emitters.mlx.instrumentation import Instrumentation, RuntimeHeartbeat
from emitters.mlx.models import LoadedModel, model_info, percentile, register_model
from emitters.mlx.patching import (
    current_instrumentation,
    generate,
    instrument,
    load,
    stream_generate,
    uninstrument,
)

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
