"""Writing to the terminal: colour only on a TTY and never with ``$NO_COLOR`` set."""

from __future__ import annotations

import os
from typing import Any, Optional

import click
import msgspec

__all__ = ["echo", "echo_json", "warn"]


def _color() -> Optional[bool]:
    # None lets click decide (colour on a TTY only); NO_COLOR turns it off everywhere.
    return False if os.environ.get("NO_COLOR") else None


def echo(line: str = "") -> None:
    click.echo(line, color=_color())


def echo_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


def warn(message: str) -> None:
    click.echo(click.style(f"warning: {message}", fg="yellow"), err=True, color=_color())
