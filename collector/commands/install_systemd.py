"""``telemetry-collector install-systemd``: the systemd unit, pointing at the collector that runs it.

The unit ships inside the package (``collector/systemd/``) with ExecStart at
``/usr/local/bin/telemetry-collector``; installed from a virtualenv the
command lives elsewhere, so this writes the unit with ExecStart at the
``telemetry-collector`` next to the running interpreter.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import click

from collector.exitcodes import Failure

__all__ = ["install_systemd", "render_unit", "UNIT_NAME"]

UNIT_NAME = "mlx-telemetry-collector.service"
TEMPLATE_BINARY = "/usr/local/bin/telemetry-collector"
# What the unit's sandbox hides from the service: a binary under these paths cannot start.
HIDDEN_BY_SANDBOX = {"/home": "ProtectHome=yes", "/root": "ProtectHome=yes", "/run/user": "ProtectHome=yes", "/tmp": "PrivateTmp=yes", "/var/tmp": "PrivateTmp=yes"}


def template() -> str:
    return resources.files("collector").joinpath("systemd", UNIT_NAME).read_text()


def console_script() -> Path:
    """The ``telemetry-collector`` installed next to this interpreter (a virtualenv's bin/)."""
    return Path(sys.executable).absolute().parent / "telemetry-collector"


def render_unit(binary: Path) -> str:
    text = template()
    if TEMPLATE_BINARY not in text:
        raise AssertionError(f"the packaged unit no longer names {TEMPLATE_BINARY}")
    return text.replace(TEMPLATE_BINARY, str(binary))


def _hidden_by(binary: Path) -> str | None:
    for prefix, setting in HIDDEN_BY_SANDBOX.items():
        if binary == Path(prefix) or Path(prefix) in binary.parents:
            return f"{prefix} ({setting})"
    return None


@click.command("install-systemd")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="/etc/systemd/system",
    show_default=True,
    help="Where to write the unit.",
)
@click.option("--print", "to_stdout", is_flag=True, help="Print the unit instead of writing it.")
@click.option("--force", is_flag=True, help="Write it even if the unit's sandbox hides the binary.")
def install_systemd(unit_dir: Path, to_stdout: bool, force: bool) -> None:
    """Write the systemd unit with ExecStart at this installation's telemetry-collector.

    Run it with the virtualenv's own command, e.g.
    sudo /opt/mlx-telemetry/bin/telemetry-collector install-systemd
    """
    binary = console_script()
    if not binary.is_file():
        raise Failure(f"no telemetry-collector next to {sys.executable}: install the package into this environment (pip install .)")
    hidden = _hidden_by(binary)
    if hidden and not force:
        raise Failure(
            f"{binary} is under {hidden}, which the unit's sandbox hides from the service: "
            f"install into a virtualenv under /opt (python -m venv /opt/mlx-telemetry), or pass --force"
        )
    unit = render_unit(binary)
    if to_stdout:
        click.echo(unit, nl=False)
        return
    target = unit_dir / UNIT_NAME
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        target.write_text(unit)
        target.chmod(0o644)
    except OSError as exc:
        raise Failure(f"cannot write {target} ({exc.strerror or exc}): run as root, or choose --unit-dir") from None
    click.echo(f"wrote {target} (ExecStart={binary})")
    click.echo("next: create the user and /etc/mlx-telemetry (README: Deployment, systemd), then")
    click.echo("      systemctl daemon-reload && systemctl enable --now mlx-telemetry-collector")
