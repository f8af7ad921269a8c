"""OTLP export (Dash0 or any OpenTelemetry backend): logs, spans and GenAI metrics.

- :mod:`collector.otlp.config`: the ``[otlp]`` section and ``--otlp-*`` options;
- :mod:`collector.otlp.translate` / :mod:`collector.otlp.metrics`: events to
  OTLP, pure functions (``wire`` writes the protobuf bytes);
- :mod:`collector.otlp.transport`: gRPC and HTTP/protobuf requests and the
  mapping of their outcomes to sink errors;
- :mod:`collector.otlp.sink`: :class:`~collector.otlp.sink.OtlpSink`.

Only the config is imported here: the rest loads protobuf and gRPC, which the
daemon imports when OTLP is enabled.
"""

from collector.otlp.config import OtlpConfig, OtlpSettings

__all__ = ["OtlpConfig", "OtlpSettings"]
