"""The one exit-code table every ``telemetry-collector`` command follows.

====  ==========================================================================
0     done: healthy, found what was asked, the config is valid
1     nothing found or degraded: no matching event or dead letter, a health
      check that found problems, a replay that refused entries
2     usage, config or unreachable: a bad flag, variable or file, a secret that
      cannot be read, Redis out of reach or refusing the credentials
====  ==========================================================================

The README shows the same table (``tests/test_readme.py`` compares them) and
every command's ``--help`` ends with :data:`EPILOG`.
"""

from __future__ import annotations

from typing import Optional

import click


__all__ = [
    "EXIT_OK",
    "EXIT_NOTHING",
    "EXIT_USAGE",
    "EXIT_CODES",
    "EPILOG",
    "Failure",
    "OneLineUsageError",
    "one_line",
]

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2

# (code, meaning) in the words the README and --help use.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "ok"),
    (EXIT_NOTHING, "nothing found, or degraded (health)"),
    (EXIT_USAGE, "usage, config or secret error, or Redis unreachable / refusing the credentials"),
)

EPILOG = "\b\nExit status:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES)


class Failure(click.ClickException):
    """A one-line ``Error: ...`` that exits 2: the message names the setting, its source and the fix."""

    exit_code = EXIT_USAGE


class OneLineUsageError(click.UsageError):
    """A usage error shown as one ``Error: ...`` line, without the usage banner.

    Operators run these commands from scripts, probes and units; a one-line
    message is what ends up readable in a log.
    """


def one_line(exc: click.UsageError, command_path: Optional[str] = None) -> OneLineUsageError:
    path = command_path or (exc.ctx.command_path if exc.ctx is not None else "")
    hint = f" (see '{path} --help')" if path else ""
    error = OneLineUsageError(f"{exc.format_message().rstrip('.')}{hint}")
    error.exit_code = exc.exit_code
    return error
