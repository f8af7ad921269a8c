"""Validation errors that name the field and the rule in words.

msgspec names the field but states a pattern rule as the regex itself
(``Expected `str` matching regex '^[0-9a-f]{32}$' - at `$.trace_id```); an
operator reading a warning, or a developer reading a strict-mode exception,
should read the rule instead. Every error the emitter raises or reports about
the caller's input is a :class:`ValidationError` built here.
"""

from __future__ import annotations

import re
from typing import Any

from emitters.events import ValidationError

__all__ = ["ValidationError", "explain", "invalid", "check_id", "overflowing_field", "ID_RULES"]

# Each pattern in the contract, in words.
_PATTERN_WORDS = {
    "^[0-9a-f]{32}$": "of 32 lowercase hex digits",
    "^[0-9a-f]{16}$": "of 16 lowercase hex digits",
    "^[0-9a-f]{16,64}$": "of 16 to 64 lowercase hex digits",
    "^[0-9a-f]{8,64}$": "of 8 to 64 lowercase hex digits",
    "^[A-Za-z0-9_-]{1,100}$": "of 1 to 100 letters, digits, '_' or '-'",
    r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$": "in dotted lowercase entity.action form, e.g. job.created",
}
# msgspec quotes the pattern as repr() does, backslashes doubled.
_QUOTED_WORDS = {repr(pattern)[1:-1]: words for pattern, words in _PATTERN_WORDS.items()}
_REGEX = re.compile(r"matching regex '(.*)' - at")

ID_RULES = {
    "trace_id": re.compile("^[0-9a-f]{32}$"),
    "span_id": re.compile("^[0-9a-f]{16}$"),
    "parent_span_id": re.compile("^[0-9a-f]{16}$"),
    "id": re.compile("^[0-9a-f]{32}$"),
}


def explain(exc: BaseException) -> ValidationError:
    """``exc`` as a ValidationError whose message states the rule in words."""
    message = str(exc)
    match = _REGEX.search(message)
    if match is not None:
        words = _QUOTED_WORDS.get(match.group(1), "matching the contract's pattern for it")
        message = message[: match.start()] + words + " - at" + message[match.end() :]
    if isinstance(exc, ValidationError) and match is None:
        return exc
    return ValidationError(message)


def invalid(field: str, rule: str) -> ValidationError:
    """The error for ``field`` breaking ``rule``, in msgspec's ``- at `$.field``` form."""
    return ValidationError(f"{rule} - at `$.{field}`")


def check_id(name: str, value: Any) -> None:
    """Raise ValidationError unless ``value`` is a valid ``name`` (trace_id, span_id, ...)."""
    if not isinstance(value, str) or not ID_RULES[name].match(value):
        raise invalid(name, f"Expected `str` {_PATTERN_WORDS[ID_RULES[name].pattern]}")


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def overflowing_field(fields: dict[str, Any]) -> ValidationError:
    """The error for an int msgpack cannot carry, naming where it is."""
    for name, value in fields.items():
        values = value.items() if isinstance(value, dict) else ((None, value),)
        for key, item in values:
            if isinstance(item, int) and not _INT_MIN <= item <= _INT_MAX:
                path = name if key is None else f"{name}.{key}"
                return invalid(path, "Expected `int` between -2**63 and 2**64-1")
    return ValidationError("Expected every `int` between -2**63 and 2**64-1")
