"""An event's attributes as encoded ``KeyValue`` items, shared by its log record and span. Pure.

Naming rules: :mod:`collector.otlp.attributes`. This is the collector's hottest
loop (every event, a dozen attributes each), so per event class the fields to
read and their :class:`~collector.otlp.wire.AttributeKey` are laid out once:
one ``attrgetter`` call reads every field, and each value costs a type check and
one concatenation with a prepared head.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Optional

from collector.otlp import wire
from collector.otlp.attributes import (
    ARRAY_FIELDS,
    CONTENT_FIELDS,
    ENVELOPE_KEYS,
    ERROR_TYPE_KEY,
    RESERVED,
    attribute_key_for,
)
from collector.otlp.wire import SHORT_STRING, AttributeKey
from emitters.events import TYPED_EVENTS, Envelope, ErrorEvent, Event, SpanEnded

__all__ = ["AttributeEncoder", "ArrayKey"]

_CACHE_LIMIT = 4096  # attribute names from attrs and maps are open-ended
_NOTHING: frozenset[str] = frozenset()
_pack_double = wire.pack_double
_SMALL_VARINTS = wire.SMALL_VARINTS


class ArrayKey(AttributeKey):
    """A key whose string value is exported as a one-element string array (the convention's lists)."""

    __slots__ = ()

    def item(self, value: Any) -> bytes:
        return wire.length_delimited(b"", wire.string_array_attribute(self.encoded, (value,)))


class _Plan:
    """Which fields of one event class become which attributes, in order."""

    __slots__ = ("values", "keys")

    def __init__(self, fields: list[str], keys: list[AttributeKey]) -> None:
        self.values: Callable[[Any], tuple[Any, ...]] = attrgetter(*fields)
        self.keys = tuple(keys)


_ENVELOPE = [(field, AttributeKey(key)) for field, key in ENVELOPE_KEYS.items()]
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__)
_ERROR_TYPE = AttributeKey(ERROR_TYPE_KEY)


def _plan(cls: Optional[type], capture_content: bool) -> _Plan:
    fields = [field for field, _ in _ENVELOPE]
    keys = [key for _, key in _ENVELOPE]
    if cls is not None and cls is not SpanEnded:  # a scope's span says it all in span fields
        event_type = cls.type  # type: ignore[attr-defined]
        for field in cls.__struct_fields__:  # type: ignore[attr-defined]
            typed = (event_type, field)
            if field in _ENVELOPE_FIELDS or (typed in CONTENT_FIELDS and not capture_content):
                continue
            name = attribute_key_for(event_type, field)
            fields.append(field)
            keys.append(ArrayKey(name) if typed in ARRAY_FIELDS else AttributeKey(name))
        if cls is ErrorEvent:  # besides exception.type, the low-cardinality error.type
            fields.append("error_type")
            keys.append(_ERROR_TYPE)
    return _Plan(fields, keys)


class AttributeEncoder:
    """Length-prefixed ``KeyValue`` items of an event (see :func:`collector.otlp.wire.repeated`)."""

    def __init__(self, capture_content: bool) -> None:
        self._plans = {cls: _plan(cls, capture_content) for cls in TYPED_EVENTS.values()}
        self._envelope = _plan(None, capture_content)
        self._keys: dict[str, AttributeKey] = {}

    def key(self, name: str) -> AttributeKey:
        """The :class:`AttributeKey` of a name met in ``attrs`` or a map, cached."""
        key = self._keys.get(name)
        if key is None:
            if len(self._keys) >= _CACHE_LIMIT:
                self._keys.clear()
            key = self._keys[name] = AttributeKey(name)
        return key

    def items(self, event: Event, consumed: frozenset[str] = _NOTHING) -> list[bytes]:
        """Envelope fields, typed fields, then ``attrs`` (except ``consumed``), each as one item."""
        cls = type(event)
        plan = self._plans.get(cls) or self._envelope
        items: list[bytes] = []
        append = items.append
        for key, value in zip(plan.keys, plan.values(event)):
            if value is None:
                continue
            kind = type(value)
            if kind is str:
                data = value.encode()
                size = len(data)
                if size < SHORT_STRING:
                    append((key.string_heads[size] or key.string_head(size)) + data)
                    continue
            elif kind is float:
                append(key.double_head + _pack_double(value))
                continue
            elif kind is int and 0 <= value < 16384:
                number = _SMALL_VARINTS[value]
                append(key.int_heads[len(number)] + number)
                continue
            elif kind is dict:  # metadata, context, dropped: `<key>.<map key>` per entry
                for name, entry in value.items():
                    append(self.key(f"{key.name}.{name}").item(entry))
                continue
            append(key.item(value))
        attrs = event.attrs
        if attrs:
            reserved = RESERVED.get(cls) or RESERVED[None]
            for name, value in attrs.items():
                if name in consumed:
                    continue
                if name in reserved:
                    name = f"attrs.{name}"
                key = self._keys.get(name) or self.key(name)
                if type(value) is str:
                    data = value.encode()
                    size = len(data)
                    if size < SHORT_STRING:
                        append((key.string_heads[size] or key.string_head(size)) + data)
                        continue
                append(key.item(value))
        return items
