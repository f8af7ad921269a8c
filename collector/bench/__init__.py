"""`telemetry-collector bench`: performance figures, each against a baseline run in the same process."""
