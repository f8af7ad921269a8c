"""`telemetry-collector`: the daemon and the operator tools, one click group.

Subcommands are imported only when invoked, so `--help` and light commands
do not pay for OpenTelemetry or mlx imports.
"""

from __future__ import annotations

import importlib

import click

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
}


class LazyGroup(click.Group):
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
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-telemetry")
def main() -> None:
    """mlx-telemetry collector and operator tools."""


if __name__ == "__main__":
    main()
