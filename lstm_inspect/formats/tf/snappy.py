"""A bounded decompressor for the snappy *block* format (not the framed stream format).

TensorFlow's table reader accepts snappy-compressed blocks (block type 1) although its writers never
compress; this is the ~40-line decoder that makes such an index readable without a C library.

Format: a varint with the uncompressed length, then elements whose tag byte's low two bits say
literal (00) or back-reference copy with a 1-, 2- or 4-byte offset (01, 10, 11). The declared
length is checked against `max_output` before anything is allocated, and every element against
the bytes left in the input and the output produced so far, so hostile input ends in a
`SnappyError` (never an IndexError, a hang or more memory than `max_output`).
"""
from __future__ import annotations

from typing import Union

Buffer = Union[bytes, bytearray, memoryview]


class SnappyError(ValueError):
    """The bytes are not a valid snappy block."""


class SnappyLimitError(SnappyError):
    """The block declares more output than the caller allows."""


def decompressed_length(data: Buffer) -> tuple[int, int]:
    """(declared uncompressed length, bytes used by its varint): at most 5 bytes (32 bits)."""
    view = memoryview(data).cast("B")
    value = shift = 0
    for i in range(min(5, len(view))):
        value |= (view[i] & 0x7F) << shift
        if view[i] < 0x80:
            if value >> 32:
                break
            return value, i + 1
        shift += 7
    raise SnappyError("bad length header")


def decompress(data: Buffer, max_output: int) -> bytes:
    """The uncompressed bytes of one snappy block of at most `max_output` bytes."""
    src = memoryview(data).cast("B")
    length, pos = decompressed_length(src)
    if length > max_output:
        raise SnappyLimitError(f"declares {length} uncompressed bytes, over the {max_output}-byte limit")
    out = bytearray()
    end = len(src)
    while pos < end:
        tag = src[pos]
        kind = tag & 3
        if kind == 0:
            pos, chunk = _literal(src, pos, tag)
            if len(out) + len(chunk) > length:
                raise SnappyError("a literal runs past the declared length")
            out += chunk
            continue
        pos, offset, count = _copy(src, pos, tag, kind)
        if offset == 0 or offset > len(out):
            raise SnappyError(f"a copy refers {offset} bytes back, only {len(out)} written")
        if len(out) + count > length:
            raise SnappyError("a copy runs past the declared length")
        _append_copy(out, offset, count)
    if len(out) != length:
        raise SnappyError(f"holds {len(out)} bytes, its header says {length}")
    return bytes(out)


def _literal(src: memoryview, pos: int, tag: int) -> tuple[int, memoryview]:
    size = tag >> 2
    pos += 1
    if size >= 60:  # the length minus one follows in 1..4 little-endian bytes
        extra = size - 59
        if pos + extra > len(src):
            raise SnappyError("truncated literal length")
        size = int.from_bytes(src[pos:pos + extra], "little")
        pos += extra
    size += 1
    if pos + size > len(src):
        raise SnappyError("truncated literal")
    return pos + size, src[pos:pos + size]


def _copy(src: memoryview, pos: int, tag: int, kind: int) -> tuple[int, int, int]:
    if kind == 1:
        if pos + 2 > len(src):
            raise SnappyError("truncated copy")
        return pos + 2, (tag >> 5) << 8 | src[pos + 1], 4 + (tag >> 2 & 7)
    width = 2 if kind == 2 else 4
    if pos + 1 + width > len(src):
        raise SnappyError("truncated copy")
    return pos + 1 + width, int.from_bytes(src[pos + 1:pos + 1 + width], "little"), 1 + (tag >> 2)


def _append_copy(out: bytearray, offset: int, count: int) -> None:
    start = len(out) - offset
    if offset >= count:
        out += out[start:start + count]
        return
    pattern = out[start:]  # an overlapping copy repeats the last `offset` bytes
    repeats, rest = divmod(count, offset)
    out += pattern * repeats + pattern[:rest]
