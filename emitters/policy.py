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
"""

from __future__ import annotations

import math
from typing import Any, Optional

__all__ = ["out_of_range", "LATE_ARRIVAL_NS", "FUTURE_TOLERANCE_NS"]

NS_PER_S = 1_000_000_000
LATE_ARRIVAL_NS = 2 * 24 * 3600 * NS_PER_S
FUTURE_TOLERANCE_NS = 5 * 60 * NS_PER_S


def out_of_range(
    event: Any,
    now_ns: int,
    *,
    late_arrival_ns: int = LATE_ARRIVAL_NS,
    future_tolerance_ns: int = FUTURE_TOLERANCE_NS,
) -> Optional[str]:
    """Why ``event`` (a decoded contract Struct) is out of range, or None when it is not."""
    ts = event.ts
    if ts < now_ns - late_arrival_ns:
        return (
            f"ts {ts} is older than the late-arrival window of {late_arrival_ns // NS_PER_S}s "
            "(expected unix nanoseconds) - at `$.ts`"
        )
    if ts > now_ns + future_tolerance_ns:
        return f"ts {ts} is more than {future_tolerance_ns // NS_PER_S}s in the future - at `$.ts`"
    for name in event.__struct_fields__:
        value = getattr(event, name)
        if type(value) is float:
            if not math.isfinite(value):
                return f"{value} is not a finite number - at `$.{name}`"
        elif type(value) is dict:
            for key, item in value.items():
                if type(item) is float and not math.isfinite(item):
                    return f"{item} is not a finite number - at `$.{name}.{key}`"
    return None
