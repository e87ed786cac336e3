"""An ONNX ModelProto read with the bounded wire reader (`protowire`): structure eagerly, tensor values
lazily.

The file is memory-mapped and never copied: a tensor keeps a view of its `raw_data` (or of its typed
field) and decodes it only in `OnnxTensor.read()`. Field numbers are those of `onnx/onnx.proto` (IR 14).
Every count, length, nesting level and declared size is checked before it is used, so a hostile file
ends in a typed error from `lstm_inspect.errors`:
- declared element counts must match the bytes that are there (a tensor claiming 2 GiB with 10 bytes of
  data is refused before anything is allocated);
- external data (`data_location = EXTERNAL`) must name a regular file inside the model's folder (no
  absolute path, no `..`, no symlink leading out of the folder), and its range must lie in that file;
- subgraphs (`If`/`Loop`/`Scan` bodies) nest at most `OnnxBounds.max_graph_depth` levels and the whole
  model holds at most `OnnxBounds.max_nodes` nodes.
"""
from __future__ import annotations

import math
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import CorruptModelError, InspectError, NotAModelError, UnsafeModelError, UnsupportedDialectError
from ...safety import DEFAULT_LIMITS, Limits, printable
from .. import protowire as pw
from ..protowire import Message, ProtoError, Value

MiB = 1 << 20


@dataclass(frozen=True)
class OnnxBounds:
    """Budgets specific to ONNX graphs (sizes of files and tensors come from `safety.Limits`)."""

    max_graph_depth: int = 32  # nested subgraphs: real exporters use 4 or 5 (silero-vad: 3)
    max_nodes: int = 2_000_000  # over the whole model, subgraphs and functions included
    max_dims: int = 64  # numpy's own limit on the rank of an array
    max_string_bytes: int = 64 * MiB  # doc strings, metadata values, string attributes


DEFAULT_BOUNDS = OnnxBounds()

Dim = int | str | None  # dim_value, dim_param, or unknown


@dataclass(frozen=True)
class ExternalData:
    """Where an EXTERNAL tensor's bytes are: `location` as the file says it, `path` as resolved."""

    location: str
    path: str
    offset: int
    length: int


@dataclass(frozen=True)
class OnnxTensor:
    """One TensorProto. `dtype` is a numpy name (`float32`, `float16`, `int8`, `bool`, ...), or
    `bfloat16`, or the ONNX name of a type numpy lacks (`float8e4m3fn`, `int4`, `string`, ...).

    `storage` says where the values are: `raw_data`, a typed field (`float_data`, `int32_data`,
    `int64_data`, `double_data`, `uint64_data`, `string_data`), `external`, or `none` (no values).
    `extent` is (file, offset) of the values' raw little-endian bytes when they lie in a file exactly
    as `read()` returns them (raw or external data of a numpy type; not bfloat16, which `read()` widens).
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    storage: str
    external: ExternalData | None = None
    extent: tuple[str, int] | None = field(default=None, compare=False)
    _payload: Any = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        return math.prod(self.dims)

    @property
    def nbytes(self) -> int:
        kind = _KIND_BY_NAME.get(self.dtype)
        return self.size * np.dtype(kind.numpy).itemsize if kind is not None and kind.numpy else 0

    def read(self) -> np.ndarray:
        """The values, shaped `dims`; a read-only array (a view of the mapped file for raw data).
        bfloat16 is handed out as its exact float32 values (numpy has no bfloat16)."""
        kind = _KIND_BY_NAME.get(self.dtype)
        if kind is None or kind.numpy is None:
            raise UnsupportedDialectError(f"tensor '{printable(self.name, 200)}' has type {self.dtype}, "
                                          "whose values lstm-inspect does not read")
        if self.storage == "external":
            data = _decode_bytes(_read_external(self), kind)
        elif self.storage == "raw_data":
            data = _decode_bytes(self._payload, kind)
        elif self.storage == "none":
            data = np.zeros(0, dtype=kind.numpy)
        else:
            try:
                data = _decode_typed(self._payload, kind, self.name)
            except ProtoError as err:
                raise CorruptModelError(f"tensor '{printable(self.name, 200)}': {err}") from None
        if data.size != self.size:
            raise CorruptModelError(f"tensor '{printable(self.name, 200)}' holds {data.size} values, "
                                    f"its dims {list(self.dims)} say {self.size}")
        if self.dtype == "bfloat16":
            data = (data.astype(np.uint32) << 16).view(np.float32)  # the top half of a float32: exact
        data = data.reshape(self.dims)
        data.flags.writeable = False
        return data


@dataclass(frozen=True)
class ValueInfo:
    """A graph input, output or value_info entry. `kind` is `tensor`, `sparse_tensor`, `sequence`,
    `map`, `optional`, `opaque` or "" (no type). `shape` is None when the rank is unknown."""

    name: str
    kind: str
    dtype: str | None
    shape: tuple[Dim, ...] | None


@dataclass(frozen=True)
class Attribute:
    """`type` is the ONNX attribute type in lower case (`float`, `ints`, `graph`, ...); `value` a float,
    int, str, OnnxTensor, Graph or a tuple of those. Sparse tensors and type protos are not read
    (`value` None). Inside a function, `ref_attr_name` names the function attribute whose value the call
    site gives (`value` is then None)."""

    name: str
    type: str
    value: Any
    ref_attr_name: str = ""


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[Attribute, ...]

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)


@dataclass(frozen=True)
class Graph:
    """A GraphProto. `sparse_initializers` are only named: their values are not read."""

    name: str
    nodes: tuple[Node, ...]
    initializers: tuple[OnnxTensor, ...]
    sparse_initializers: tuple[str, ...]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    value_info: tuple[ValueInfo, ...]


@dataclass(frozen=True)
class Function:
    """A model-local FunctionProto; its `inputs` are parameters bound at each call site."""

    domain: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    opset_imports: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class OnnxModel:
    path: str | None
    ir_version: int
    producer_name: str
    producer_version: str
    domain: str
    model_version: int
    doc_string: str
    opset_imports: tuple[tuple[str, int], ...]
    metadata_props: tuple[tuple[str, str], ...]
    graph: Graph
    functions: tuple[Function, ...]

    def opset(self, domain: str = "") -> int | None:
        """The imported version of an operator set ("" and "ai.onnx" are the same default domain)."""
        return opset_version(self.opset_imports, domain)


def opset_version(imports: tuple[tuple[str, int], ...], domain: str = "") -> int | None:
    wanted = "" if domain == "ai.onnx" else domain
    return next((v for d, v in imports if ("" if d == "ai.onnx" else d) == wanted), None)


# --- entry points -------------------------------------------------------------------------------

def read_onnx(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS,
              bounds: OnnxBounds = DEFAULT_BOUNDS) -> OnnxModel:
    """Read the model at `path` (memory-mapped; external data is looked for beside it)."""
    label = os.fsdecode(path)
    try:
        buf = _map_file(label, limits)
        return parse_onnx(buf, path=label, limits=limits, bounds=bounds)
    except InspectError as err:
        err.file = err.file or label
        raise


def parse_onnx(data: bytes | bytearray | memoryview | mmap.mmap, path: str | None = None,
               limits: Limits = DEFAULT_LIMITS, bounds: OnnxBounds = DEFAULT_BOUNDS) -> OnnxModel:
    """Read a model from bytes. `path` (the file they came from) is needed for `extent` and to find
    external data; without it, a tensor with external data is refused."""
    view = memoryview(data)
    if len(view) == 0:
        raise NotAModelError("empty file")
    try:
        return _Reader(view, path, limits, bounds).model()
    except ProtoError as err:
        raise CorruptModelError(f"not a well-formed ONNX protobuf ({err})") from None


def _map_file(path: str, limits: Limits) -> mmap.mmap:
    """mmap a regular file (O_NONBLOCK: a FIFO swapped in does not block the open)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotAModelError("no such file") from None
    except OSError as err:
        raise NotAModelError(f"cannot read it ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAModelError("not a regular file")
        if st.st_size == 0:
            raise NotAModelError("empty file")
        if st.st_size > limits.max_file_bytes:
            raise UnsafeModelError(f"file is {st.st_size} bytes, over the {limits.max_file_bytes} limit")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except OSError as err:
        raise NotAModelError(f"cannot read it ({err.strerror or err})") from None
    finally:
        os.close(fd)


# --- the reader ---------------------------------------------------------------------------------

_ATTRIBUTE_TYPES = {1: "float", 2: "int", 3: "string", 4: "tensor", 5: "graph", 6: "floats", 7: "ints",
                    8: "strings", 9: "tensors", 10: "graphs", 11: "sparse_tensor", 12: "sparse_tensors",
                    13: "type_proto", 14: "type_protos"}
# Old files (before AttributeProto.type existed) say the type only by which field is set.
_ATTRIBUTE_FIELDS = (("float", 2), ("int", 3), ("string", 4), ("tensor", 5), ("graph", 6), ("floats", 7),
                     ("ints", 8), ("strings", 9), ("tensors", 10), ("graphs", 11), ("sparse_tensor", 22),
                     ("sparse_tensors", 23), ("type_proto", 14), ("type_protos", 15))
_TYPE_KINDS = {1: "tensor", 4: "sequence", 5: "map", 7: "opaque", 8: "sparse_tensor", 9: "optional"}
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class _Reader:
    def __init__(self, view: memoryview, path: str | None, limits: Limits, bounds: OnnxBounds) -> None:
        self.view, self.path, self.limits, self.bounds = view, path, limits, bounds
        self.nodes_left = bounds.max_nodes
        self.base = _address(view) if path is not None else 0
        self.folder = os.path.dirname(os.path.abspath(path)) if path is not None else None
        self.external_sizes: dict[str, tuple[str, int]] = {}  # location -> (resolved path, size)

    def model(self) -> OnnxModel:
        msg = pw.parse(self.view)
        graph = pw.first(msg, 7)
        if graph is None:
            raise NotAModelError("no graph in it: not an ONNX model")
        opsets = tuple(self.opset(v) for v in msg.get(8, ()))
        return OnnxModel(
            path=self.path, ir_version=pw.as_int64(pw.first(msg, 1)),
            producer_name=self.text(pw.first(msg, 2)), producer_version=self.text(pw.first(msg, 3)),
            domain=self.text(pw.first(msg, 4)), model_version=pw.as_int64(pw.first(msg, 5)),
            doc_string=self.text(pw.first(msg, 6)), opset_imports=opsets,
            metadata_props=tuple(self.entry(v) for v in msg.get(14, ())),
            graph=self.graph(graph, 0),
            functions=tuple(self.function(v) for v in msg.get(25, ())))

    # strings -------------------------------------------------------------------------------

    def name(self, value: Value | None) -> str:
        raw = _bytes_view(value)
        if len(raw) > self.limits.max_name_bytes:
            raise CorruptModelError(f"a name of {len(raw)} bytes, over the {self.limits.max_name_bytes} limit")
        return bytes(raw).decode("utf-8", "surrogateescape")

    def text(self, value: Value | None) -> str:
        raw = _bytes_view(value)
        if len(raw) > self.bounds.max_string_bytes:
            raise UnsafeModelError(f"a string of {len(raw)} bytes, over the {self.bounds.max_string_bytes} limit")
        return bytes(raw).decode("utf-8", "surrogateescape")

    def entry(self, value: Value) -> tuple[str, str]:
        msg = _message(value)
        return self.name(pw.first(msg, 1)), self.text(pw.first(msg, 2))

    def opset(self, value: Value) -> tuple[str, int]:
        msg = _message(value)
        return self.name(pw.first(msg, 1)), pw.as_int64(pw.first(msg, 2))

    # graphs and nodes ----------------------------------------------------------------------

    def graph(self, value: Value, depth: int) -> Graph:
        if depth > self.bounds.max_graph_depth:
            raise UnsafeModelError(f"subgraphs nested more than {self.bounds.max_graph_depth} levels deep")
        msg = _message(value)
        return Graph(
            name=self.name(pw.first(msg, 2)),
            nodes=self.nodes(msg.get(1, ()), depth),
            initializers=tuple(self.tensor(v) for v in msg.get(5, ())),
            sparse_initializers=tuple(self.sparse_name(v) for v in msg.get(15, ())),
            inputs=tuple(self.value_info(v) for v in msg.get(11, ())),
            outputs=tuple(self.value_info(v) for v in msg.get(12, ())),
            value_info=tuple(self.value_info(v) for v in msg.get(13, ())))

    def nodes(self, values: list[Value], depth: int) -> tuple[Node, ...]:
        self.nodes_left -= len(values)
        if self.nodes_left < 0:
            raise UnsafeModelError(f"more than {self.bounds.max_nodes} nodes")
        return tuple(self.node(v, depth) for v in values)

    def node(self, value: Value, depth: int) -> Node:
        msg = _message(value)
        attributes = msg.get(5, ())
        if len(attributes) > self.limits.max_attributes:
            raise UnsafeModelError(f"a node has more than {self.limits.max_attributes} attributes")
        return Node(name=self.name(pw.first(msg, 3)), op_type=self.name(pw.first(msg, 4)),
                    domain=self.name(pw.first(msg, 7)),
                    inputs=tuple(self.name(v) for v in msg.get(1, ())),
                    outputs=tuple(self.name(v) for v in msg.get(2, ())),
                    attributes=tuple(self.attribute(v, depth) for v in attributes))

    def function(self, value: Value) -> Function:
        msg = _message(value)
        return Function(domain=self.name(pw.first(msg, 10)), name=self.name(pw.first(msg, 1)),
                        inputs=tuple(self.name(v) for v in msg.get(4, ())),
                        outputs=tuple(self.name(v) for v in msg.get(5, ())),
                        nodes=self.nodes(msg.get(7, ()), 1),
                        opset_imports=tuple(self.opset(v) for v in msg.get(9, ())))

    def attribute(self, value: Value, depth: int) -> Attribute:
        msg = _message(value)
        name = self.name(pw.first(msg, 1))
        code = pw.as_int64(pw.first(msg, 20))
        kind = _ATTRIBUTE_TYPES.get(code) if code else next((k for k, f in _ATTRIBUTE_FIELDS if f in msg), None)
        if kind is None:
            raise CorruptModelError(f"attribute '{printable(name, 200)}' has unknown type {code}")
        reference = self.name(pw.first(msg, 21))
        if reference:  # inside a function: the value comes from the call site
            return Attribute(name=name, type=kind, value=None, ref_attr_name=reference)
        return Attribute(name=name, type=kind, value=self.attribute_value(msg, kind, name, depth))

    def attribute_value(self, msg: Message, kind: str, name: str, depth: int) -> Any:
        if kind == "float":
            return _float32(pw.first(msg, 2, 0))
        if kind == "int":
            return pw.as_int64(pw.first(msg, 3))
        if kind == "string":
            return self.text(pw.first(msg, 4))
        if kind in ("tensor", "graph"):
            one = pw.first(msg, 5 if kind == "tensor" else 6)
            if one is None:
                raise CorruptModelError(f"attribute '{printable(name, 200)}' of type {kind} holds none")
            return self.tensor(one) if kind == "tensor" else self.graph(one, depth + 1)
        if kind == "floats":
            return tuple(float(x) for x in _fixed_values(msg.get(7, ()), "<f4"))
        if kind == "ints":
            return tuple(pw.repeated_ints(msg, 8))
        if kind == "strings":
            return tuple(self.text(v) for v in msg.get(9, ()))
        if kind == "tensors":
            return tuple(self.tensor(v) for v in msg.get(10, ()))
        if kind == "graphs":
            return tuple(self.graph(v, depth + 1) for v in msg.get(11, ()))
        return None  # sparse tensors and type protos: named, not read

    # types ---------------------------------------------------------------------------------

    def value_info(self, value: Value) -> ValueInfo:
        msg = _message(value)
        name = self.name(pw.first(msg, 1))
        type_value = pw.first(msg, 2)
        if type_value is None:
            return ValueInfo(name, "", None, None)
        type_msg = _message(type_value)
        field_number = next((f for f in (1, 8, 4, 5, 9, 7) if f in type_msg), None)
        if field_number not in (1, 8):  # sequence, map, optional, opaque: the kind is enough here
            return ValueInfo(name, _TYPE_KINDS.get(field_number, ""), None, None)
        tensor = _message(pw.first(type_msg, field_number))
        elem = pw.first(tensor, 1)
        shape = pw.first(tensor, 2)
        return ValueInfo(name, _TYPE_KINDS[field_number],
                         _dtype_name(pw.as_int64(elem)) if elem is not None else None,
                         self.shape(shape) if shape is not None else None)

    def shape(self, value: Value) -> tuple[Dim, ...]:
        dims = _message(value).get(1, ())
        if len(dims) > self.bounds.max_dims:
            raise CorruptModelError(f"a shape of rank {len(dims)}, over {self.bounds.max_dims}")
        out: list[Dim] = []
        for dim_value in dims:
            dim = _message(dim_value)
            if 1 in dim:
                out.append(pw.as_int64(pw.first(dim, 1)))
            elif 2 in dim:
                out.append(self.name(pw.first(dim, 2)))
            else:
                out.append(None)
        return tuple(out)

    # tensors -------------------------------------------------------------------------------

    def sparse_name(self, value: Value) -> str:
        values = pw.first(_message(value), 1)
        return self.name(pw.first(_message(values), 8)) if values is not None else ""

    def tensor(self, value: Value) -> OnnxTensor:
        msg = _message(value)
        name = self.name(pw.first(msg, 8))
        shown = printable(name, 200)
        if 3 in msg:
            raise UnsupportedDialectError(f"tensor '{shown}' is a segment of a larger tensor (not supported)")
        dims = tuple(pw.repeated_ints(msg, 1))
        if len(dims) > self.bounds.max_dims or any(d < 0 for d in dims):
            raise CorruptModelError(f"tensor '{shown}' has bad dims {list(dims[:self.bounds.max_dims])}")
        code = pw.as_int64(pw.first(msg, 2))
        dtype = _dtype_name(code)
        kind = _KINDS.get(code)
        size = math.prod(dims)
        if kind is not None and kind.numpy is not None:
            nbytes = size * np.dtype(kind.numpy).itemsize
            if nbytes > self.limits.max_dataset_bytes:
                raise UnsafeModelError(f"tensor '{shown}' declares {nbytes} bytes, over the "
                                       f"{self.limits.max_dataset_bytes} limit")
        if pw.as_int64(pw.first(msg, 14)) == _EXTERNAL:
            return self.external_tensor(msg, name, dtype, dims, kind)
        if 9 in msg:
            raw = _bytes_view(pw.first(msg, 9))
            self.check_raw(name, kind, size, len(raw))
            extent = (self.path, _address(raw) - self.base) \
                if self.path is not None and kind is not None and kind.plain and len(raw) else None
            return OnnxTensor(name, dtype, dims, "raw_data", None, extent, raw)
        if kind is not None and kind.field in msg:
            values = msg[kind.field]
            if kind.numpy is not None:
                self.check_typed(name, kind, size, values)
            return OnnxTensor(name, dtype, dims, _FIELD_NAMES[kind.field], None, None, values)
        if kind is not None and kind.numpy is not None and size:
            raise CorruptModelError(f"tensor '{shown}' declares {size} values but holds none")
        return OnnxTensor(name, dtype, dims, "none")

    def check_raw(self, name: str, kind: _Kind | None, size: int, length: int) -> None:
        if kind is not None and kind.numpy is not None and length != size * np.dtype(kind.numpy).itemsize:
            raise CorruptModelError(f"tensor '{printable(name, 200)}' declares {size} {kind.name} values "
                                    f"but its raw_data holds {length} bytes")

    def check_typed(self, name: str, kind: _Kind, size: int, values: list[Value]) -> None:
        """Fixed-width fields must hold exactly `size` values; varint fields at least one byte per value
        (their exact count is only known once decoded, in `read`)."""
        per_value = 2 if kind.name.startswith("complex") else 1
        if kind.varint_width is None:
            width = 4 if kind.field == 4 else 8
            count = sum(len(v) // width if isinstance(v, memoryview) else 1 for v in values)
            if count != size * per_value or any(isinstance(v, memoryview) and len(v) % width for v in values):
                raise CorruptModelError(f"tensor '{printable(name, 200)}' declares {size} values but its "
                                        f"{_FIELD_NAMES[kind.field]} holds {count}")
        else:
            room = sum(len(v) if isinstance(v, memoryview) else 1 for v in values)
            if size > room:
                raise CorruptModelError(f"tensor '{printable(name, 200)}' declares {size} values but its "
                                        f"{_FIELD_NAMES[kind.field]} has room for at most {room}")

    def external_tensor(self, msg: Message, name: str, dtype: str, dims: tuple[int, ...],
                        kind: _Kind | None) -> OnnxTensor:
        shown = printable(name, 200)
        keys = dict(self.entry(v) for v in msg.get(13, ()))
        location = keys.get("location", "")
        if self.folder is None:
            raise UnsupportedDialectError(f"tensor '{shown}' keeps its data in an external file, and this "
                                          "model was not read from a file")
        target, file_size = self.external_file(location, shown)
        offset = _decimal(keys.get("offset", "0"), "offset", shown)
        length = _decimal(keys["length"], "length", shown) if "length" in keys else file_size - offset
        if offset > file_size or length > file_size - offset:
            raise CorruptModelError(f"tensor '{shown}': external range {offset}+{length} lies beyond the "
                                    f"end of {printable(location, 200)} ({file_size} bytes)")
        self.check_raw(name, kind, math.prod(dims), length)
        extent = (target, offset) if kind is not None and kind.plain and length else None
        return OnnxTensor(name, dtype, dims, "external", ExternalData(location, target, offset, length), extent)

    def external_file(self, location: str, shown: str) -> tuple[str, int]:
        """(resolved path, size) of an external data file, confined to the model's folder."""
        if location not in self.external_sizes:
            self.external_sizes[location] = _confined_file(self.folder or "", location, shown)
        return self.external_sizes[location]


# --- external data --------------------------------------------------------------------------------

def _confined_file(folder: str, location: str, shown: str) -> tuple[str, int]:
    where = f"tensor '{shown}': external data file '{printable(location, 200)}'"
    parts = location.replace("\\", "/").split("/")
    problem = ("is empty" if not location else
               "contains a NUL byte" if "\x00" in location else
               "is an absolute path" if location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":") else
               "contains a '..' component" if ".." in parts else "")
    if problem:
        raise UnsafeModelError(f"{where} {problem} (refused)")
    real_folder = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([real_folder, target]) != real_folder or target == real_folder:
        raise UnsafeModelError(f"{where} leads out of the model's folder through a symbolic link (refused)")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise CorruptModelError(f"{where} does not exist") from None
    except OSError as err:
        raise CorruptModelError(f"{where} cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeModelError(f"{where} is not a regular file (refused)")
    return target, st.st_size


def _read_external(tensor: OnnxTensor) -> bytes:
    """pread the tensor's range; the file is checked again (it may have changed since parsing)."""
    ext = tensor.external
    assert ext is not None
    where = f"external data of tensor '{printable(tensor.name, 200)}'"
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(ext.path, flags)
    except OSError as err:
        raise CorruptModelError(f"{where} cannot be opened ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or ext.offset + ext.length > st.st_size:
            raise CorruptModelError(f"{where}: the file changed since the model was read")
        chunks, done = [], 0
        while done < ext.length:
            chunk = os.pread(fd, min(ext.length - done, 64 * MiB), ext.offset + done)
            if not chunk:
                raise CorruptModelError(f"{where}: the file is shorter than its range")
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise CorruptModelError(f"{where} cannot be read ({err.strerror or err})") from None
    finally:
        os.close(fd)


def _decimal(text: str, what: str, shown: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise CorruptModelError(f"tensor '{shown}': external data {what} '{printable(text, 40)}' is not a number")
    return int(text)


# --- data types and decoding ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    name: str
    numpy: str | None  # dtype of the raw little-endian bytes; None: values not read
    field: int | None  # the typed field that holds values when raw_data is absent
    varint_width: str | None = None  # unsigned storage type of varint-coded values (int32/int64/uint64_data)

    @property
    def plain(self) -> bool:
        """`read()` returns the file's bytes unchanged (bfloat16 is widened to float32)."""
        return self.numpy is not None and self.name != "bfloat16"


_KINDS = {
    1: _Kind("float32", "<f4", 4), 2: _Kind("uint8", "u1", 5, "u1"), 3: _Kind("int8", "i1", 5, "u1"),
    4: _Kind("uint16", "<u2", 5, "u2"), 5: _Kind("int16", "<i2", 5, "u2"), 6: _Kind("int32", "<i4", 5, "u4"),
    7: _Kind("int64", "<i8", 7, "u8"), 8: _Kind("string", None, 6), 9: _Kind("bool", "?", 5, "u1"),
    10: _Kind("float16", "<f2", 5, "u2"), 11: _Kind("float64", "<f8", 10), 12: _Kind("uint32", "<u4", 11, "u4"),
    13: _Kind("uint64", "<u8", 11, "u8"), 14: _Kind("complex64", "<c8", 4), 15: _Kind("complex128", "<c16", 10),
    16: _Kind("bfloat16", "<u2", 5, "u2"),
    17: _Kind("float8e4m3fn", None, 5), 18: _Kind("float8e4m3fnuz", None, 5), 19: _Kind("float8e5m2", None, 5),
    20: _Kind("float8e5m2fnuz", None, 5), 21: _Kind("uint4", None, 5), 22: _Kind("int4", None, 5),
    23: _Kind("float4e2m1", None, 5), 24: _Kind("float8e8m0", None, 5), 25: _Kind("uint2", None, 5),
    26: _Kind("int2", None, 5), 27: _Kind("float6e2m3", None, 5), 28: _Kind("float6e3m2", None, 5),
}
_KIND_BY_NAME = {k.name: k for k in _KINDS.values()}
_FIELD_NAMES = {4: "float_data", 5: "int32_data", 6: "string_data", 7: "int64_data", 10: "double_data",
                11: "uint64_data"}


def _dtype_name(code: int) -> str:
    kind = _KINDS.get(code)
    return kind.name if kind is not None else ("undefined" if code == 0 else f"type{code}")


def dtype_of_code(code: int) -> str:
    """The dtype name used here for a TensorProto.DataType (Cast's `to`)."""
    return _dtype_name(code)


def readable(dtype: str) -> bool:
    """`OnnxTensor.read` can return values of this dtype."""
    kind = _KIND_BY_NAME.get(dtype)
    return kind is not None and kind.numpy is not None


def _decode_bytes(raw: bytes | memoryview, kind: _Kind) -> np.ndarray:
    storage = "<u2" if kind.name == "bfloat16" else kind.numpy
    return np.frombuffer(raw, dtype=storage)


def _decode_typed(values: list[Value], kind: _Kind, name: str) -> np.ndarray:
    """Typed fields decoded as onnx's numpy_helper does: varint fields keep the low bits of each value
    (int32_data carries int8/uint8/int16/uint16/bool/float16/bfloat16 bit patterns)."""
    if kind.varint_width is None:
        floats = _fixed_values(values, "<f4" if kind.field == 4 else "<f8")
        return floats.view(kind.numpy) if kind.name.startswith("complex") else floats
    words = _varints(values, name)
    storage = "<u2" if kind.name == "bfloat16" else kind.numpy
    return words.astype(kind.varint_width).view(storage)


def _fixed_values(values: list[Value], dtype: str) -> np.ndarray:
    """A repeated float/double field, packed (length-delimited runs) or not (one fixed value each)."""
    width = np.dtype(dtype).itemsize
    parts: list[np.ndarray] = []
    for value in values:
        if isinstance(value, memoryview):
            if len(value) % width:
                raise ProtoError(f"a packed run of {len(value)} bytes is not a whole number of {width}-byte values")
            parts.append(np.frombuffer(value, dtype=dtype))
        elif 0 <= value < (1 << (8 * width)):
            parts.append(np.frombuffer(value.to_bytes(width, "little"), dtype=dtype))
        else:
            raise ProtoError("a fixed-width value is out of range (wrong wire type)")
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _varints(values: list[Value], name: str) -> np.ndarray:
    """Packed and unpacked varints as uint64 (two's complement for negatives), vectorised."""
    parts: list[np.ndarray] = []
    for value in values:
        if isinstance(value, int):
            parts.append(np.array([value], dtype=np.uint64))
        elif len(value):
            parts.append(_packed_varints(np.frombuffer(value, dtype=np.uint8), name))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _packed_varints(data: np.ndarray, name: str) -> np.ndarray:
    last = data < 0x80
    if not last[-1]:
        raise CorruptModelError(f"tensor '{printable(name, 200)}': truncated varint in a packed field")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    position = np.arange(len(data)) - np.repeat(starts, ends - starts + 1)
    if position.max() > 9 or np.any(data[ends][position[ends] == 9] > 1):
        raise CorruptModelError(f"tensor '{printable(name, 200)}': overlong varint in a packed field")
    pieces = (data & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.add.reduceat(pieces, starts)


# --- small helpers ----------------------------------------------------------------------------

def _message(value: Value | None) -> Message:
    if not isinstance(value, memoryview):
        raise ProtoError("expected an embedded message, found a number")
    return pw.parse(value)


def _bytes_view(value: Value | None) -> memoryview:
    if value is None:
        return memoryview(b"")
    if not isinstance(value, memoryview):
        raise ProtoError("expected a length-delimited field, found a number")
    return value


def _float32(value: Value) -> float:
    if not isinstance(value, int) or not 0 <= value < (1 << 32):
        raise ProtoError("a float field holds something else (wrong wire type)")
    return struct.unpack("<f", value.to_bytes(4, "little"))[0]


def _address(view: memoryview) -> int:
    """Memory address of a buffer's first byte: offsets of raw_data in the mapped file come from these."""
    return np.frombuffer(view, dtype=np.uint8).ctypes.data if len(view) else 0
