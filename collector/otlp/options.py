"""What translation depends on besides the events (shared by logs, spans and metrics)."""

from __future__ import annotations

import importlib.metadata
from typing import Optional

import msgspec

__all__ = ["TranslateOptions", "VERSION"]

try:
    VERSION = importlib.metadata.version("mlx-telemetry")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    VERSION = "0.0.0"

# The semantic-conventions version each GenAI mode follows (see collector.otlp.resources).
_SCHEMA_DEFAULT = "https://opentelemetry.io/schemas/1.36.0"
_SCHEMA_LATEST = "https://opentelemetry.io/schemas/1.37.0"


class TranslateOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What translation depends on besides the events."""

    deployment_environment: Optional[str] = None
    capture_content: bool = False
    provider_name: str = "mlx"
    default_operation: str = "text_completion"
    scope_name: str = "mlx-telemetry"
    scope_version: str = VERSION
    max_request_bytes: int = 3 * 1024 * 1024
    # Engine token counts also as gen_ai.client.token.usage (a client metric; off: we are the server).
    client_token_usage: bool = False
    # OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental: the latest GenAI names.
    latest_genai: bool = False

    @property
    def provider_key(self) -> str:
        return "gen_ai.provider.name" if self.latest_genai else "gen_ai.system"

    @property
    def schema_url(self) -> str:
        return _SCHEMA_LATEST if self.latest_genai else _SCHEMA_DEFAULT
