"""Click commands of ``telemetry-collector`` that are not operator tools."""
