"""`python -m collector` runs the `telemetry-collector` CLI."""

from collector.cli import main

main()
