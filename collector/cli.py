"""`telemetry-collector`: the daemon and the operator tools, one click group.

Subcommands are imported only when invoked, so `--help` and light commands
do not pay for OpenTelemetry or mlx imports.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from collector.exitcodes import EPILOG, OneLineUsageError, one_line

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "run": "collector.commands.run:run",
    "check-config": "collector.commands.run:check_config",
    "demo": "collector.commands.demo:demo",
    "tail": "collector.tools.tail:tail",
    "search": "collector.tools.search:search",
    "timeline": "collector.tools.timeline:timeline",
    "errors": "collector.tools.errors:errors",
    "health": "collector.tools.health:health",
    "dlq": "collector.tools.dlq:dlq",
    "alerts": "collector.alerts.cli:alerts",
    "bench": "collector.bench.cli:bench",
    "ui": "collector.http.ui:ui",
    "install-systemd": "collector.commands.install_systemd:install_systemd",
}


def _with_exit_codes(command: click.Command) -> click.Command:
    """Every command's --help ends with the one exit-code table (subcommands of groups too)."""
    if not (command.epilog or "").endswith(EPILOG):
        command.epilog = f"{command.epilog}\n\n{EPILOG}" if command.epilog else EPILOG
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _with_exit_codes(sub)
    return command


class LazyGroup(click.Group):
    """Imports a subcommand when it is used; every usage error of every command is one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.NoArgsIsHelpError, OneLineUsageError):
            raise
        except click.UsageError as exc:
            raise one_line(exc) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return _with_exit_codes(command)


@click.group(cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-telemetry")
def main() -> None:
    """mlx-telemetry collector and operator tools.

    \b
    Shell completion (bash; zsh_source and fish_source alike):
      eval "$(_TELEMETRY_COLLECTOR_COMPLETE=bash_source telemetry-collector)"
    """


if __name__ == "__main__":
    main()
