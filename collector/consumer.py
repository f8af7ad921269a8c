"""Turning raw stream entries into Records or dead letters (no I/O here).

Entries arrive as Redis sends them: ``[id, [name, value, ...]]``, or
``[id, nil]`` for one that was trimmed away while it sat in a pending list.
"""

from __future__ import annotations

import time
from typing import Iterable, NamedTuple, Optional, Sequence

from collector.deadletter import Category, DeadLetter, replayed_payload, single_payload
from collector.records import Record, StreamKind
from emitters.events import DecodeError, ValidationError, decode
from emitters.policy import out_of_range
from emitters.streams import PAYLOAD_FIELD

__all__ = ["Decoded", "decode_entries", "describe_fields"]

RawEntry = Optional[Sequence[object]]


class Decoded(NamedTuple):
    records: list[Record]
    dead: list[DeadLetter]
    lost: list[bytes]  # ids whose data was trimmed before we could read it
    ids: list[bytes]  # every id handled, to be acked once the batch is done


def decode_entries(
    kind: StreamKind, key: str, entries: Iterable[RawEntry], *, max_size: int, now_ns: Optional[int] = None
) -> Decoded:
    """Decode and validate ``entries`` of stream ``key``; bad ones become dead letters.

    Events the data policy refuses (:func:`emitters.policy.out_of_range`, judged
    against ``now_ns``, default the clock) are dead letters too.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    records: list[Record] = []
    dead: list[DeadLetter] = []
    lost: list[bytes] = []
    ids: list[bytes] = []
    add_record, add_id = records.append, ids.append  # the loop runs once per event: no lookups in it
    for entry in entries:
        if entry is None:  # Redis 6.2 XAUTOCLAIM: deleted; the daemon rereads its pending list for the id
            continue
        entry_id, fields = entry
        add_id(entry_id)
        if not fields:
            lost.append(entry_id)
            continue
        payload = single_payload(fields)
        skip: tuple[str, ...] = ()
        if payload is None and (replayed := replayed_payload(fields)) is not None:
            payload, skip = replayed
        if payload is None:
            category, detail = describe_fields(fields)
            dead.append(DeadLetter(key, entry_id, category, detail, fields))
        elif len(payload) > max_size:
            detail = f"event is {len(payload)} bytes, the limit is {max_size}"
            dead.append(DeadLetter(key, entry_id, "too_large", detail, fields))
        else:
            try:
                event = decode(payload)
            except ValidationError as exc:  # a subclass of DecodeError: test it first
                dead.append(DeadLetter(key, entry_id, "invalid", str(exc), fields))
            except DecodeError as exc:
                dead.append(DeadLetter(key, entry_id, "decode_error", str(exc), fields))
            except RecursionError:
                # msgspec bounds nesting by the interpreter's recursion limit; the contract's
                # events are a few levels deep, so this entry alone is garbage.
                detail = "nesting deeper than the decoder allows (valid events are a few levels deep)"
                dead.append(DeadLetter(key, entry_id, "decode_error", detail, fields))
            else:
                # Every payload here (stream entry or replayed dead letter) is the msgpack that
                # `event` came from, which lets the policy skip its field scan.
                reason = out_of_range(event, now_ns, payload=payload)
                if reason is None:
                    add_record(Record(kind, entry_id.decode(), event, payload, skip))
                else:
                    dead.append(DeadLetter(key, entry_id, "out_of_range", reason, fields))
    return Decoded(records, dead, lost, ids)


def describe_fields(fields: Sequence[bytes]) -> tuple[Category, str]:
    """Why an entry that is not exactly one ``event`` field cannot be decoded."""
    names = [name.decode(errors="backslashreplace")[:64] for name in fields[0::2]]
    shown = ", ".join(f"`{name}`" for name in names[:8]) + (", ..." if len(names) > 8 else "")
    if PAYLOAD_FIELD in names:
        return "invalid", f"expected only the `{PAYLOAD_FIELD}` field, got {len(names)} fields: {shown}"
    return "missing_field", f"no `{PAYLOAD_FIELD}` field; fields: {shown}"
