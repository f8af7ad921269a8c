"""Points in time on the command line: ``--since``/``--until`` values in, UTC times out."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Optional

import click

from collector.durations import parse_duration

__all__ = ["NS_PER_S", "NS_PER_MS", "parse_time", "TimeParam", "check_window", "iso_time"]

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000


def parse_time(text: str, now_ns: int) -> int:
    """Unix ns for ``now``, a duration ago (``90s``, ``15m``, ``1h``, ``7d``) or an ISO-8601 time.

    ISO times without a zone are UTC, like the archive's file names.
    """
    value = text.strip()
    if value.lower() == "now":
        return now_ns
    try:
        return now_ns - round(parse_duration(value) * NS_PER_S)
    except ValueError:
        pass
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"expected a duration ago (30s, 15m, 1h, 7d), 'now' or an ISO-8601 time "
            f"such as 2024-05-01T12:00:00Z, got {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return round(moment.timestamp() * 1e6) * 1000


class TimeParam(click.ParamType):
    """A point in time as unix ns; relative values count back from when the command started."""

    name = "time"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time(str(value), time.time_ns())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def check_window(since_ns: Optional[int], until_ns: Optional[int]) -> None:
    if since_ns is not None and until_ns is not None and since_ns > until_ns:
        raise click.BadParameter(
            f"{iso_time(since_ns)} is after --until {iso_time(until_ns)}", param_hint="'--since'"
        )


def iso_time(ts_ns: int) -> str:
    """UTC time with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    moment = dt.datetime.fromtimestamp(ts_ns // NS_PER_MS / 1000, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
