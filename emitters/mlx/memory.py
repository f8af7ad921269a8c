"""Unified memory as MLX reports it: active, cache and peak, and the headroom where a limit is known."""

from __future__ import annotations

from typing import Any

__all__ = ["memory_fields", "peak_memory_gb"]

_GB = 1e9


def peak_memory_gb(mx: Any) -> float:
    return mx.get_peak_memory() / _GB


def memory_fields(mx: Any) -> dict[str, float]:
    """memory_gb (active), memory_cache_gb, peak_memory_gb, and on Apple silicon
    memory_limit_gb (the recommended working-set size) and memory_headroom_gb.

    ``mx.device_info()`` reports no working-set size on the CPU backend, so the
    last two are absent there rather than guessed.
    """
    active = mx.get_active_memory()
    cache = mx.get_cache_memory()
    fields = {"memory_gb": active / _GB, "memory_cache_gb": cache / _GB, "peak_memory_gb": mx.get_peak_memory() / _GB}
    device_info = getattr(mx, "device_info", None)
    limit = device_info().get("max_recommended_working_set_size") if callable(device_info) else None
    if isinstance(limit, int) and limit > 0:
        fields["memory_limit_gb"] = limit / _GB
        fields["memory_headroom_gb"] = max(limit - active - cache, 0) / _GB
    return fields
