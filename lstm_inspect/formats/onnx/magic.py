"""Is this the start of an ONNX model? ONNX files have no magic number: a ModelProto is recognised by
its first protocol-buffer fields.

Serialisers (protobuf's, prost's, onnx's) write fields in field-number order, so a model starts with
`ir_version` (field 1, a varint; 3 to 64: IR 1 and 2 never left onnx's pre-releases, and a SavedModel,
whose first field is its schema version 1, is not taken for a model), followed only by fields a
ModelProto has, each with its own wire type, lengths within the file and names that are UTF-8. The walk
covers the first bytes read by the sniffer; it accepts a model whose next field runs past them (the
rest of the file, or a truncation the reader will report) and refuses a file it reads to the end without
finding a graph.
"""
from __future__ import annotations

# ModelProto field number -> wire type (0 varint, 2 length-delimited); onnx/onnx.proto, IR 13.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_TEXT_FIELDS = (2, 3, 4)  # producer_name, producer_version, domain
_GRAPH = 7
MIN_IR_VERSION, MAX_IR_VERSION = 3, 64


def looks_like_onnx(head: bytes, size: int) -> bool:
    """Whether `head` (the first bytes of a file of `size` bytes) starts an ONNX ModelProto."""
    try:
        fields = _walk(head, size)
    except _Overlong:
        return False
    if fields is None or not fields[0]:
        return False
    seen, cut = fields
    if seen[0][0] != (1, 0):
        return False
    ir_version = seen[0][1]
    numbers = [number for (number, _), _ in seen]
    return (MIN_IR_VERSION <= ir_version <= MAX_IR_VERSION and numbers.count(1) == 1
            and (cut or _GRAPH in numbers))


def _walk(head: bytes, size: int) -> tuple[list[tuple[tuple[int, int], int]], bool] | None:
    """The ((field, wire), varint value or length) of each field in `head`, and whether the walk was cut
    by the end of `head` (the file goes on, or is truncated); None at the first field a ModelProto
    cannot have."""
    seen: list[tuple[tuple[int, int], int]] = []
    pos, end = 0, len(head)
    while pos < end:
        key = _varint(head, pos)
        if key is None:
            return seen, True
        (key_value, pos) = key
        number, wire = key_value >> 3, key_value & 7
        if _MODEL_FIELDS.get(number) != wire:
            return None
        value = _varint(head, pos)
        if value is None:
            return seen, True
        amount, pos = value
        seen.append(((number, wire), amount))
        if wire == 0:
            continue
        if pos + amount > end:  # the field runs past what was read
            return (seen, True) if amount <= size - pos or size <= end else None
        if number in _TEXT_FIELDS and not _is_utf8(head[pos:pos + amount]):
            return None
        pos += amount
    return seen, False


class _Overlong(Exception):
    """A varint of more than 10 bytes: not protocol-buffer data."""


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(value, next position), or None when the bytes end first."""
    value = shift = 0
    for i in range(pos, min(len(data), pos + 10)):
        value |= (data[i] & 0x7F) << shift
        if data[i] < 0x80:
            return value, i + 1
        shift += 7
    if len(data) - pos >= 10:
        raise _Overlong
    return None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
