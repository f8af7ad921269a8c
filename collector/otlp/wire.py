"""Protobuf wire-format encoding for the OTLP hot path.

Building ``opentelemetry.proto`` message objects costs one Python-to-upb
object per attribute, value and record; writing the wire bytes straight from
event fields is about three times faster, and every event becomes a log record,
so this is where the collector spends its CPU. Tags are derived from the
generated descriptors, so a field number can never be mistyped here, and the
tests parse everything this module writes back with the generated classes.

Only what OTLP needs is here: varints, fixed64, length-delimited fields and
``KeyValue``/``AnyValue`` attributes.
"""

from __future__ import annotations

import struct
from typing import Optional, Sequence, Union

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.common.v1 import common_pb2

__all__ = [
    "AttrValue",
    "tag",
    "varint",
    "length_delimited",
    "fixed64",
    "any_value",
    "attribute",
    "attribute_key",
    "encoded_attribute",
    "sized_attribute",
    "repeated",
    "string_array_attribute",
    "AttributeKey",
    "SHORT_STRING",
    "SMALL_VARINTS",
    "pack_double",
]

AttrValue = Union[str, bool, int, float]

# Wire types by descriptor field type.
_WIRE_TYPES = {
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED32: 5,
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
    FieldDescriptor.TYPE_ENUM: 0,
    FieldDescriptor.TYPE_BOOL: 0,
    FieldDescriptor.TYPE_INT64: 0,
    FieldDescriptor.TYPE_UINT32: 0,
}

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values as their 64-bit two's complement."""
    if value < 0:
        value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Most lengths and counts are small: a table lookup instead of a loop.
_SMALL_VARINTS = tuple(_varint(n) for n in range(1 << 14))


def varint(value: int) -> bytes:
    """Base-128 varint; negative int64 values as their 64-bit two's complement."""
    return _SMALL_VARINTS[value] if 0 <= value < 16384 else _varint(value)


def tag(message: Descriptor, field_name: str) -> bytes:
    """The encoded key (field number and wire type) of ``message.field_name``."""
    field = message.fields_by_name[field_name]
    return varint((field.number << 3) | _WIRE_TYPES[field.type])


def length_delimited(field_tag: bytes, data: bytes) -> bytes:
    size = len(data)
    return field_tag + (_SMALL_VARINTS[size] if size < 16384 else varint(size)) + data


_pack_fixed64 = struct.Struct("<Q").pack
_pack_double = struct.Struct("<d").pack


def fixed64(field_tag: bytes, value: int) -> bytes:
    return field_tag + _pack_fixed64(value)


_KEY = tag(common_pb2.KeyValue.DESCRIPTOR, "key")
_VALUE = tag(common_pb2.KeyValue.DESCRIPTOR, "value")
_STRING = tag(common_pb2.AnyValue.DESCRIPTOR, "string_value")
_BOOL_TRUE = tag(common_pb2.AnyValue.DESCRIPTOR, "bool_value") + b"\x01"
_BOOL_FALSE = tag(common_pb2.AnyValue.DESCRIPTOR, "bool_value") + b"\x00"
_INT = tag(common_pb2.AnyValue.DESCRIPTOR, "int_value")
_DOUBLE = tag(common_pb2.AnyValue.DESCRIPTOR, "double_value")
_ARRAY = tag(common_pb2.AnyValue.DESCRIPTOR, "array_value")
_ARRAY_VALUES = tag(common_pb2.ArrayValue.DESCRIPTOR, "values")


def attribute_key(key: str) -> bytes:
    """The ``KeyValue.key`` field for ``key``; constant keys are encoded once."""
    return length_delimited(_KEY, key.encode())


def any_value(value: AttrValue) -> bytes:
    """An encoded ``AnyValue``. ``bool`` is checked before ``int`` (its subclass)."""
    kind = type(value)
    if kind is str:
        return length_delimited(_STRING, value.encode())  # type: ignore[union-attr]
    if kind is bool:
        return _BOOL_TRUE if value else _BOOL_FALSE
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:  # type: ignore[operator]
            return _INT + varint(value)  # type: ignore[arg-type]
        # Beyond int64 (msgpack allows uint64): keep every digit as text.
        return length_delimited(_STRING, str(value).encode())
    return _DOUBLE + _pack_double(value)  # type: ignore[arg-type]


def encoded_attribute(encoded_key: bytes, value: AttrValue) -> bytes:
    """A ``KeyValue`` body (without its outer field tag) from a pre-encoded key."""
    return encoded_key + length_delimited(_VALUE, any_value(value))


def sized_attribute(encoded_key: bytes, value: AttrValue) -> bytes:
    """A ``KeyValue`` with its length prefix but no field tag.

    Logs and spans hold the same attributes under different field numbers:
    joining these with the field's tag (``tag + tag.join(items)``) makes
    either from one encoding. This runs for every attribute of every record:
    short strings, the common case, are written with one join and table
    lookups.
    """
    if type(value) is str:
        data = value.encode()
        size = len(data)
        body_size = len(encoded_key) + size + 4
        if body_size < 16384 and size < 126:
            table = _SMALL_VARINTS
            return b"".join((table[body_size], encoded_key, _VALUE, table[size + 2], _STRING, table[size], data))
    return length_delimited(b"", encoded_key + length_delimited(_VALUE, any_value(value)))


def repeated(field_tag: bytes, sized_items: Sequence[bytes]) -> bytes:
    """A repeated message field from length-prefixed items."""
    return field_tag + field_tag.join(sized_items) if sized_items else b""


def attribute(key: str, value: AttrValue) -> bytes:
    return encoded_attribute(attribute_key(key), value)


def string_array_attribute(encoded_key: bytes, values: Sequence[str]) -> bytes:
    """A ``KeyValue`` whose value is an ``ArrayValue`` of strings."""
    array = b"".join(length_delimited(_ARRAY_VALUES, any_value(item)) for item in values)
    return encoded_key + length_delimited(_VALUE, length_delimited(_ARRAY, array))


# A string shorter than this has a one-byte length in its AnyValue, so the bytes before it
# depend only on the key and the length.
SHORT_STRING = 126
SMALL_VARINTS = _SMALL_VARINTS
pack_double = _pack_double


class AttributeKey:
    """One attribute name with the bytes that precede each kind of value, built once.

    Every event is a log record of a dozen attributes, so encoding them is most of
    the collector's CPU. With these heads an attribute is one concatenation:
    ``string_heads[len(data)] + data`` (short strings), ``double_head +
    pack_double(value)``, ``int_heads[len(varint)] + varint`` (0 to 16383), or
    one of ``bool_items``; :meth:`item` encodes any value. Each head is the item
    of a stand-in value of the same size, minus that value's bytes.
    """

    __slots__ = ("name", "encoded", "string_heads", "double_head", "int_heads", "bool_items")

    def __init__(self, name: str) -> None:
        self.name = name
        self.encoded = attribute_key(name)
        self.string_heads: list[Optional[bytes]] = [None] * SHORT_STRING  # filled on first use of each size
        self.double_head = self.item(0.0)[:-8]
        self.int_heads = (b"", self.item(0)[:-1], self.item(128)[:-2])
        self.bool_items = (self.item(False), self.item(True))

    def string_head(self, size: int) -> bytes:
        """The bytes before a ``size``-byte string value (``size < SHORT_STRING``)."""
        item = self.item("a" * size)
        head = self.string_heads[size] = item[: len(item) - size]
        return head

    def item(self, value: AttrValue) -> bytes:
        """This key's ``KeyValue`` with its length prefix (see :func:`sized_attribute`)."""
        return sized_attribute(self.encoded, value)
