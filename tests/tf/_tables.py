"""A minimal writer of TF tables and bundle protos, to hand-make hostile checkpoints for the tests.

Follows table_builder.cc / format.cc: prefix-compressed entries with restarts, a 5-byte trailer
(type + masked CRC-32C of block + type), an empty metaindex, an index block restarting at every
key, the 48-byte footer with the magic. Snappy blocks are written as literal-only snappy, which
any snappy decoder must accept.
"""
from __future__ import annotations

import struct

from lstm_inspect.formats.tf.crc32c import crc32c, masked

MAGIC = struct.pack("<Q", 0xDB4775248B80FB57)


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return varint(number << 3 | 2) + varint(len(value)) + bytes(value)
    return varint(number << 3) + varint(value)


def fixed32(number: int, value: int) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<I", value)


def shape_proto(dims) -> bytes:
    return b"".join(field(2, field(1, d)) for d in dims)


def entry_proto(dtype=1, shape=(), shard=0, offset=0, size=0, crc=0, slices=()) -> bytes:
    out = field(1, dtype) + field(2, shape_proto(shape))
    out += field(3, shard) if shard else b""
    out += field(4, offset) if offset else b""
    out += field(5, size) if size else b""
    out += fixed32(6, crc)
    for extents in slices:  # ((start, length or None), ...)
        out += field(7, b"".join(field(1, field(1, s) + (field(2, n) if n is not None else b"")) for s, n in extents))
    return out


def header_proto(num_shards=1, endianness=0, producer=1, min_consumer=0) -> bytes:
    return field(1, num_shards) + (field(2, endianness) if endianness else b"") + field(
        3, field(1, producer) + (field(2, min_consumer) if min_consumer else b""))


def block(items, restart_interval=16) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        previous = key
    restarts = restarts or [0]
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    out = bytearray(varint(len(data)))
    for start in range(0, len(data), 1 << 16):
        chunk = data[start:start + (1 << 16)]
        n = len(chunk) - 1
        out += bytes([60 << 2]) + bytes([n]) if n < 256 else bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


def table(items, block_size=4096, compress=None) -> bytes:
    """A table of sorted (key, value) items; `compress(raw) -> bytes` makes snappy blocks (type 1)."""
    out = bytearray()
    index = []

    def write_block(raw: bytes) -> tuple[int, int]:
        body, kind = (compress(raw), 1) if compress else (raw, 0)
        offset = len(out)
        out.extend(body + bytes([kind]) + struct.pack("<I", masked(crc32c(body + bytes([kind])))))
        return offset, len(body)

    pending = []
    for key, value in items:
        pending.append((key, value))
        if sum(len(k) + len(v) for k, v in pending) >= block_size:
            index.append((pending[-1][0], write_block(block(pending))))
            pending = []
    if pending:
        index.append((pending[-1][0], write_block(block(pending))))
    meta = write_block(block([]))
    index_handle = write_block(block([(k, varint(o) + varint(n)) for k, (o, n) in index], restart_interval=1))
    footer = varint(meta[0]) + varint(meta[1]) + varint(index_handle[0]) + varint(index_handle[1])
    return bytes(out) + footer.ljust(40, b"\x00") + MAGIC
