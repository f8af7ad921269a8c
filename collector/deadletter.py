"""The dead-letter entry format of ``{prefix}:dead``.

Fields: ``reason`` (``"<category>: <detail>"``), ``stream`` (full key of the
origin), ``id`` (origin entry id), ``payload`` (the original ``event`` bytes
when the entry had exactly that one field), ``fields`` (a msgpack map of all
original fields otherwise), ``size`` (original bytes), ``truncated`` ("1"
when ``payload``/``fields`` were cut to the cap), ``dead_at`` (unix ms) and
``consumer``, and ``accepted_by`` (comma-separated names of the sinks that did
accept the event, for ``rejected`` letters: a replay goes to the others only).
Pure functions only; the daemon does the XADD.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import msgspec

from emitters.streams import PAYLOAD_FIELD, SKIP_SINKS_FIELD

__all__ = ["Category", "DeadLetter", "dead_letter_fields", "replayed_payload", "single_payload"]

Category = Literal[
    "decode_error", "invalid", "out_of_range", "too_large", "missing_field", "max_deliveries", "rejected"
]

_PAYLOAD_KEY = PAYLOAD_FIELD.encode()
_SKIP_KEY = SKIP_SINKS_FIELD.encode()
# Field names are identifiers, not data: a longer one is kept only in part.
MAX_FIELD_NAME = 1024


class DeadLetter(NamedTuple):
    """One stream entry on its way to the dead-letter stream."""

    stream: str  # full key of the origin stream
    entry_id: bytes
    category: Category
    detail: str
    fields: Sequence[bytes]  # the original flat [name, value, name, value, ...]
    accepted_by: tuple[str, ...] = ()  # sinks that did take it

    @property
    def reason(self) -> str:
        return f"{self.category}: {self.detail}"


def single_payload(fields: Sequence[bytes]) -> bytes | None:
    """The ``event`` value when it is the entry's one and only field."""
    if len(fields) == 2 and fields[0] == _PAYLOAD_KEY:
        return fields[1]
    return None


def replayed_payload(fields: Sequence[bytes]) -> tuple[bytes, tuple[str, ...]] | None:
    """(``event`` value, sinks to skip) of an entry ``dlq replay`` put back, else None."""
    if len(fields) == 4 and fields[0] == _PAYLOAD_KEY and fields[2] == _SKIP_KEY:
        names = fields[3].decode(errors="replace")
        return fields[1], tuple(name for name in names.split(",") if name)
    return None


def dead_letter_fields(
    letter: DeadLetter, *, consumer: str, max_bytes: int, now_ms: int
) -> dict[str, bytes | str]:
    """The XADD fields for ``letter``, with what it carried cut to ``max_bytes``."""
    entry: dict[str, bytes | str] = {
        "reason": letter.reason,
        "stream": letter.stream,
        "id": letter.entry_id.decode(errors="replace"),
        "dead_at": str(now_ms),
        "consumer": consumer,
    }
    if letter.accepted_by:
        entry["accepted_by"] = ",".join(letter.accepted_by)
    payload = single_payload(letter.fields)
    if payload is not None:
        entry["payload"] = payload[:max_bytes]
        entry["size"] = str(len(payload))
        entry["truncated"] = "1" if len(payload) > max_bytes else "0"
        return entry
    names, values = letter.fields[0::2], letter.fields[1::2]
    size = sum(map(len, letter.fields))
    truncated = size > max_bytes or any(len(name) > MAX_FIELD_NAME for name in names)
    # Sharing the cap evenly keeps every field visible, however big one of them was.
    share = max_bytes // max(len(values), 1) if size > max_bytes else max_bytes
    cut = {name[:MAX_FIELD_NAME]: value[:share] for name, value in zip(names, values)}
    entry["fields"] = msgspec.msgpack.encode(cut)
    entry["size"] = str(size)
    entry["truncated"] = "1" if truncated else "0"
    if _PAYLOAD_KEY in cut:
        entry["payload"] = cut[_PAYLOAD_KEY]
    return entry
