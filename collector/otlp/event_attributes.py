"""An event's attributes as encoded ``KeyValue`` items, shared by its log record and span. Pure.

Naming rules: :mod:`collector.otlp.attributes`. This is the collector's hottest
loop (every event, a dozen attributes each, out of 20 to 30 fields, most of them
None), so per event class the fields to read and their
:class:`~collector.otlp.wire.AttributeKey` are laid out once, as one
straight-line function: reading a field and skipping it when None costs a
couple of bytecodes instead of a turn of a loop, and each value costs a type
check and one concatenation with a prepared head.
"""

from __future__ import annotations

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


# One field of a plan; {i} numbers its key. The value is told by its type, as in AttributeKey.item.
_FIELD_SOURCE = """\
    value = event.{field}
    if value is not None:
        kind = type(value)
        if kind is str:
            data = value.encode()
            size = len(data)
            append((heads{i}[size] or key{i}.string_head(size)) + data if size < SHORT_STRING else key{i}.item(value))
        elif kind is float:
            append(double{i} + pack_double(value))
        elif kind is int and 0 <= value < 16384:
            number = SMALL_VARINTS[value]
            append(ints{i}[len(number)] + number)
        elif kind is dict:
            expand(key{i}, value, append)
        else:
            append(key{i}.item(value))
"""


_Fields = Callable[[Any, Callable[[bytes], None], Callable], None]  # (event, append, expand)


def _compile(name: str, fields: list[str], keys: list[AttributeKey]) -> _Fields:
    """``append``s the items of ``fields`` of an event; a ``dict`` value goes to ``expand(key, value, append)``."""
    names: dict[str, Any] = {"SHORT_STRING": SHORT_STRING, "SMALL_VARINTS": _SMALL_VARINTS, "pack_double": _pack_double}
    source = ["def fields(event, append, expand):"]
    for i, (field, key) in enumerate(zip(fields, keys)):
        names.update(
            {f"key{i}": key, f"heads{i}": key.string_heads, f"double{i}": key.double_head, f"ints{i}": key.int_heads}
        )
        source.append(_FIELD_SOURCE.format(field=field, i=i))
    code = compile("\n".join(source), f"<attributes of {name}>", "exec")  # named so in tracebacks and profiles
    exec(code, names)  # noqa: S102 - the source holds only struct field names (identifiers)
    return names["fields"]


_ENVELOPE = [(field, AttributeKey(key)) for field, key in ENVELOPE_KEYS.items()]
_ENVELOPE_FIELDS = frozenset(Envelope.__struct_fields__)
_ERROR_TYPE = AttributeKey(ERROR_TYPE_KEY)


def _plan(cls: Optional[type], capture_content: bool) -> _Fields:
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
    return _compile(cls.__name__ if cls is not None else "any event", fields, keys)


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

    def _expand(self, key: AttributeKey, value: dict[str, Any], append: Callable[[bytes], None]) -> None:
        """A map field (metadata, context, dropped): one ``<key>.<map key>`` attribute per entry."""
        for name, entry in value.items():
            append(self.key(f"{key.name}.{name}").item(entry))

    def items(self, event: Event, consumed: frozenset[str] = _NOTHING) -> list[bytes]:
        """Envelope fields, typed fields, then ``attrs`` (except ``consumed``), each as one item."""
        cls = type(event)
        items: list[bytes] = []
        append = items.append
        (self._plans.get(cls) or self._envelope)(event, append, self._expand)
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
