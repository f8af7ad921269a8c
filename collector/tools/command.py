"""The click command classes of the tools: one-line usage errors and one-line Redis failures."""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

import click
import redis

from collector.exitcodes import EXIT_OK, Failure, OneLineUsageError, one_line
from collector.redisproblems import RedisProblem, explain
from collector.tools.options import url_setting

__all__ = ["ToolCommand", "ToolGroup"]


def _command_path(info_name: Optional[str], parent: Optional[click.Context]) -> str:
    return " ".join(part for part in ((parent.command_path if parent else ""), info_name or "") if part)


class _OneLineErrors:
    """Mixin: usage errors become one line, Redis failures a one-line ClickException."""

    def make_context(
        self,
        info_name: Optional[str],
        args: list[str],
        parent: Optional[click.Context] = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except (click.exceptions.NoArgsIsHelpError, OneLineUsageError):
            raise
        except click.UsageError as exc:
            raise one_line(exc, _command_path(info_name, parent)) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise one_line(exc, ctx.command_path) from None
        except RedisProblem as exc:
            raise Failure(str(exc)) from None
        except redis.RedisError as exc:
            raise Failure(explain(exc, url_setting(ctx))) from None
        except BrokenPipeError:
            # `... | head`: the reader left. Point stdout at /dev/null so the
            # interpreter's final flush does not complain, and exit quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_OK)


class ToolCommand(_OneLineErrors, click.Command):
    """A tool command: one-line usage errors, one-line Redis failures."""


class ToolGroup(_OneLineErrors, click.Group):
    """A group of tool commands (``dlq``) with the same one-line errors."""

    command_class = ToolCommand
