"""The data policy: values the contract's types allow but the pipeline refuses, with a reason.

Both sides apply the same function: an emitter counts such an event as
``invalid`` and drops it; a collector dead-letters it as ``out_of_range``.

- Non-finite floats (NaN, +inf, -inf) anywhere, ``attrs``/``metadata``/``context``
  values included: JSON has no such numbers (they became ``null`` in the JSONL
  files, and the archive search then skipped the line).
- ``ts`` older than the late-arrival window (two days by default, the
  retention plan's replay horizon) or more than five minutes ahead of the
  clock: ``0``, ``2**64 - 1``, the year 2200 and seconds given where unix
  nanoseconds are expected all land outside.

A collector holds the msgpack bytes each event was decoded from; handing them
over as ``payload`` lets the finiteness part skip the field scan whenever the
bytes cannot hold a non-finite float (nearly always), with the same verdict.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from operator import attrgetter
from typing import Any, Callable, Optional

import msgspec

__all__ = ["out_of_range", "LATE_ARRIVAL_NS", "FUTURE_TOLERANCE_NS"]

NS_PER_S = 1_000_000_000
LATE_ARRIVAL_NS = 2 * 24 * 3600 * NS_PER_S
FUTURE_TOLERANCE_NS = 5 * 60 * NS_PER_S


def out_of_range(
    event: Any,
    now_ns: int,
    *,
    payload: Optional[bytes] = None,
    late_arrival_ns: int = LATE_ARRIVAL_NS,
    future_tolerance_ns: int = FUTURE_TOLERANCE_NS,
) -> Optional[str]:
    """Why ``event`` (a decoded contract Struct) is out of range, or None when it is not.

    ``payload``, when given, must be the msgpack bytes ``event`` was decoded
    from (with the strict decoder of :mod:`emitters.events`, so every float in
    ``event`` was a msgpack float in them).
    """
    ts = event.ts
    if ts < now_ns - late_arrival_ns:
        return (
            f"ts {ts} is older than the late-arrival window of {late_arrival_ns // NS_PER_S}s "
            "(expected unix nanoseconds) - at `$.ts`"
        )
    if ts > now_ns + future_tolerance_ns:
        return f"ts {ts} is more than {future_tolerance_ns // NS_PER_S}s in the future - at `$.ts`"
    if (
        payload is not None
        and _find_float64_non_finite(payload) is None
        # The project's encoders never write float32: look for its marker byte first (a memchr).
        and (payload.find(b"\xca") < 0 or _find_float32_non_finite(payload) is None)
    ):
        return None  # no NaN or infinity can be in there: the common case, at half the scan's cost
    return _non_finite(event)


# A msgpack float is 0xcb + big-endian float64 or 0xca + float32; it is NaN or
# infinite exactly when its exponent bits are all ones: float64 bytes 0x7f|0xff
# then >= 0xf0, float32 bytes 0x7f|0xff then >= 0x80. The regexes find those
# bytes at C speed; a hit inside some other value only costs the exact scan.
# (Its absence proves every float of the event finite only when the payload is
# msgpack the event was decoded from: a string never became a float.)
_find_float64_non_finite = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]").search
_find_float32_non_finite = re.compile(rb"\xca[\x7f\xff][\x80-\xff]").search


def _non_finite(event: Any) -> Optional[str]:
    """The first non-finite float of ``event``, as a reason with its field path."""
    floats, mappings = _number_fields(type(event))
    for value in floats.get(event):
        if type(value) is float and not math.isfinite(value):
            return f"{value} is not a finite number - at `$.{floats.name_of(event, value)}`"
    for value in mappings.get(event):
        if value:
            for key, item in value.items():
                if type(item) is float and not math.isfinite(item):
                    return f"{item} is not a finite number - at `$.{mappings.name_of(event, value)}.{key}`"
    return None


class _Fields:
    """Some fields of a Struct class and one C-level getter for their values, in order."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        getter = attrgetter(*names) if names else (lambda _: ())
        self.get: Callable[[Any], tuple[Any, ...]] = (lambda event: (getter(event),)) if len(names) == 1 else getter

    def name_of(self, event: Any, value: Any) -> str:
        """The field of ``event`` that holds ``value`` (identity, so NaN is found too)."""
        return next(name for name in self.names if getattr(event, name) is value)


@lru_cache(maxsize=None)
def _number_fields(cls: type) -> tuple[_Fields, _Fields]:
    """(fields typed to hold a float, fields typed to hold a dict) of a contract class.

    Only those can carry a non-finite number; the others (ids, strings, ints)
    are skipped, which is most of a ``generation.completed``.
    """
    floats: list[str] = []
    mappings: list[str] = []
    for field in msgspec.structs.fields(cls):
        held = _held_types(msgspec.inspect.type_info(field.type))
        if msgspec.inspect.DictType in held:
            mappings.append(field.name)
        elif msgspec.inspect.FloatType in held or msgspec.inspect.AnyType in held:
            floats.append(field.name)
    return _Fields(tuple(floats)), _Fields(tuple(mappings))


def _held_types(info: msgspec.inspect.Type) -> set[type]:
    if isinstance(info, msgspec.inspect.UnionType):
        return {type(member) for member in info.types}
    return {type(info)}
