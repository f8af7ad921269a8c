"""Token events of a generation already seen, built from that generation's template.

A generation's ``token.generated`` events differ only in ``token``, ``index``,
``logprob``, ``ts`` and ``id``: model, request id, scope ids, service, host and
pid repeat on every one. The first token of a generation is built the full way
(:class:`emitters.building.EventBuilder`: validated, scrubbed, checked against
the data policy); the validated event becomes the template, and each later
token is the template with its own values, checked for just those values.
That is about a quarter of the full path's CPU, which matters at one event a
token. Anything the quick checks cannot vouch for (another type, an extra
field, a non-finite logprob, an odd timestamp) takes the full path, which
names the field and the rule.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Mapping, Optional

import msgspec

from emitters.events import TokenGenerated
from emitters.policy import FUTURE_TOLERANCE_NS, LATE_ARRIVAL_NS

__all__ = ["TokenTemplates"]

# The contract's bound on the token text, read from it.
_TOKEN_MAX_LEN: int = next(
    field.type.max_length for field in msgspec.inspect.type_info(TokenGenerated).fields if field.name == "token"
)
_UINT64_END = 1 << 64  # msgpack's largest integer + 1
# Generations remembered at once; far more than an engine runs concurrently.
_MAX_TEMPLATES = 1024
_replace = msgspec.structs.replace
_isfinite = math.isfinite
_random_bits = random.getrandbits
_time_ns = time.time_ns


class TokenTemplates:
    """Validated ``token.generated`` events, one per (scope, model, request id)."""

    def __init__(self) -> None:
        # id(scope) -> the scope itself, kept alive so that its id is not reused by another.
        self._templates: dict[tuple[int, str, str], tuple[Optional[Mapping[str, str]], Any]] = {}

    def clear(self) -> None:
        """Forget every template (their pid is a forked parent's)."""
        self._templates.clear()

    def remember(self, event: Any, scope: Optional[Mapping[str, str]]) -> None:
        """Keep ``event``, built the full way from a plain helper call (the four arguments,
        at most ``logprob`` by keyword), as its generation's template."""
        templates = self._templates
        if len(templates) >= _MAX_TEMPLATES:
            templates.clear()
        templates[(id(scope), event.model, event.request_id)] = (scope, event)

    def event(self, arguments: tuple[Any, ...], fields: dict[str, Any], ts: int, scope: Optional[Mapping[str, str]]) -> Any:
        """The event for a ``token_generated(model, request_id, token, index[, logprob=])``
        call of a generation with a template; None when the full path must build it."""
        if len(arguments) != 4:
            return None
        model, request_id, token, index = arguments
        logprob = None
        if fields:
            logprob = fields.get("logprob")
            if len(fields) != 1 or logprob.__class__ is not float or not _isfinite(logprob):
                return None
        if (
            token.__class__ is not str
            or len(token) > _TOKEN_MAX_LEN
            or index.__class__ is not int
            or not 0 <= index < _UINT64_END
            or model.__class__ is not str
            or request_id.__class__ is not str
        ):
            return None
        entry = self._templates.get((id(scope), model, request_id))
        if entry is None or entry[0] is not scope:
            return None
        now = _time_ns()
        if not now - LATE_ARRIVAL_NS <= ts <= now + FUTURE_TOLERANCE_NS:
            return None
        return _replace(entry[1], id="%032x" % _random_bits(128), ts=ts, token=token, index=index, logprob=logprob)
