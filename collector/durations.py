"""Durations in config and on the command line: ``250ms``, ``30s``, ``5m``, ``1h``, ``7d``.

A bare number means seconds. Values are held as float seconds in a
:class:`Duration` so msgspec can validate them inside the typed config, and a
bad value is reported with its field path like any other.
"""

from __future__ import annotations

import re
from typing import Any

import click

__all__ = ["Duration", "parse_duration", "format_duration", "dec_hook", "enc_hook", "DurationParam"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


class Duration(float):
    """Seconds, parsed from ``250ms``/``30s``/``5m``/``1h``/``7d`` or a number."""

    def __repr__(self) -> str:
        return f"Duration({format_duration(self)!r})"


def parse_duration(value: Any) -> Duration:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 250ms, 30s, 5m, 1h, 7d, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"duration must be >= 0, got {value!r}")
        return Duration(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match:
            return Duration(float(match.group(1)) * _UNITS[match.group(2) or "s"])
    raise ValueError(f"expected a duration like 250ms, 30s, 5m, 1h, 7d, got {value!r}")


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000, 3):g}ms"


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec ``dec_hook`` for configs holding :class:`Duration` fields."""
    if type_ is Duration:
        return parse_duration(obj)
    raise NotImplementedError(f"unsupported type {type_!r}")


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, Duration):
        return format_duration(obj)
    raise NotImplementedError(f"cannot encode {type(obj)!r}")


class DurationParam(click.ParamType):
    """Click parameter type for durations; errors go through click.BadParameter."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
