"""The ``--otlp-*`` options of ``run``, from the table the ``[otlp]`` section publishes.

:data:`collector.otlp.config.CLI_OPTIONS` lists them (``collector.config``
reads the same table for config paths); here they become click options and
click's values become config overrides.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import click

from collector.durations import DurationParam
from collector.otlp.config import CLI_OPTIONS

__all__ = ["cli_options", "options_to_overrides"]

_CLICK_KWARGS: dict[str, dict[str, Any]] = {
    "enabled": {"default": None},
    "protocol": {"type": click.Choice(["grpc", "http", "http/protobuf"])},
    "headers": {"multiple": True, "metavar": "KEY=VALUE"},
    "compression": {"type": click.Choice(["gzip", "none"])},
    "timeout": {"type": DurationParam()},
}


def _envvar(option: tuple[str, ...]) -> str:
    return option[3] if len(option) > 3 else "TELEMETRY_" + option[0].split("/")[0].lstrip("-").upper().replace("-", "_")


def cli_options() -> list[Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """Click decorators for the ``--otlp-*`` options of ``run``.

    Parameter names are ``otlp__<field>``; pass the parsed values to
    :func:`options_to_overrides`. ``TELEMETRY_OTLP_HEADERS`` holds
    comma-separated ``KEY=VALUE`` pairs.
    """
    decorators = []
    for option in CLI_OPTIONS:
        flag, field, help_text = option[:3]
        kwargs = dict(_CLICK_KWARGS.get(field, {}))
        if field == "headers":
            # One variable holds several pairs: let parse_headers split it, not click.
            kwargs["envvar"] = None
            help_text += f" [env: {_envvar(option)}, comma-separated]"
        else:
            kwargs["envvar"] = _envvar(option)
            kwargs["show_envvar"] = True
        decorators.append(click.option(flag, f"otlp__{field}", help=help_text, **kwargs))
    return decorators


def options_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config paths (``otlp.endpoint``) for the ``--otlp-*`` values given.

    ``params`` is click's parameter mapping (other keys are ignored); options
    not given are left out, so the environment, the file and the defaults
    still apply to them.
    """
    overrides: dict[str, Any] = {}
    for option in CLI_OPTIONS:
        field = option[1]
        value = params.get(f"otlp__{field}")
        if value is not None and value != ():
            overrides[f"otlp.{field}"] = list(value) if field == "headers" else value
    return overrides
