"""The stock ``mlx_lm.server``, instrumented: one request scope and one generation per HTTP request.

Hooks, all on the server module's own names (looked up when the server runs):

- ``APIHandler.do_POST``: the request scope, a span named after the route
  (``POST /v1/chat/completions``) that continues the caller's trace when the
  request carries a W3C ``traceparent`` header. A generation still open when
  the handler returns (the client went away mid-stream) completes there, as
  ``cancelled``.
- ``ResponseGenerator.generate``: the request's generation, as the handler sees
  it. ``generation.started`` when the generation thread has accepted the request
  (prompt tokenized, prompt cache looked up); then each response the handler
  receives is a token, and ``generation.completed`` comes when the last one has
  arrived, with exactly the counts the server puts in the reply's ``usage``:
  ``len(ctx.prompt)``, the responses received and ``ctx.prompt_cache_count``.
- ``GenerationContext``: a subclass that carries the request's
  :class:`~emitters.mlx.batching.SequenceStats` to the generation thread, where
  the instrumented ``BatchGenerator`` (batched path) or ``stream_generate``
  (sequential path: draft model, seed, KV quantization, images) fills in
  prefill timing, decode batch sizes and speculative acceptance.

All events are emitted on the handler's thread, inside the request scope.
"""

from __future__ import annotations

import contextvars
import functools
import time
from array import array
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from emitters.mlx.batching import SequenceStats, claim, hand_over, token_timing
from emitters.mlx.hooks import HookSet, mark, original, original_class, patch
from emitters.mlx.models import model_name

if TYPE_CHECKING:
    from emitters.mlx.instrumentation import Instrumentation

__all__ = ["install_server_hooks", "ROUTES"]

_clock = time.perf_counter

# The routes mlx_lm.server serves over POST; anything else is named "POST" (bounded span names).
ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/chat/completions"})

# The HTTP request the current handler thread is serving.
_request: contextvars.ContextVar[Optional["_Request"]] = contextvars.ContextVar("mlx_telemetry_request", default=None)


class _Request:
    __slots__ = ("handler", "received", "generation")

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.received = _clock()
        self.generation: Optional[_Generation] = None


class _Generation:
    """One request's generation, reported exactly once."""

    def __init__(
        self, instrumentation: "Instrumentation", model: str, request_id: str, received: float, ctx: Any, args: Any
    ) -> None:
        self.instrumentation = instrumentation
        self.model = model
        self.request_id = request_id
        self.received = received
        self.ctx = ctx
        self.stats: SequenceStats = getattr(ctx, "telemetry_stats", None) or SequenceStats()
        self.times = array("d")
        self.finish_reason: Optional[str] = None
        self.reported = False
        instrumentation.adjust_active(1)
        self._started(args)

    def _started(self, args: Any) -> None:
        fields: dict[str, Any] = {"prompt_tokens": len(self.ctx.prompt)}
        cached = getattr(self.ctx, "prompt_cache_count", -1)
        if isinstance(cached, int) and cached >= 0:
            fields["cached_prompt_tokens"] = cached
        fields.update(_request_settings(args))
        self.instrumentation.emitter.event(
            "generation.started", model=self.model, request_id=self.request_id, **fields
        )

    def iterate(self, responses: Iterator[Any]) -> Iterator[Any]:
        mark_time = self.times.append
        try:
            for response in responses:
                mark_time(_clock())
                if response.finish_reason is not None:
                    self.finish_reason = response.finish_reason
                yield response
        except GeneratorExit:
            self.completed("cancelled")
            raise
        except Exception as exc:
            self.failed(exc)
            raise
        self.completed(self.finish_reason or "stop")

    def completed(self, finish_reason: str) -> None:
        if self.reported:
            return
        self.reported = True
        self.instrumentation.adjust_active(-1)
        stats, times = self.stats, self.times
        finished = times[-1] if times else _clock()
        fields: dict[str, Any] = {"finish_reason": finish_reason}
        cached = getattr(self.ctx, "prompt_cache_count", -1)
        if isinstance(cached, int) and cached >= 0:
            fields["cached_prompt_tokens"] = cached
        if stats.prefill_start is not None:
            fields["queue_wait_ms"] = max(stats.prefill_start - self.received, 0.0) * 1000.0
        fields.update(stats.prefill_fields())
        fields.update(token_timing(self.received, stats.prefill_end, times))
        if stats.draft_tokens and times:
            fields["draft_tokens"] = stats.draft_tokens
            fields["draft_acceptance"] = min(stats.draft_tokens / len(times), 1.0)
        fields.update(self.instrumentation.memory_fields())
        self.instrumentation.emitter.generation_completed(
            self.model,
            self.request_id,
            len(self.ctx.prompt),
            len(times),
            max(finished - self.received, 0.0) * 1000.0,
            **fields,
        )

    def failed(self, exc: BaseException) -> None:
        if self.reported:
            return
        self.reported = True
        self.instrumentation.adjust_active(-1)
        self.instrumentation.emitter.error(
            exc, model=self.model, operation="generate", tokens_generated=len(self.times)
        )


def _request_settings(args: Any) -> dict[str, Any]:
    """max_tokens and sampler settings from the server's GenerationArguments (absent ones skipped)."""
    fields: dict[str, Any] = {}
    max_tokens = getattr(args, "max_tokens", None)
    if isinstance(max_tokens, int) and max_tokens > 0:
        fields["max_tokens"] = max_tokens
    sampling = getattr(args, "sampling", None)
    temperature = getattr(sampling, "temperature", None)
    if isinstance(temperature, (int, float)) and temperature >= 0:
        fields["temperature"] = float(temperature)
        top_p = getattr(sampling, "top_p", None)
        if isinstance(top_p, (int, float)) and 0.0 < top_p < 1.0:
            fields["top_p"] = float(top_p)
        top_k = getattr(sampling, "top_k", None)
        if isinstance(top_k, int) and top_k > 0:
            fields["top_k"] = top_k
        min_p = getattr(sampling, "min_p", None)
        if isinstance(min_p, (int, float)) and 0.0 < min_p <= 1.0:
            fields["min_p"] = float(min_p)
    penalty = getattr(getattr(args, "logits", None), "repetition_penalty", None)
    if isinstance(penalty, (int, float)) and penalty > 0:
        fields["repetition_penalty"] = float(penalty)
    seed = getattr(args, "seed", None)
    if isinstance(seed, int):
        fields["seed"] = seed
    return fields


def install_server_hooks(server: Any, instrumentation: "Instrumentation", hooks: HookSet) -> None:
    """Instrument the ``mlx_lm.server`` module; what is missing is recorded in ``hooks``."""
    emitter = instrumentation.emitter

    handler_class = getattr(server, "APIHandler", None)
    if handler_class is None or not callable(getattr(handler_class, "do_POST", None)):
        hooks.miss("mlx_lm.server.APIHandler.do_POST", "not found (no request scopes, no traceparent)")
    else:
        do_post = original(handler_class.do_POST)

        def do_POST(handler: Any) -> None:
            path = str(getattr(handler, "path", "")).split("?", 1)[0]
            name = f"POST {path}" if path in ROUTES else "POST"
            headers = getattr(handler, "headers", None)
            traceparent = headers.get("traceparent") if headers is not None else None
            with emitter.context(name=name, traceparent=traceparent):
                request = _Request(handler)
                token = _request.set(request)
                try:
                    do_post(handler)
                finally:
                    _request.reset(token)
                    if request.generation is not None:
                        # Still open: the handler left before the last token (client gone).
                        request.generation.completed("cancelled")

        hooks.replace(handler_class, "do_POST", patch(do_post, do_POST))

    generator_class = getattr(server, "ResponseGenerator", None)
    if generator_class is None or not callable(getattr(generator_class, "generate", None)):
        hooks.miss("mlx_lm.server.ResponseGenerator.generate", "not found (no generation events from the server)")
    else:
        generate = original(generator_class.generate)
        hooks.replace(generator_class, "generate", patch(generate, _generate_hook(instrumentation, generate)))

    context_class = getattr(server, "GenerationContext", None)
    if not isinstance(context_class, type):
        hooks.miss("mlx_lm.server.GenerationContext", "not found (no prefill timing, queue wait or batch sizes per request)")
    else:
        hooks.replace(server, "GenerationContext", mark(_tracked_context(original_class(context_class))))

    stream = getattr(server, "stream_generate", None)
    if not callable(stream):
        hooks.miss("mlx_lm.server.stream_generate", "not found (no prefill timing on the sequential path)")
    else:
        hooks.replace(server, "stream_generate", patch(original(stream), _observed_stream(original(stream))))


def _generate_hook(instrumentation: "Instrumentation", generate: Callable[..., Any]) -> Callable[..., Any]:
    def hooked(response_generator: Any, request: Any, args: Any, *rest: Any, **kwargs: Any) -> Any:
        current = _request.get()
        if current is None:  # not called by an instrumented handler: nothing to attach it to
            return generate(response_generator, request, args, *rest, **kwargs)
        provider = getattr(response_generator, "model_provider", None)
        try:
            ctx, responses = generate(response_generator, request, args, *rest, **kwargs)
        except Exception as exc:  # the server answers with an error status; the request's span shows why
            requested = getattr(getattr(args, "model", None), "model", None)
            instrumentation.emitter.error(exc, operation="request", requested_model=str(requested))
            raise
        request_id = getattr(current.handler, "request_id", None) or f"req-{id(current):x}"
        loaded = getattr(provider, "model", None)
        model = model_name(loaded) if loaded is not None else "unknown"
        generation = _Generation(instrumentation, model, str(request_id), current.received, ctx, args)
        current.generation = generation
        instrumentation.track_prompt_cache(response_generator)
        return ctx, generation.iterate(responses)

    return hooked


def _tracked_context(base: type) -> type:
    """GenerationContext that hands its request's stats to the generation thread."""

    class TrackedGenerationContext(base):  # type: ignore[valid-type, misc]
        @functools.wraps(base.__init__)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.telemetry_stats = SequenceStats()
            hand_over(self.telemetry_stats)

    TrackedGenerationContext.__name__ = base.__name__
    TrackedGenerationContext.__qualname__ = base.__qualname__
    TrackedGenerationContext.__module__ = base.__module__
    return TrackedGenerationContext


def _observed_stream(stream_generate: Callable[..., Any]) -> Callable[..., Any]:
    """The server's sequential path: mlx-lm's stream_generate, observed for one request's stats."""

    def observed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        stats = claim()
        if stats is None:
            yield from stream_generate(*args, **kwargs)
            return
        stats.prefill_start = _clock()
        for response in stream_generate(*args, **kwargs):
            if stats.prefill_end is None:
                stats.prefill_end = _clock()
                stats.prefill_tokens = int(getattr(response, "prompt_tokens", 0)) or None
                prompt_tps = getattr(response, "prompt_tps", None)
                if isinstance(prompt_tps, float) and prompt_tps > 0:
                    stats.prompt_tps = prompt_tps
                stats.decode_batch_max = 1
            if getattr(response, "from_draft", False):
                stats.draft_tokens += 1
            yield response

    return observed
