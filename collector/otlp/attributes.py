"""Attribute names of events' fields (the naming rules: :mod:`collector.otlp.translate`).

Pure data, computed once at import; :mod:`collector.otlp.event_attributes` encodes them.
"""

from __future__ import annotations

from typing import Optional

from collector.otlp.options import TranslateOptions
from emitters.events import TYPED_EVENTS, Envelope, ErrorEvent, Event, SpanEnded

ENVELOPE_KEYS: dict[str, str] = {
    "id": "event.id",
    "request_id": "request.id",
    "job_id": "job.id",
    "worker_id": "worker.id",
    "machine_id": "machine.id",
    "user_id": "user.id",
    "parent_span_id": "span.parent_id",
}

# Typed fields not named mlx.<entity>.<field>: (event type, field) -> key. Mostly
# semantic-convention names; two plain renames where the default would stutter.
FIELD_KEYS: dict[tuple[str, str], str] = {
    **{(name, "model"): "gen_ai.request.model" for name in TYPED_EVENTS},
    ("generation.started", "prompt_tokens"): "gen_ai.usage.input_tokens",
    ("generation.started", "max_tokens"): "gen_ai.request.max_tokens",
    ("generation.started", "temperature"): "gen_ai.request.temperature",
    ("generation.started", "top_p"): "gen_ai.request.top_p",
    ("generation.started", "top_k"): "gen_ai.request.top_k",
    ("generation.started", "seed"): "gen_ai.request.seed",
    ("generation.completed", "prompt_tokens"): "gen_ai.usage.input_tokens",
    ("generation.completed", "generation_tokens"): "gen_ai.usage.output_tokens",
    ("generation.completed", "finish_reason"): "gen_ai.response.finish_reasons",
    ("error", "message"): "exception.message",
    ("error", "error_type"): "exception.type",
    ("error", "stack"): "exception.stacktrace",
    ("model.loaded", "model_path"): "mlx.model.path",
    ("token.generated", "token"): "mlx.token.text",
    # Prompt-cache reuse from the mlx-lm server has a GenAI name; its other serving
    # fields keep the default mlx.<entity>.<field> keys.
    ("generation.started", "cached_prompt_tokens"): "gen_ai.usage.cache_read.input_tokens",
    ("generation.completed", "cached_prompt_tokens"): "gen_ai.usage.cache_read.input_tokens",
}
# Besides exception.type, errors carry the low-cardinality error.type used by metrics.
ERROR_TYPE_KEY = "error.type"
# Fields whose value is a list in the convention (a string array attribute).
ARRAY_FIELDS = frozenset({("generation.completed", "finish_reason")})
# Content, exported only with capture_content.
CONTENT_FIELDS = frozenset({("generation.started", "prompt"), ("token.generated", "token")})

OPERATION_KEY = "gen_ai.operation.name"
PROVIDER_KEY = "gen_ai.provider.name"  # GenAI conventions v1.37+; v1.36 called it gen_ai.system
PROVIDER_KEYS = (PROVIDER_KEY, "gen_ai.system")


def attribute_key_for(event_type: str, field: str) -> str:
    """The attribute name of a typed field (see the module docstring)."""
    return FIELD_KEYS.get((event_type, field)) or f"mlx.{event_type.split('.')[0]}.{field}"


def operation_name(event: Event, options: TranslateOptions) -> str:
    """``gen_ai.operation.name``: the event's own ``attrs`` value, else the default."""
    value = event.attrs.get(OPERATION_KEY)
    return value if isinstance(value, str) and value else options.default_operation


def provider_name(event: Event, options: TranslateOptions) -> str:
    """The provider (``gen_ai.provider.name`` / ``gen_ai.system``): the event's ``attrs`` value, else the configured one."""
    for key in PROVIDER_KEYS:
        value = event.attrs.get(key)
        if isinstance(value, str) and value:
            return value
    return options.provider_name


def _reserved(cls: Optional[type]) -> frozenset[str]:
    """Keys an event of ``cls`` sets itself; ``attrs`` with these keys get an ``attrs.`` prefix."""
    keys = set(ENVELOPE_KEYS.values()) | {"event.name"}
    if cls is ErrorEvent:  # elsewhere an emitter's own error.type is the standard one and stays
        keys.add(ERROR_TYPE_KEY)
    if cls is not None and cls is not SpanEnded:  # a scope's span has no typed-field attributes
        fields = set(cls.__struct_fields__) - set(Envelope.__struct_fields__)  # type: ignore[attr-defined]
        keys |= {attribute_key_for(cls.type, field) for field in fields}  # type: ignore[attr-defined]
    return frozenset(keys)


RESERVED: dict[Optional[type], frozenset[str]] = {cls: _reserved(cls) for cls in TYPED_EVENTS.values()}
RESERVED[None] = _reserved(None)
# On generation spans these two attrs name the operation and provider instead.
SPAN_CONSUMED = frozenset({OPERATION_KEY, *PROVIDER_KEYS})
