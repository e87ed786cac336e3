"""Is this the start of an ONNX model? ONNX files have no magic number: a ModelProto is recognised by
its first protocol-buffer fields.

Serialisers (protobuf's, prost's, onnx's) write fields in field-number order, so a model starts with
`ir_version` (field 1, a varint; 3 to 64: IR 1 and 2 never left onnx's pre-releases, and a SavedModel,
whose first field is its schema version 1, is not taken for a model), followed only by fields a
ModelProto has, each with its own wire type, lengths within the file, names in UTF-8, and then the
graph (field 7), whose own first fields must be GraphProto fields. The walk covers the bytes the sniffer
read: a graph running past them is fine (the rest of the file, or a truncation the reader reports), and
so is a text field (a long doc_string) still running when they end. Anything else is not ONNX.
"""
from __future__ import annotations

# ModelProto field number -> wire type (0 varint, 2 length-delimited); onnx/onnx.proto, IR 13.
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_TEXT_FIELDS = (2, 3, 4, 6)  # producer_name, producer_version, domain, doc_string
_GRAPH = 7
# GraphProto: node, name, initializer, doc_string, input, output, value_info, quantization_annotation,
# sparse_initializer, metadata_props: all length-delimited.
_GRAPH_FIELDS = frozenset({1, 2, 5, 10, 11, 12, 13, 14, 15, 16})
MIN_IR_VERSION, MAX_IR_VERSION = 3, 64


class _NotModel(Exception):
    """The bytes cannot start a ModelProto."""


class _CutShort(Exception):
    """The bytes start a ModelProto whose graph (or a text field) runs past the end of the file."""


def looks_like_onnx(head: bytes, size: int) -> bool:
    """Whether `head` (the first bytes of a file of `size` bytes) starts an ONNX ModelProto."""
    try:
        return _walk(head, size)
    except (_NotModel, _CutShort):
        return False


def cut_short(head: bytes, size: int) -> str | None:
    """What is missing when `head` starts an ONNX model the file is too short to hold, else None."""
    try:
        _walk(head, size)
    except _CutShort as cut:
        return str(cut)
    except _NotModel:
        return None
    return None


def _walk(head: bytes, size: int) -> bool:
    pos, end, first = 0, len(head), True
    while pos < end:
        key, pos = _varint(head, pos)
        number, wire = key >> 3, key & 7
        if _MODEL_FIELDS.get(number) != wire or (number == 1) != first:
            raise _NotModel  # ir_version first, and only once
        value, pos = _varint(head, pos)
        if first and not MIN_IR_VERSION <= value <= MAX_IR_VERSION:
            raise _NotModel
        first = False
        if wire == 0:
            continue
        if number == _GRAPH:
            well = _graph_starts_well(head[pos:min(end, pos + value)], value)
            if well and pos + value > size:
                raise _CutShort(f"an ONNX model cut short: its graph needs {value:,} bytes, the file holds "
                                f"{size - pos:,} after its header")
            return well
        if pos + value > end:  # still running where the head ends: only a text field may
            if number not in _TEXT_FIELDS or not _utf8_prefix(head[pos:]):
                raise _NotModel
            if pos + value > size:
                raise _CutShort(f"an ONNX model cut short inside its header (field {number} needs "
                                f"{value:,} bytes, {size - pos:,} remain)")
            return True
        if number in _TEXT_FIELDS and not _utf8(head[pos:pos + value]):
            raise _NotModel
        pos += value
    return False  # read to the end of the head without reaching a graph


def _graph_starts_well(seen: bytes, length: int) -> bool:
    """The graph's bytes that were read parse as GraphProto fields (an empty graph is a graph)."""
    pos = 0
    while pos < len(seen):
        key, pos = _varint(seen, pos, cut_ok=True)
        if pos < 0:
            return True
        if key & 7 != 2 or key >> 3 not in _GRAPH_FIELDS:
            raise _NotModel
        value, pos = _varint(seen, pos, cut_ok=True)
        if pos < 0:
            return True
        if pos + value > length:
            raise _NotModel
        pos += value
    return True


def _varint(data: bytes, pos: int, cut_ok: bool = False) -> tuple[int, int]:
    """(value, next position); (0, -1) when the bytes end first and `cut_ok`."""
    value = shift = 0
    for i in range(pos, min(len(data), pos + 10)):
        value |= (data[i] & 0x7F) << shift
        if data[i] < 0x80:
            return value, i + 1
        shift += 7
    if cut_ok and len(data) - pos < 10:
        return 0, -1
    raise _NotModel  # overlong, or cut inside the model's own fields


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _utf8_prefix(raw: bytes) -> bool:
    """UTF-8 text cut anywhere (a character may be split at the end)."""
    return any(_utf8(raw[:len(raw) - k]) for k in range(min(4, len(raw) + 1)))
