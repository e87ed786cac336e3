"""The TensorFlow messages around checkpoints, read with `protowire` into frozen dataclasses.

- `TrackableObjectGraph`: the `_CHECKPOINTABLE_OBJECT_GRAPH` string entry of a TF2 checkpoint
  (which node owns which variable, and each variable's `full_name`, i.e. its Keras path);
- the `checkpoint` state file (text format: `model_checkpoint_path: "model.ckpt-123"`);
- `saved_model.pb`: SavedModel → MetaGraphDef → SavedObjectGraph (children, SavedVariable,
  SavedUserObject); the GraphDef and the traced functions are skipped, never parsed;
- tf_keras's `keras_metadata.pb` (`SavedMetadata`: one JSON string per Keras object).

Field numbers come from TF 2.21's descriptors. Unknown fields are skipped; node ids are checked
against the node count; names are bounded by `Limits.max_name_bytes`. Every failure is a
`CorruptModelError` (or `UnsafeModelError` for sizes over a limit).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Union

from ...errors import CorruptModelError, NotAModelError, UnsafeModelError
from ...safety import DEFAULT_LIMITS, Limits, load_json, printable
from .. import protowire as pw

Buffer = Union[bytes, bytearray, memoryview]

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE = "VARIABLE_VALUE"
MAX_NODES = 1_000_000
MAX_STATE_FILE_BYTES = 1 << 20  # a `checkpoint` text file lists a few paths
MAX_MESSAGE_BYTES = 2 << 30  # protobuf's own ceiling for one serialized message

# DataType enum (types.proto) → TF's dtype name (`tf.as_dtype(n).name`).
DTYPE_NAMES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string", 8: "complex64",
    9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16",
    16: "quint16", 17: "uint16", 18: "complex128", 19: "float16", 20: "resource", 21: "variant",
    22: "uint32", 23: "uint64", 24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz",
    27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2",
    33: "float4_e2m1fn",
}


def dtype_name(number: int) -> str:
    """TF's name of a DataType enum value; `DT_<n>` for values this table does not know."""
    return DTYPE_NAMES.get(number, f"DT_{number}")


# ----------------------------------------------------------------------------------------- helpers
class MessageReader:
    """Typed access to the fields of one message, every failure a CorruptModelError about `what`."""

    def __init__(self, data: Buffer, what: str, limits: Limits) -> None:
        self.what, self.limits = what, limits
        try:
            self.msg = pw.parse(data)
        except pw.ProtoError as exc:
            raise CorruptModelError(f"{what} is not a valid protocol buffer ({exc})") from None

    def sub(self, number: int, what: str) -> "MessageReader | None":
        value = pw.first(self.msg, number)
        return None if value is None else MessageReader(self.bytes_of(value, number), f"{self.what}: {what}", self.limits)

    def subs(self, number: int, what: str) -> list["MessageReader"]:
        return [MessageReader(self.bytes_of(v, number), f"{self.what}: {what}", self.limits) for v in self.msg.get(number, ())]

    def has(self, number: int) -> bool:
        return number in self.msg

    def int(self, number: int, default: int = 0) -> int:
        value = pw.first(self.msg, number)
        if isinstance(value, memoryview):
            raise CorruptModelError(f"{self.what}: field {number} should be a number")
        return pw.as_int64(value, default)

    def bool(self, number: int) -> bool:
        return self.int(number) != 0

    def text(self, number: int, *, name: bool = True) -> str:
        return self.decode(self.bytes_of(pw.first(self.msg, number), number), number, name)

    def texts(self, number: int, *, name: bool = True) -> list[str]:
        return [self.decode(self.bytes_of(v, number), number, name) for v in self.msg.get(number, ())]

    def bytes_of(self, value: Any, number: int) -> bytes:
        if value is None:
            return b""
        if isinstance(value, int):
            raise CorruptModelError(f"{self.what}: field {number} should be length-delimited")
        return bytes(value)

    def decode(self, raw: bytes, number: int, name: bool) -> str:
        if name and len(raw) > self.limits.max_name_bytes:
            raise UnsafeModelError(f"{self.what}: a name of {len(raw)} bytes (limit {self.limits.max_name_bytes})")
        return raw.decode("utf-8", "surrogateescape")

    def count(self, number: int) -> int:
        n = len(self.msg.get(number, ()))
        if n > MAX_NODES:
            raise UnsafeModelError(f"{self.what}: more than {MAX_NODES} entries")
        return n


@dataclass(frozen=True)
class ObjectReference:
    node_id: int
    local_name: str


@dataclass(frozen=True)
class SlotVariableReference:
    original_variable_node_id: int
    slot_name: str
    slot_variable_node_id: int


@dataclass(frozen=True)
class VersionDef:
    producer: int
    min_consumer: int
    bad_consumers: tuple[int, ...]


def _references(reader: MessageReader, number: int, node_count: int, what: str) -> tuple[ObjectReference, ...]:
    refs = []
    for child in reader.subs(number, what):
        node_id = child.int(1)
        if not 0 <= node_id < node_count:
            raise CorruptModelError(f"{reader.what}: {what} refers to node {node_id}, the graph has {node_count}")
        refs.append(ObjectReference(node_id, child.text(2)))
    return tuple(refs)


def _slot_variables(reader: MessageReader, node_count: int) -> tuple[SlotVariableReference, ...]:
    slots = []
    for slot in reader.subs(3, "slot variable"):
        original, target = slot.int(1), slot.int(3)
        if not (0 <= original < node_count and 0 <= target < node_count):
            raise CorruptModelError(f"{reader.what}: a slot variable refers to a node out of range")
        slots.append(SlotVariableReference(original, slot.text(2), target))
    return tuple(slots)


def _version(reader: MessageReader | None) -> VersionDef | None:
    if reader is None:
        return None
    return VersionDef(reader.int(1), reader.int(2), tuple(pw.repeated_ints(reader.msg, 3)))


# ----------------------------------------------------------------------------------------- object graph
@dataclass(frozen=True)
class SerializedTensor:
    name: str  # the attribute: "VARIABLE_VALUE", "OBJECT_CONFIG_JSON", ...
    full_name: str  # the variable's own name without ":0", e.g. "enc_lstm/lstm_cell/kernel"
    checkpoint_key: str  # the bundle entry holding it


@dataclass(frozen=True)
class TrackableObject:
    children: tuple[ObjectReference, ...]
    attributes: tuple[SerializedTensor, ...]
    slot_variables: tuple[SlotVariableReference, ...]


@dataclass(frozen=True)
class TrackableObjectGraph:
    nodes: tuple[TrackableObject, ...]  # node 0 is the root

    def full_names(self) -> dict[str, str]:
        """checkpoint_key → full_name, for every serialized tensor of every node."""
        return {a.checkpoint_key: a.full_name for node in self.nodes for a in node.attributes}


def parse_trackable_object_graph(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> TrackableObjectGraph:
    """The graph, decoded in one pass when it is made of the usual fields in their usual encodings
    (12,000 variables in ~0.2 s); anything else (unknown fields, odd encodings, damage) goes through
    the general, checking decoder below, which reads it or raises."""
    raw = bytes(data)
    try:
        return _fast_object_graph(raw, limits)
    except _Irregular:
        return _general_object_graph(raw, limits)


class _Irregular(Exception):
    """Not the plain encoding the fast decoder reads: let the general decoder handle it."""


def _fast_object_graph(buf: bytes, limits: Limits) -> TrackableObjectGraph:
    end = len(buf)
    limit = limits.max_name_bytes
    nodes: list[TrackableObject] = []
    largest_id = -1
    pos = 0

    def varint(pos: int) -> tuple[int, int]:
        byte = buf[pos] if pos < end else -1
        if 0 <= byte < 0x80:
            return byte, pos + 1
        result = shift = 0
        for i in range(pos, min(pos + 10, end)):
            byte = buf[i]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, i + 1
            shift += 7
        raise _Irregular

    def text(pos: int, stop: int) -> tuple[str, int]:
        length, pos = varint(pos)
        if pos + length > stop or length > limit:  # the general decoder reports a name over the limit
            raise _Irregular
        return buf[pos:pos + length].decode("utf-8", "surrogateescape"), pos + length

    def attribute(pos: int, stop: int) -> SerializedTensor:
        """SerializedTensor {1 name, 2 full_name, 3 checkpoint_key}: strings, each at most once."""
        out = ["", "", ""]
        seen = 0
        while pos < stop:
            key, pos = varint(pos)
            number = key >> 3
            if key & 7 != 2 or not 1 <= number <= 3 or seen & (1 << number):
                raise _Irregular
            seen |= 1 << number
            out[number - 1], pos = text(pos, stop)
        if pos != stop:
            raise _Irregular
        return SerializedTensor(out[0], out[1], out[2])

    def reference(pos: int, stop: int, count: int) -> list:
        """ObjectReference {1 node_id, 2 local_name} / SlotVariableReference {1 id, 2 name, 3 id}."""
        out: list = [0, "", 0]
        seen = 0
        while pos < stop:
            key, pos = varint(pos)
            number, wire = key >> 3, key & 7
            if seen & (1 << number):
                raise _Irregular  # a repeated field: the general decoder's rules apply
            seen |= 1 << (number & 31)
            if number == 2 and wire == 2:
                out[1], pos = text(pos, stop)
            elif number in (1, 3) and number <= count and wire == 0:
                out[number - 1], pos = varint(pos)
            else:
                raise _Irregular
        if pos != stop:
            raise _Irregular
        return out

    while pos < end:
        key, pos = varint(pos)
        if key != 0x0A:
            raise _Irregular
        length, pos = varint(pos)
        stop = pos + length
        if stop > end:
            raise _Irregular
        children, attributes, slots = [], [], []
        while pos < stop:
            key, pos = varint(pos)
            if key & 7 != 2:
                raise _Irregular
            length, pos = varint(pos)
            sub = pos + length
            if sub > stop:
                raise _Irregular
            number = key >> 3
            if number == 1:
                node_id, name, _ = reference(pos, sub, 2)
                largest_id = max(largest_id, node_id)
                children.append(ObjectReference(node_id, name))
            elif number == 2:
                attributes.append(attribute(pos, sub))
            elif number == 3:
                original, name, target = reference(pos, sub, 3)
                largest_id = max(largest_id, original, target)
                slots.append(SlotVariableReference(original, name, target))
            elif number not in (4, 5):  # registered_saver, has_checkpoint_values: not needed
                raise _Irregular
            pos = sub
        if pos != stop:
            raise _Irregular
        nodes.append(TrackableObject(tuple(children), tuple(attributes), tuple(slots)))
        if len(nodes) > MAX_NODES:
            raise UnsafeModelError(f"the checkpoint's object graph: more than {MAX_NODES} entries")
    if largest_id >= len(nodes):
        raise _Irregular  # the general decoder names the reference out of range
    return TrackableObjectGraph(tuple(nodes))


def _general_object_graph(data: Buffer, limits: Limits) -> TrackableObjectGraph:
    root = MessageReader(data, "the checkpoint's object graph", limits)
    count = root.count(1)
    nodes = []
    for node in root.subs(1, "node"):
        attributes = tuple(SerializedTensor(a.text(1), a.text(2), a.text(3)) for a in node.subs(2, "attribute"))
        nodes.append(TrackableObject(_references(node, 1, count, "a child"), attributes,
                                     _slot_variables(node, count)))
    return TrackableObjectGraph(tuple(nodes))


# ----------------------------------------------------------------------------------------- `checkpoint` file
@dataclass(frozen=True)
class CheckpointState:
    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...]
    all_model_checkpoint_timestamps: tuple[float, ...]
    last_preserved_timestamp: float | None

    @property
    def latest(self) -> str | None:
        """The newest checkpoint: model_checkpoint_path, else the last of all_model_checkpoint_paths."""
        if self.model_checkpoint_path:
            return self.model_checkpoint_path
        return self.all_model_checkpoint_paths[-1] if self.all_model_checkpoint_paths else None


_FIELD = re.compile(rb'\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*("(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[^\s"\']+)')
_COMMENT = re.compile(rb"#[^\n]*")
_ESCAPES = {ord("n"): 10, ord("t"): 9, ord("r"): 13, ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("v"): 11,
            ord("\\"): 92, ord("'"): 39, ord('"'): 34, ord("?"): 63}


def parse_checkpoint_state(data: bytes, where: str = "the `checkpoint` file") -> CheckpointState:
    """The text-format CheckpointState TF writes beside its checkpoints; unknown fields are ignored."""
    if len(data) > MAX_STATE_FILE_BYTES:
        raise UnsafeModelError(f"{where} is {len(data)} bytes, over the {MAX_STATE_FILE_BYTES}-byte limit")
    text = _COMMENT.sub(b"", data)
    fields: dict[bytes, list[bytes]] = {}
    pos = 0
    while text[pos:].strip():
        match = _FIELD.match(text, pos)
        if match is None:
            raise CorruptModelError(f"{where} is not a text-format CheckpointState (at byte {pos})")
        fields.setdefault(match.group(1), []).append(match.group(2))
        pos = match.end()
    paths = [_text_string(v, where) for v in fields.get(b"all_model_checkpoint_paths", [])]
    current = fields.get(b"model_checkpoint_path")
    stamps = [_text_number(v, where) for v in fields.get(b"all_model_checkpoint_timestamps", [])]
    last = fields.get(b"last_preserved_timestamp")
    return CheckpointState(_text_string(current[-1], where) if current else "", tuple(paths), tuple(stamps),
                           _text_number(last[-1], where) if last else None)


def _text_string(token: bytes, where: str) -> str:
    if len(token) < 2 or token[:1] not in (b'"', b"'"):
        raise CorruptModelError(f"{where}: expected a quoted path, found {printable(token.decode('latin-1'), 80)}")
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != 92:  # backslash
            out.append(c)
            continue
        i = _unescape(body, i, out, where)
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptModelError(f"{where}: a path is not valid UTF-8") from None


def _unescape(body: bytes, i: int, out: bytearray, where: str) -> int:
    """One C escape after a backslash at body[i-1]: \\n, \\\", octal \\ooo, hex \\xHH."""
    c = body[i]
    if c in _ESCAPES:
        out.append(_ESCAPES[c])
        return i + 1
    octal = re.match(rb"[0-7]{1,3}", body[i:i + 3])
    if octal:
        out.append(int(octal.group(), 8) & 0xFF)
        return i + len(octal.group())
    hexa = re.match(rb"x([0-9A-Fa-f]{1,2})", body[i:i + 3])
    if hexa:
        out.append(int(hexa.group(1), 16))
        return i + len(hexa.group())
    raise CorruptModelError(f"{where}: bad escape \\{chr(c)} in a path")


def _text_number(token: bytes, where: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise CorruptModelError(f"{where}: expected a number, found {printable(token.decode('latin-1'), 80)}") from None


def read_regular_file(path: str | os.PathLike[str], max_bytes: int, what: str) -> bytes:
    """The whole of a small regular file, never more than `max_bytes` (a FIFO or device is refused
    without blocking: O_NONBLOCK, then fstat)."""
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        raise NotAModelError(f"cannot read {what} ({exc.strerror or exc})", file=name) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAModelError(f"{what} is not a regular file", file=name)
        if st.st_size > max_bytes:
            raise UnsafeModelError(f"{what} is {st.st_size} bytes, over the {max_bytes}-byte limit", file=name)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 24, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise UnsafeModelError(f"{what} grew past the {max_bytes}-byte limit while being read", file=name)
        return b"".join(chunks)
    except OSError as exc:
        raise NotAModelError(f"cannot read {what} ({exc.strerror or exc})", file=name) from None
    finally:
        os.close(fd)


def read_checkpoint_state(path: str | os.PathLike[str]) -> CheckpointState:
    """Read and parse a `checkpoint` file."""
    data = read_regular_file(path, MAX_STATE_FILE_BYTES, "the `checkpoint` file")
    return parse_checkpoint_state(data, f"{os.fspath(path)}")


# ----------------------------------------------------------------------------------------- SavedModel
@dataclass(frozen=True)
class SavedVariable:
    name: str  # the tf.Variable's name without ":0"
    dtype: str
    shape: tuple[int, ...] | None  # None: unknown rank; -1 for an unknown dimension
    trainable: bool


@dataclass(frozen=True)
class SavedUserObject:
    identifier: str  # "_tf_keras_layer", "_generic_user_object", ...
    version: VersionDef | None
    metadata: str  # tf_keras before TF 2.5 put each layer's JSON here (empty otherwise)


@dataclass(frozen=True)
class SavedObject:
    kind: str  # which of SavedObject's `kind` fields is set ("user_object", "variable", ...; "" if none)
    children: tuple[ObjectReference, ...]
    slot_variables: tuple[SlotVariableReference, ...]
    variable: SavedVariable | None
    user_object: SavedUserObject | None


@dataclass(frozen=True)
class SavedObjectGraph:
    nodes: tuple[SavedObject, ...]


@dataclass(frozen=True)
class MetaGraph:
    tags: tuple[str, ...]
    tensorflow_version: str
    tensorflow_git_version: str
    object_graph: SavedObjectGraph | None


@dataclass(frozen=True)
class SavedModel:
    schema_version: int
    meta_graphs: tuple[MetaGraph, ...]


_KINDS = {4: "user_object", 5: "asset", 6: "function", 7: "variable", 8: "bare_concrete_function",
          9: "constant", 10: "resource", 12: "captured_tensor"}


def parse_saved_model(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> SavedModel:
    """saved_model.pb, reading only the metadata and the object graph of each MetaGraphDef."""
    root = MessageReader(data, "saved_model.pb", limits)
    metas = []
    for meta in root.subs(2, "meta graph"):
        info = meta.sub(1, "meta info")
        graph = meta.sub(7, "object graph")
        metas.append(MetaGraph(
            tuple(info.texts(4)) if info else (), info.text(5) if info else "", info.text(6) if info else "",
            _saved_object_graph(graph) if graph else None))
    return SavedModel(root.int(1), tuple(metas))


def _saved_object_graph(graph: MessageReader) -> SavedObjectGraph:
    count = graph.count(1)
    nodes = []
    for node in graph.subs(1, "node"):
        kind = next((name for number, name in _KINDS.items() if number in node.msg), "")
        variable = node.sub(7, "variable")
        user = node.sub(4, "user object")
        nodes.append(SavedObject(
            kind, _references(node, 1, count, "a child"), _slot_variables(node, count),
            _saved_variable(variable) if variable else None,
            SavedUserObject(user.text(1), _version(user.sub(2, "version")), user.text(3, name=False)) if user else None))
    return SavedObjectGraph(tuple(nodes))


def _saved_variable(variable: MessageReader) -> SavedVariable:
    shape = variable.sub(2, "shape")
    dims: tuple[int, ...] | None = ()
    if shape is not None:
        dims = None if shape.bool(3) else tuple(d.int(1) for d in shape.subs(2, "dim"))
    return SavedVariable(variable.text(6), dtype_name(variable.int(1)), dims, variable.bool(3))


# ----------------------------------------------------------------------------------------- keras_metadata.pb
@dataclass(frozen=True)
class KerasObjectMetadata:
    node_id: int  # equals the node index in the SavedModel's checkpoint object graph
    node_path: str  # "root", "root.layer_with_weights-0", "root.layer_with_weights-1.forward_layer.cell"
    identifier: str  # "_tf_keras_network", "_tf_keras_rnn_layer", ...
    metadata: str  # JSON (tf_keras wraps tuples as {"class_name": "__tuple__", "items": [...]})
    version: VersionDef | None

    def metadata_json(self, limits: Limits = DEFAULT_LIMITS) -> Any:
        return load_json(self.metadata.encode("utf-8", "surrogateescape"),
                         f"keras_metadata.pb node {self.node_id}", limits)


def read_saved_model(folder: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> SavedModel:
    """`folder/saved_model.pb` (traced functions make it MBs; protobuf itself caps it at 2 GiB)."""
    path = os.path.join(os.fspath(folder), "saved_model.pb")
    limit = min(limits.max_file_bytes, MAX_MESSAGE_BYTES)
    return parse_saved_model(read_regular_file(path, limit, "saved_model.pb"), limits)


def read_keras_metadata(folder: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS
                        ) -> tuple[KerasObjectMetadata, ...] | None:
    """`folder/keras_metadata.pb` of a tf_keras SavedModel; None when the file is absent."""
    path = os.path.join(os.fspath(folder), "keras_metadata.pb")
    if not os.path.lexists(path):
        return None
    limit = min(limits.max_file_bytes, MAX_MESSAGE_BYTES)
    return parse_keras_metadata(read_regular_file(path, limit, "keras_metadata.pb"), limits)


def parse_keras_metadata(data: Buffer, limits: Limits = DEFAULT_LIMITS) -> tuple[KerasObjectMetadata, ...]:
    root = MessageReader(data, "keras_metadata.pb", limits)
    root.count(1)
    return tuple(KerasObjectMetadata(node.int(2), node.text(3), node.text(4), node.text(5, name=False),
                                     _version(node.sub(6, "version")))
                 for node in root.subs(1, "node"))
