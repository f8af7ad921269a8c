"""Continuous batching: what mlx-lm's ``BatchGenerator`` does with each sequence and each step.

The instrumented class is a subclass of mlx-lm's own, built on its public
methods only: ``insert_segments`` (uids in), ``next`` (prompt progress and
generated tokens out, with ``finish_reason``), ``remove`` (cancelled uids) and
the constructor's ``completion_batch_size``/``prefill_batch_size``. From them it
keeps, per sequence, when prefill started and ended and the largest decode
batch it shared, and per generator the occupancy that ``runtime.status``
reports (waiting, prefilling and decoding sequences, decode batch sizes).

A sequence inserted by the instrumented ``mlx_lm.server`` is reported by the
server's request (see :mod:`emitters.mlx.serving`); any other sequence
(``batch_generate``, a user's own loop) is reported here: one
``generation.started`` at insert and one ``generation.completed`` when it
finishes or is removed (``finish_reason="cancelled"``).
"""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from array import array
from typing import TYPE_CHECKING, Any, Optional

from emitters.mlx.hooks import observe_safely
from emitters.mlx.models import model_name, percentile

if TYPE_CHECKING:
    from emitters.mlx.instrumentation import Instrumentation

__all__ = [
    "SequenceStats",
    "Occupancy",
    "instrumented_batch_generator",
    "hand_over",
    "claim",
    "occupancy_fields",
    "token_timing",
]

_clock = time.perf_counter

WAITING, PREFILLING, DECODING, DONE = range(4)


class SequenceStats:
    """What the generation thread learns about one sequence (one request)."""

    __slots__ = (
        "state",
        "prefill_start",
        "prefill_end",
        "prefill_tokens",
        "prompt_tps",
        "decode_batch_max",
        "draft_tokens",
        "times",
    )

    def __init__(self) -> None:
        self.state = WAITING
        self.prefill_start: Optional[float] = None
        self.prefill_end: Optional[float] = None
        self.prefill_tokens: Optional[int] = None  # prompt tokens actually computed (not cached)
        self.prompt_tps: Optional[float] = None  # as mlx-lm measured it (sequential path)
        self.decode_batch_max = 0
        self.draft_tokens = 0  # tokens that came from the draft model (speculative decoding)
        self.times: Optional[array] = None  # token times, kept only for sequences reported here

    def prefill_fields(self) -> dict[str, float | int]:
        """prefill_ms, prefill_tokens and prompt_tps, as far as they are known."""
        fields: dict[str, float | int] = {}
        if self.prefill_tokens is not None:
            fields["prefill_tokens"] = self.prefill_tokens
        if self.prefill_start is not None and self.prefill_end is not None:
            seconds = max(self.prefill_end - self.prefill_start, 0.0)
            fields["prefill_ms"] = seconds * 1000.0
            if self.prompt_tps is None and self.prefill_tokens and seconds > 0:
                fields["prompt_tps"] = self.prefill_tokens / seconds
        if self.prompt_tps is not None:
            fields["prompt_tps"] = self.prompt_tps
        if self.decode_batch_max:
            fields["decode_batch_max"] = self.decode_batch_max
        return fields


# The server creates a request's GenerationContext and, on the same (generation)
# thread, inserts its sequence right after: the context hands its stats over here.
_handover = threading.local()


def hand_over(stats: SequenceStats) -> None:
    _handover.stats = stats


def claim() -> Optional[SequenceStats]:
    """The stats a server request handed over on this thread, once."""
    stats = getattr(_handover, "stats", None)
    _handover.stats = None
    return stats


class Occupancy:
    """Counts of one generator's sequences by state, and its decode batch sizes.

    Written by the generation thread only; read (ints, atomically) by the heartbeat.
    """

    def __init__(self, decode_concurrency: int, prefill_concurrency: int) -> None:
        self.decode_concurrency = decode_concurrency
        self.prefill_concurrency = prefill_concurrency
        self.counts = [0, 0, 0, 0]
        self.decode_batch = 0
        self.decode_batch_max = 0  # since the last read

    def move(self, stats: SequenceStats, state: int) -> None:
        self.counts[stats.state] -= 1
        self.counts[state] += 1
        stats.state = state

    def read(self) -> dict[str, int]:
        fields = {
            "requests_waiting": self.counts[WAITING],
            "requests_running": self.counts[PREFILLING] + self.counts[DECODING],
            "requests_prefilling": self.counts[PREFILLING],
            "decode_batch_size": self.decode_batch,
            "decode_batch_max": max(self.decode_batch_max, self.decode_batch),
            "decode_concurrency": self.decode_concurrency,
            "prefill_concurrency": self.prefill_concurrency,
        }
        self.decode_batch_max = 0
        return fields


# Every live instrumented generator, for runtime.status.
_generators: "weakref.WeakSet[Any]" = weakref.WeakSet()


def occupancy_fields() -> dict[str, int]:
    """Occupancy summed over the live instrumented generators ({} when there is none)."""
    total: dict[str, int] = {}
    for generator in list(_generators):
        for name, value in generator.telemetry_occupancy.read().items():
            # Counts add up across generators; the largest batch is the largest of any.
            combined = max if name == "decode_batch_max" else int.__add__
            total[name] = combined(total[name], value) if name in total else value
    return total


def instrumented_batch_generator(base: type, instrumentation: "Instrumentation") -> type:
    """A subclass of mlx-lm's ``BatchGenerator`` that reports to ``instrumentation``."""

    class InstrumentedBatchGenerator(base):  # type: ignore[valid-type, misc]
        __doc__ = base.__doc__

        def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(model, *args, **kwargs)
            self.telemetry_occupancy = Occupancy(
                int(getattr(self, "completion_batch_size", 0)), int(getattr(self, "prefill_batch_size", 0))
            )
            self._telemetry_sequences: dict[int, SequenceStats] = {}
            self._telemetry_own: dict[int, _OwnSequence] = {}
            self._telemetry_model = model_name(model)
            _generators.add(self)

        def insert_segments(self, segments: Any, max_tokens: Any = None, *args: Any, **kwargs: Any) -> Any:
            uids = super().insert_segments(segments, max_tokens, *args, **kwargs)
            observe_safely("BatchGenerator.insert_segments", self._telemetry_inserted, uids, segments, max_tokens)
            return uids

        def _telemetry_inserted(self, uids: Any, segments: Any, max_tokens: Any) -> None:
            handed = claim() if len(uids) == 1 else None
            occupancy = self.telemetry_occupancy
            for index, uid in enumerate(uids):
                stats = handed or SequenceStats()
                self._telemetry_sequences[uid] = stats
                occupancy.counts[WAITING] += 1
                if handed is None:
                    limit = max_tokens[index] if max_tokens else getattr(self, "max_tokens", None)
                    prompt_tokens = sum(len(segment) for segment in segments[index])
                    self._telemetry_own[uid] = _OwnSequence(instrumentation, self._telemetry_model, stats, prompt_tokens, limit)

        def next(self) -> Any:
            began = _clock()
            prompt_responses, generation_responses = super().next()
            observe_safely("BatchGenerator.next", self._telemetry_step, began, _clock(), prompt_responses, generation_responses)
            return prompt_responses, generation_responses

        def _telemetry_step(self, began: float, ended: float, prompt_responses: Any, generation_responses: Any) -> None:
            sequences = self._telemetry_sequences
            occupancy = self.telemetry_occupancy
            for response in prompt_responses:
                stats = sequences.get(response.uid)
                if stats is None:
                    continue
                if stats.prefill_start is None:
                    stats.prefill_start = began
                    occupancy.move(stats, PREFILLING)
                if response.end_of_prompt:
                    stats.prefill_end = ended
                    stats.prefill_tokens = int(response.progress[1])
                    occupancy.move(stats, DECODING)
            size = len(generation_responses)
            if size:
                occupancy.decode_batch = size
                if size > occupancy.decode_batch_max:
                    occupancy.decode_batch_max = size
                for response in generation_responses:
                    stats = sequences.get(response.uid)
                    if stats is None:
                        continue
                    if size > stats.decode_batch_max:
                        stats.decode_batch_max = size
                    if stats.times is not None:
                        stats.times.append(ended)
                    if response.finish_reason is not None:
                        self._telemetry_finish(response.uid, response.finish_reason)
            elif not prompt_responses:
                occupancy.decode_batch = 0

        def next_generated(self) -> Any:
            # mlx-lm's own loop, through the instrumented next().
            while True:
                prompt_responses, generation_responses = self.next()
                if not generation_responses and prompt_responses:
                    continue
                return generation_responses

        def remove(self, uids: Any, *args: Any, **kwargs: Any) -> Any:
            result = super().remove(uids, *args, **kwargs)
            for uid in uids:
                observe_safely("BatchGenerator.remove", self._telemetry_finish, uid, "cancelled")
            return result

        def _telemetry_finish(self, uid: int, finish_reason: str) -> None:
            stats = self._telemetry_sequences.pop(uid, None)
            if stats is not None:
                self.telemetry_occupancy.move(stats, DONE)
            own = self._telemetry_own.pop(uid, None)
            if own is not None:
                own.completed(finish_reason)

    InstrumentedBatchGenerator.__name__ = base.__name__
    InstrumentedBatchGenerator.__qualname__ = base.__qualname__
    InstrumentedBatchGenerator.__module__ = base.__module__
    return InstrumentedBatchGenerator


class _OwnSequence:
    """A sequence no server request owns: its generation events are emitted here."""

    __slots__ = ("instrumentation", "model", "stats", "request_id", "prompt_tokens", "inserted")

    def __init__(
        self, instrumentation: "Instrumentation", model: str, stats: SequenceStats, prompt_tokens: int, max_tokens: Any
    ) -> None:
        self.instrumentation = instrumentation
        self.model = model
        self.stats = stats
        stats.times = array("d")
        self.request_id = f"batch-{uuid.uuid4().hex}"
        self.prompt_tokens = prompt_tokens
        self.inserted = _clock()
        fields: dict[str, Any] = {"prompt_tokens": prompt_tokens}
        if isinstance(max_tokens, int) and max_tokens > 0:
            fields["max_tokens"] = max_tokens
        instrumentation.emitter.event("generation.started", model=model, request_id=self.request_id, **fields)

    def completed(self, finish_reason: str) -> None:
        stats = self.stats
        times = stats.times or array("d")
        finished = times[-1] if times else _clock()
        fields: dict[str, Any] = {"finish_reason": finish_reason, **stats.prefill_fields()}
        fields.update(token_timing(self.inserted, stats.prefill_end, times))
        if stats.prefill_start is not None:
            fields["queue_wait_ms"] = max(stats.prefill_start - self.inserted, 0.0) * 1000.0
        self.instrumentation.emitter.generation_completed(
            self.model,
            self.request_id,
            self.prompt_tokens,
            len(times),
            max(finished - self.inserted, 0.0) * 1000.0,
            **fields,
        )


def token_timing(started: float, decode_start: Optional[float], times: "array | list[float]") -> dict[str, float]:
    """ttft_ms, inter-token p50/p99 and decode tokens/s from token arrival times."""
    fields: dict[str, float] = {}
    if not times:
        return fields
    fields["ttft_ms"] = max(times[0] - started, 0.0) * 1000.0
    gaps = sorted(later - earlier for earlier, later in zip(times, times[1:]))
    if gaps:
        fields["itl_p50_ms"] = percentile(gaps, 50) * 1000.0
        fields["itl_p99_ms"] = percentile(gaps, 99) * 1000.0
    origin = decode_start if decode_start is not None and decode_start <= times[0] else None
    if origin is None and len(times) > 1:
        origin, count = times[0], len(times) - 1
    else:
        count = len(times)
    if origin is not None and times[-1] > origin:
        decode = times[-1] - origin
        fields["decode_ms"] = decode * 1000.0
        fields["tokens_per_second"] = count / decode
    return fields
