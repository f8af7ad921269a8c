"""Stable fingerprints for grouping errors and spotting new kinds.

An exception's fingerprint is its type plus the frames it went through
(module and function, not line numbers, so an unrelated edit above the raise
does not make a "new" error). Without a traceback, the message is reduced to
a template: numbers, hex ids, uuids, quoted strings and paths become
placeholders, so ``timeout after 31s on worker 7`` and ``timeout after 2s on
worker 12`` group together.
"""

from __future__ import annotations

import hashlib
import re
import traceback
from types import TracebackType
from typing import Optional

__all__ = ["message_template", "fingerprint", "fingerprint_exception", "format_stack", "error_type_name"]

_MAX_FRAMES = 32
_TEMPLATE_RULES = (
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{12,}\b"), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"(?:/[\w.@-]+)+"), "<path>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


def message_template(message: str) -> str:
    for pattern, placeholder in _TEMPLATE_RULES:
        message = pattern.sub(placeholder, message)
    return message.strip()[:512]


def fingerprint(*parts: str) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(part.encode("utf-8", "replace"))
        digest.update(b"\x00")
    return digest.hexdigest()


def error_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _frames(tb: Optional[TracebackType]) -> list[str]:
    frames = [f"{frame.f_globals.get('__name__', '?')}:{frame.f_code.co_name}" for frame, _ in traceback.walk_tb(tb)]
    return frames[-_MAX_FRAMES:]


def fingerprint_exception(exc: BaseException) -> str:
    frames = _frames(exc.__traceback__)
    if frames:
        return fingerprint(error_type_name(exc), *frames)
    return fingerprint(error_type_name(exc), message_template(str(exc)))


def format_stack(exc: BaseException, limit: int) -> Optional[str]:
    if exc.__traceback__ is None:
        return None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # The end of a stack (the raise site and the message) matters most.
    return text if len(text) <= limit else "...\n" + text[-(limit - 4) :]
