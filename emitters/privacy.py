"""What is personal and how it leaves the process: the one place for both.

Every field named in :data:`PERSONAL_FIELDS` is replaced by a keyed hash
wherever an event carries it (top level, ``attrs``, an error's ``context``,
``metadata``), whichever way the caller gave it: a helper's keyword, a scope
opened by ``emitter.context`` or ``emitters.correlation``, or an attribute.
The emitter applies :meth:`Privacy.scrub` to every event just before encoding
it, so no path can skip it. Prompt text follows :func:`prompt_fields`, which
the mlx-lm instrumentation uses too.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from functools import lru_cache
from typing import Any, Callable, Optional

from emitters.diagnostics import log
from emitters.events import MAX_PROMPT_LEN
from emitters.validation import invalid

__all__ = ["PERSONAL_FIELDS", "Privacy", "prompt_fields", "resolve_secret"]

PERSONAL_FIELDS = frozenset({"user_id"})
# Nested mappings that carry caller-chosen keys, where a personal key may hide.
_NESTED = ("attrs", "context", "metadata")
_SCRUBBED = PERSONAL_FIELDS | frozenset(_NESTED)


def resolve_secret(configured: str | bytes | None) -> bytes:
    secret = configured if configured is not None else os.environ.get("TELEMETRY_HASH_SECRET")
    if secret:
        return secret.encode() if isinstance(secret, str) else bytes(secret)
    log.warning(
        "no hash secret configured (hash_secret= or TELEMETRY_HASH_SECRET): user ids and "
        "prompt hashes are keyed per process and cannot be correlated across processes"
    )
    return secrets.token_bytes(32)


class Privacy:
    """Keyed hashing of personal values under one secret."""

    def __init__(self, secret: bytes) -> None:
        key = secret

        # Scopes repeat the same user id on every event: hash each value once.
        @lru_cache(maxsize=4096)
        def keyed_hash(value: str) -> str:
            return hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]

        self.keyed_hash: Callable[[str], str] = keyed_hash

    def hash_value(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise invalid("user_id", "Expected `str` or `int`")
        return self.keyed_hash(str(value))

    def scrub(self, fields: dict[str, Any]) -> None:
        """Replace every personal value in ``fields`` (an event being built) by its hash."""
        if _SCRUBBED.isdisjoint(fields):
            return  # most events: nothing personal, nothing nested
        for name in PERSONAL_FIELDS:
            if fields.get(name) is not None:
                fields[name] = self.hash_value(fields[name])
        for nested in _NESTED:
            mapping = fields.get(nested)
            if isinstance(mapping, dict) and not PERSONAL_FIELDS.isdisjoint(mapping):
                mapping = fields[nested] = dict(mapping)
                for name in PERSONAL_FIELDS & mapping.keys():
                    if mapping[name] is not None:
                        mapping[name] = self.hash_value(mapping[name])


def prompt_fields(prompt: Any, *, capture: bool, keyed_hash: Callable[[str], str]) -> dict[str, Any]:
    """The generation.started fields that stand for ``prompt`` under the prompt policy.

    Text travels only when ``capture`` is set (truncated to the contract's
    limit); otherwise its length and a keyed hash stand in for it. A prompt
    given as token ids never travels: its count and a hash of the ids do.
    Raises ValidationError for anything else.
    """
    if prompt is None:
        return {}
    if isinstance(prompt, str):
        if capture:
            return {"prompt": prompt[:MAX_PROMPT_LEN]}
        return {"prompt_chars": len(prompt), "prompt_hash": keyed_hash(prompt)}
    ids = _token_ids(prompt)
    if ids is None:
        raise invalid("prompt", "Expected `str` (text) or a sequence of `int` (token ids)")
    return {"prompt_tokens": len(ids), "prompt_hash": keyed_hash(",".join(map(str, ids)))}


def _token_ids(prompt: Any) -> Optional[list[int]]:
    tolist = getattr(prompt, "tolist", None)  # numpy / mlx arrays
    if callable(tolist):
        try:
            prompt = tolist()
        except Exception:  # noqa: BLE001 - an odd array type is just not token ids
            return None
    if not isinstance(prompt, (list, tuple)):
        return None
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
        return None
    return list(prompt)
