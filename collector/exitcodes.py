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

import click

__all__ = ["EXIT_OK", "EXIT_NOTHING", "EXIT_USAGE", "EXIT_CODES", "EPILOG", "Failure"]

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
