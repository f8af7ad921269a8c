"""Silences: label matchers that hold back notifications until they end, shared through Redis.

Kept in the ``{alerts stream}:silences`` hash (id -> JSON), so every
collector of every group obeys the same silences; every change is also
appended to the alerts stream (a ``silence`` field) in the same transaction,
so the stream tells who silenced what, when, and why.
"""

from __future__ import annotations

import re
import secrets
from typing import Iterable, Literal, Mapping, Optional

import msgspec
import redis

from collector.alerts.records import AlertRecord
from emitters.streams import StreamNames

__all__ = ["LabelMatcher", "Silence", "SilenceStore", "parse_matcher", "alert_labels", "silenced_by"]

# Silences ended longer ago than this are dropped from Redis (they stay in the alerts stream).
KEEP_ENDED = 7 * 86400.0
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class LabelMatcher(msgspec.Struct, frozen=True):
    """``name op value`` with Alertmanager's operators: ``=``, ``!=``, ``=~``, ``!~`` (regexes match whole values)."""

    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op in ("=", "!="):
            return (actual == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, actual) is not None) == (self.op == "=~")

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value}"


def parse_matcher(text: str) -> LabelMatcher:
    """``rule=service-errors``, ``service!=batch``, ``model=~llama.*``; ValueError saying what is wrong."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a matcher: write label=value (or !=, =~, !~), e.g. rule=service-errors")
    name, op, value = found.groups()
    value = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{text!r}: bad regular expression: {exc}") from None
    return LabelMatcher(name, op, value)  # type: ignore[arg-type]


class Silence(msgspec.Struct, kw_only=True):
    """Holds back notifications of the alerts every matcher accepts, from ``starts_at`` to ``ends_at`` (unix s)."""

    id: str
    matchers: list[LabelMatcher]
    starts_at: float
    ends_at: float
    created_by: str
    comment: str

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)


class SilenceChange(msgspec.Struct, kw_only=True):
    """What the alerts stream records for a change: ``created`` or ``expired``, and the silence after it."""

    action: Literal["created", "expired"]
    at: float
    silence: Silence


def alert_labels(record: AlertRecord) -> dict[str, str]:
    """The labels silences and inhibition rules see: the record's, ``alertname`` and ``rule`` (both the rule's name)."""
    return {**record.labels, "alertname": record.rule, "rule": record.rule}


def silenced_by(record: AlertRecord, silences: Iterable[Silence], now: float) -> Optional[str]:
    """The id of an active silence that holds ``record`` back, or None."""
    labels = alert_labels(record)
    return next((item.id for item in silences if item.active(now) and item.matches(labels)), None)


_silence_decoder = msgspec.json.Decoder(Silence)
_encode = msgspec.json.Encoder().encode

# KEYS[1] silences hash, KEYS[2] alerts stream; ARGV[1] id, ARGV[2] silence JSON, ARGV[3] change
# JSON, ARGV[4] MAXLEN, then the ids of long-ended silences to forget. One script, so the
# hash and the stream never disagree (and the ACL needs nothing beyond EVALSHA).
_SAVE = r"""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'silence', ARGV[3])
for i = 5, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
return 1
"""


class SilenceStore:
    """The silences of one stream prefix in Redis."""

    def __init__(self, client: redis.Redis, names: StreamNames, *, history: int = 10_000) -> None:
        self.client = client
        self.stream = names.alerts
        self.key = f"{names.alerts}:silences"
        self.history = history
        self._save_script = client.register_script(_SAVE)

    def all(self) -> list[Silence]:
        """Every silence kept, oldest start first."""
        raw = self.client.hgetall(self.key).values()
        return sorted((_silence_decoder.decode(item) for item in raw), key=lambda item: item.starts_at)

    def create(self, matchers: list[LabelMatcher], *, duration: float, comment: str, created_by: str, now: float) -> Silence:
        silence = Silence(
            id=secrets.token_hex(6),
            matchers=matchers,
            starts_at=now,
            ends_at=now + duration,
            created_by=created_by,
            comment=comment,
        )
        self._save("created", silence, now)
        return silence

    def expire(self, silence_id: str, now: float) -> Optional[Silence]:
        """End silence ``silence_id`` now; None when there is no such silence, unchanged when already ended."""
        raw = self.client.hget(self.key, silence_id)
        if raw is None:
            return None
        silence = _silence_decoder.decode(raw)
        if silence.ends_at > now:
            silence.ends_at = now
            self._save("expired", silence, now)
        return silence

    def _save(self, action: Literal["created", "expired"], silence: Silence, now: float) -> None:
        """Store ``silence`` and record the change; silences that ended long ago are forgotten on the way."""
        change = _encode(SilenceChange(action=action, at=now, silence=silence))
        gone = [item.id for item in self.all() if item.ends_at < now - KEEP_ENDED and item.id != silence.id]
        self._save_script(keys=[self.key, self.stream], args=[silence.id, _encode(silence), change, self.history, *gone])
