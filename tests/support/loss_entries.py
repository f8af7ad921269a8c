"""Entries that once crashed or stalled the collector, built byte by byte."""

from __future__ import annotations

import msgspec

from emitters.events import Event, encode

_PLACEHOLDER = "nesting-goes-here"


def deeply_nested(event: Event, depth: int = 500_000) -> bytes:
    """``event`` plus an unknown field ``junk`` nested ``depth`` arrays deep.

    msgspec cannot encode such a value (it recurses), so a placeholder string
    is encoded in its place and swapped for raw msgpack: ``0x91`` is a
    one-element array, ``0x90`` the empty one at the bottom.
    """
    fields = msgspec.msgpack.decode(encode(event))
    fields["junk"] = _PLACEHOLDER
    body = msgspec.msgpack.encode(fields)
    return body.replace(msgspec.msgpack.encode(_PLACEHOLDER), b"\x91" * depth + b"\x90", 1)
