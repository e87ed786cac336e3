"""A bounded reader of the protocol-buffer wire format, for the few messages lstm-inspect needs
(TensorFlow's BundleEntryProto and TrackableObjectGraph, SavedModel, ONNX's ModelProto).

No schema compiler and no `protobuf` dependency: a message is read into `{field number: [values]}`.
Values are ints (varint, fixed32, fixed64) or zero-copy `memoryview`s (length-delimited: strings,
bytes, sub-messages, packed arrays); the caller knows which field is which. Every length is checked
against the end of its enclosing message, varints are at most 10 bytes, and groups (wire types 3
and 4, deprecated) are refused, so a hostile buffer can only produce a `ProtoError`.
"""
from __future__ import annotations

import struct
from typing import Iterator, Union

import numpy as np

Buffer = Union[bytes, bytearray, memoryview]
Value = Union[int, memoryview]

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
_MAX_FIELD = (1 << 29) - 1


class ProtoError(ValueError):
    """The bytes are not a well-formed protocol-buffer message."""


def read_varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, next position) of the varint at `pos`; at most 10 bytes, never past `end`."""
    result = shift = 0
    for i in range(pos, min(end, pos + 10)):
        byte = buf[i]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, i + 1
        shift += 7
    raise ProtoError("truncated or overlong varint")


def iter_fields(data: Buffer) -> Iterator[tuple[int, int, Value]]:
    """(field number, wire type, value) of every field of one message, in order."""
    buf = data if isinstance(data, memoryview) else memoryview(data)
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B")
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if not 0 < number <= _MAX_FIELD:
            raise ProtoError(f"bad field number {number}")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
        elif wire == LENGTH:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise ProtoError(f"field {number} claims {length} bytes, {end - pos} remain")
            value, pos = buf[pos:pos + length], pos + length
        elif wire == FIXED64:
            if end - pos < 8:
                raise ProtoError(f"field {number}: truncated fixed64")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == FIXED32:
            if end - pos < 4:
                raise ProtoError(f"field {number}: truncated fixed32")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ProtoError(f"field {number} has unsupported wire type {wire}")
        yield number, wire, value


Message = dict[int, list[Value]]


def parse(data: Buffer, max_fields: int = 10_000_000) -> Message:
    """Every field of one message: {field number: [values in order]} (repeated fields keep all)."""
    out: Message = {}
    count = 0
    for number, _wire, value in iter_fields(data):
        count += 1
        if count > max_fields:
            raise ProtoError(f"more than {max_fields} fields in one message")
        out.setdefault(number, []).append(value)
    return out


def first(msg: Message, number: int, default=None):
    """The last value of a singular field (protobuf semantics: the last occurrence wins)."""
    values = msg.get(number)
    return values[-1] if values else default


def as_bytes(value: Value | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, int):
        raise ProtoError("expected a length-delimited field, found a number")
    return bytes(value)


def as_str(value: Value | None) -> str:
    return as_bytes(value).decode("utf-8", errors="replace")


def as_int64(value: int | None, default: int = 0) -> int:
    """A varint read as a two's-complement int64 (protobuf int64/int32 with negative values)."""
    if value is None:
        return default
    if isinstance(value, memoryview):
        raise ProtoError("expected a number, found a length-delimited field")
    return value - (1 << 64) if value >= (1 << 63) else value


def as_float(value: int | None, default: float = 0.0) -> float:
    """A fixed32 field read as an IEEE float."""
    if value is None:
        return default
    return struct.unpack("<f", value.to_bytes(4, "little"))[0]


def as_double(value: int | None, default: float = 0.0) -> float:
    if value is None:
        return default
    return struct.unpack("<d", value.to_bytes(8, "little"))[0]


def repeated_ints(msg: Message, number: int) -> list[int]:
    """A repeated integer field, packed (one length-delimited run) or not, as signed int64s."""
    out: list[int] = []
    for value in msg.get(number, ()):
        if isinstance(value, memoryview):
            pos, end = 0, len(value)
            while pos < end:
                v, pos = read_varint(value, pos, end)
                out.append(as_int64(v))
        else:
            out.append(as_int64(value))
    return out


def repeated_fixed(msg: Message, number: int, dtype: str) -> np.ndarray:
    """A repeated fixed-width field (float `<f4`, double `<f8`, fixed32 `<u4`...), packed or not."""
    dt = np.dtype(dtype)
    parts: list[np.ndarray] = []
    for value in msg.get(number, ()):
        if isinstance(value, memoryview):
            if len(value) % dt.itemsize:
                raise ProtoError(f"packed field {number} is not a whole number of {dt.itemsize}-byte values")
            parts.append(np.frombuffer(value, dtype=dt))
        else:
            parts.append(np.frombuffer(value.to_bytes(dt.itemsize, "little"), dtype=dt))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dt)
