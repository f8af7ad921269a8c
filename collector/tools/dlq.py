"""``telemetry-collector dlq``: inspect, replay and purge dead letters.

A dead letter (``{prefix}:dead``) records why the collector gave up on an
entry and what the entry was: ``reason`` (``<category>: <detail>``),
``stream`` and ``id`` of origin, ``payload`` (the original ``event`` field),
``fields`` (a msgpack map of all original fields when they were anything
else), ``size``, ``truncated``, ``dead_at`` (unix ms), ``consumer`` and, for
one a sink rejected, ``accepted_by`` (the sinks that did take it: a replay
goes to the others only).
"""

from __future__ import annotations

import base64
import fnmatch
import time
from typing import Any, Iterator, Optional

import click
import msgspec
import redis

from collector.records import parse_id
from collector.tools.command import ToolGroup
from collector.tools.formatting import format_age, format_bytes
from collector.tools.options import Target, redis_options
from collector.tools.output import echo, echo_json, warn
from collector.tools.reading import paged_entries
from collector.tools.times import NS_PER_MS, iso_time
from emitters.events import DecodeError, Event, decode
from emitters.streams import PAYLOAD_FIELD, SKIP_SINKS_FIELD, StreamNames

__all__ = ["dlq", "DeadLetterEntry", "parse_dead_letter", "replay_refusal", "REPLAY_SCRIPT"]

# Atomic and idempotent: the entry is re-added only if it is still in the DLQ
# (two operators replaying at once deliver it once), and deleted only after
# the XADD succeeded (a failing XADD aborts the script before the XDEL).
# No MAXLEN on the re-add: trimming here could delete entries no collector has acked,
# uncounted; the emitters' guard and the collectors' trimming keep the stream bounded.
# KEYS: dead stream, target stream. ARGV: dead letter id, payload, field, then optionally
# the skip field and the sinks that already accepted the event.
REPLAY_SCRIPT = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local id
if #ARGV >= 5 then
  id = redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[2], ARGV[4], ARGV[5])
else
  id = redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[2])
end
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("utf-8", errors="backslashreplace")


def _plain(value: Any) -> Any:
    """msgpack-decoded original fields made printable and JSON-safe."""
    if isinstance(value, bytes):
        return _text(value)
    if isinstance(value, dict):
        return {str(_plain(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


class DeadLetterEntry(msgspec.Struct, kw_only=True):
    dlq_id: str
    reason: str
    stream: Optional[str]
    origin_id: Optional[str]
    payload: Optional[bytes]
    fields: Optional[dict[str, Any]]
    size: Optional[int]
    truncated: bool
    dead_at_ms: Optional[int]
    consumer: Optional[str]
    accepted_by: tuple[str, ...] = ()

    @property
    def category(self) -> str:
        return self.reason.split(":", 1)[0].strip()

    def event(self) -> tuple[Optional[Event], Optional[str]]:
        """The payload decoded under the current contract, or why it does not decode."""
        if self.payload is None:
            return None, "no event payload"
        try:
            return decode(self.payload), None
        except DecodeError as exc:
            return None, str(exc)


def _int(value: Optional[bytes]) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_dead_letter(entry_id: str, raw: dict[bytes, bytes]) -> DeadLetterEntry:
    """A dead letter from its stream entry; unknown or garbled fields never fail the listing."""
    fields: Optional[dict[str, Any]] = None
    if b"fields" in raw:
        try:
            fields = _plain(msgspec.msgpack.decode(raw[b"fields"]))
        except msgspec.DecodeError:
            fields = {"<undecodable>": _text(raw[b"fields"])}
    return DeadLetterEntry(
        dlq_id=entry_id,
        reason=_text(raw.get(b"reason")) or "unknown",
        stream=_text(raw.get(b"stream")),
        origin_id=_text(raw.get(b"id")),
        payload=raw.get(b"payload"),
        fields=fields if isinstance(fields, dict) or fields is None else {"<value>": fields},
        size=_int(raw.get(b"size")),
        truncated=raw.get(b"truncated") == b"1",
        dead_at_ms=_int(raw.get(b"dead_at")),
        consumer=_text(raw.get(b"consumer")),
        accepted_by=tuple(name for name in (_text(raw.get(b"accepted_by")) or "").split(",") if name),
    )


def replay_refusal(letter: DeadLetterEntry, names: StreamNames, *, force: bool) -> Optional[str]:
    """Why ``letter`` must not be replayed, or None when it may."""
    if letter.truncated:
        return (
            f"its payload was truncated when it was dead-lettered ({format_bytes(letter.size)} originally); "
            "replaying it would deliver a corrupt event"
        )
    if letter.payload is None:
        keys = ", ".join(sorted(letter.fields or {})) or "none"
        return f"it has no '{PAYLOAD_FIELD}' payload to replay (original fields: {keys})"
    if letter.stream not in (names.events, names.errors):
        return f"its origin stream {letter.stream!r} is neither {names.events} nor {names.errors}"
    if not force:
        _, problem = letter.event()
        if problem is not None:
            return f"its payload still does not decode ({problem}); it would only be dead-lettered again (--force to replay anyway)"
    return None


def _letter_json(letter: DeadLetterEntry, *, full: bool) -> dict[str, Any]:
    event, problem = letter.event()
    data: dict[str, Any] = {
        "dlq_id": letter.dlq_id,
        "reason": letter.reason,
        "category": letter.category,
        "stream": letter.stream,
        "id": letter.origin_id,
        "size": letter.size,
        "truncated": letter.truncated,
        "dead_at": iso_time(letter.dead_at_ms * NS_PER_MS) if letter.dead_at_ms is not None else None,
        "consumer": letter.consumer,
        "event": msgspec.to_builtins(event) if event is not None else None,
        "decode_error": problem,
    }
    if full:
        data["fields"] = letter.fields
        data["payload_b64"] = base64.b64encode(letter.payload).decode() if letter.payload is not None else None
    return data


def _letters(client: redis.Redis, key: str) -> Iterator[DeadLetterEntry]:
    for entry_id, raw in paged_entries(client, key):
        yield parse_dead_letter(entry_id.decode(), raw)


def _fetch(client: redis.Redis, key: str, dlq_id: str) -> Optional[DeadLetterEntry]:
    try:
        entries = client.xrange(key, min=dlq_id, max=dlq_id)
    except redis.ResponseError as exc:
        if "Invalid stream ID" in str(exc):
            raise click.BadParameter(f"{dlq_id!r} is not a stream id (like 1714567890123-0)", param_hint="'ID'") from None
        raise
    return parse_dead_letter(entries[0][0].decode(), entries[0][1]) if entries else None


def _summary(letter: DeadLetterEntry) -> str:
    event, _ = letter.event()
    return f"{event.service} {event.type}" if event is not None else "(undecodable)"


@click.group(cls=ToolGroup)
def dlq() -> None:
    """Dead letters: entries the collector could not deliver, with the reason.

    \b
      telemetry-collector dlq list --reason 'rejected*'
      telemetry-collector dlq show 1714567890123-0
      telemetry-collector dlq replay --all --reason 'max_deliveries*'
      telemetry-collector dlq purge --yes
    """


@dlq.command("list")
@click.option("--reason", metavar="GLOB", help="Only reasons matching this glob, e.g. 'rejected*'.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="At most this many, oldest first (0: all).")
@redis_options
def list_(target: Target, reason: Optional[str], limit: int) -> None:
    """Dead letters, oldest first, with their reasons."""
    key = target.names.dead
    now_ms = int(time.time() * 1000)
    client = target.connect("dlq")
    try:
        matching = [letter for letter in _letters(client, key) if reason is None or fnmatch.fnmatchcase(letter.reason, reason)]
    finally:
        client.close()
    shown = matching[:limit] if limit else matching
    if target.as_json:
        echo_json([_letter_json(letter, full=False) for letter in shown])
    else:
        echo(click.style(f"{'DLQ ID':<18} {'AGE':>9}  {'ORIGIN':<34} {'SIZE':>8}  {'EVENT':<28} REASON", dim=True))
        for letter in shown:
            age = format_age((now_ms - letter.dead_at_ms) / 1000) if letter.dead_at_ms is not None else "?"
            origin = f"{letter.stream or '?'} {letter.origin_id or '?'}"
            size = format_bytes(letter.size) + ("!" if letter.truncated else "")
            echo(f"{letter.dlq_id:<18} {age:>9}  {origin:<34} {size:>8}  {_summary(letter):<28} " + click.style(letter.reason, fg="red"))
        echo(f"{len(matching)} dead letter(s) in {key}" + (f", showing {len(shown)}" if len(shown) < len(matching) else ""))


@dlq.command()
@click.argument("dlq_id", metavar="ID")
@redis_options
def show(target: Target, dlq_id: str) -> None:
    """One dead letter in full: reason, origin, original fields and the decoded event."""
    client = target.connect("dlq")
    try:
        letter = _fetch(client, target.names.dead, dlq_id)
    finally:
        client.close()
    if letter is None:
        raise click.ClickException(f"no dead letter {dlq_id} in {target.names.dead}")
    data = _letter_json(letter, full=True)
    if target.as_json:
        echo_json(data)
        return
    for name in ("dlq_id", "reason", "stream", "id", "size", "truncated", "dead_at", "consumer"):
        echo(f"{name + ':':<11} {data[name]}")
    if data["fields"] is not None:
        echo("fields:")
        for field, value in data["fields"].items():
            echo(f"  {field}: {value!r}")
    if data["event"] is not None:
        echo("event:")
        echo(msgspec.json.format(msgspec.json.encode(data["event"]), indent=2).decode())
    elif letter.payload is not None:
        echo(f"payload does not decode: {data['decode_error']}")
        echo(f"payload ({len(letter.payload)} bytes, first 256): {letter.payload[:256]!r}")


@dlq.command()
@click.argument("dlq_ids", metavar="[ID]...", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter (or those matching --reason).")
@click.option("--reason", metavar="GLOB", help="With --all: only reasons matching this glob.")
@click.option("--force", is_flag=True, help="Replay payloads that still do not decode.")
@redis_options
def replay(
    target: Target,
    dlq_ids: tuple[str, ...],
    replay_all: bool,
    reason: Optional[str],
    force: bool,
) -> None:
    """Put dead letters' original payloads back on their streams for the collectors.

    Each is re-added as {"event": payload} and removed from the DLQ only once
    the re-add succeeded; one that some sinks had accepted carries their names
    (skip_sinks), and collectors give it to the other sinks only. Truncated
    payloads are refused. Exit status 1 when any was refused.
    """
    if replay_all == bool(dlq_ids):
        raise click.UsageError("give dead letter IDs or --all, not both or neither")
    if reason is not None and not replay_all:
        raise click.UsageError("--reason goes with --all")
    names = target.names
    replayed: list[dict[str, str]] = []
    refused: list[dict[str, str]] = []
    client = target.connect("dlq")
    try:
        script = client.register_script(REPLAY_SCRIPT)
        candidates: list[tuple[str, Optional[DeadLetterEntry]]]
        if replay_all:
            candidates = [
                (letter.dlq_id, letter)
                for letter in _letters(client, names.dead)
                if reason is None or fnmatch.fnmatchcase(letter.reason, reason)
            ]
        else:
            candidates = [(dlq_id, _fetch(client, names.dead, dlq_id)) for dlq_id in dlq_ids]
        for dlq_id, letter in candidates:
            problem = "no such dead letter" if letter is None else replay_refusal(letter, names, force=force)
            if problem is not None:
                refused.append({"dlq_id": dlq_id, "reason": problem})
                continue
            assert letter is not None and letter.stream is not None and letter.payload is not None
            new_id = script(
                keys=[names.dead, letter.stream],
                args=[dlq_id, letter.payload, PAYLOAD_FIELD]
                + ([SKIP_SINKS_FIELD, ",".join(letter.accepted_by)] if letter.accepted_by else []),
            )
            if new_id is None:  # replayed or purged by someone else meanwhile
                refused.append({"dlq_id": dlq_id, "reason": "no longer in the dead-letter stream"})
            else:
                replayed.append({"dlq_id": dlq_id, "stream": letter.stream, "new_id": new_id.decode()})
    finally:
        client.close()
    if target.as_json:
        echo_json({"replayed": replayed, "refused": refused})
    else:
        for done in replayed:
            echo(f"replayed {done['dlq_id']} -> {done['stream']} {done['new_id']}")
        for problem in refused:
            warn(f"not replayed {problem['dlq_id']}: {problem['reason']}")
        echo(f"{len(replayed)} replayed, {len(refused)} refused")
    if refused:
        click.get_current_context().exit(1)


@dlq.command()
@click.argument("dlq_ids", metavar="[ID]...", nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@redis_options
def purge(target: Target, dlq_ids: tuple[str, ...], yes: bool) -> None:
    """Delete the given dead letters, or all of them; asks first unless --yes.

    Purging all removes only the entries counted for the question: a letter
    dead-lettered while you answer is kept.
    """
    key = target.names.dead
    client = target.connect("dlq")
    try:
        if dlq_ids:
            found = [letter.dlq_id for letter in (_fetch(client, key, dlq_id) for dlq_id in dlq_ids) if letter is not None]
            missing = sorted(set(dlq_ids) - set(found))
            for dlq_id in missing:
                warn(f"no dead letter {dlq_id}")
            count, newest = len(found), None
        else:
            found, missing = [], []
            count = client.xlen(key)
            last = client.xrevrange(key, count=1)
            newest = last[0][0].decode() if last else None
        if count == 0:
            purged = 0
        else:
            if not yes:
                click.confirm(f"Delete {count} dead letter(s) from {key}?", abort=True, err=True)
            if dlq_ids:
                purged = client.xdel(key, *found)
            else:
                assert newest is not None
                ms, seq = parse_id(newest)
                # MINID drops entries strictly below it: everything up to and including `newest`.
                purged = client.xtrim(key, minid=f"{ms}-{seq + 1}", approximate=False)
    finally:
        client.close()
    if target.as_json:
        echo_json({"purged": purged, "missing": missing})
    else:
        echo(f"purged {purged} dead letter(s) from {key}")
