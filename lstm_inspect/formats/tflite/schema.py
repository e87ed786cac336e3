"""The parts of the TFLite schema lstm-inspect needs, read into frozen plain data.

Field ids follow `tensorflow/lite/schema/schema.fbs` (as shipped in TF 2.21's `schema_py_generated.py`,
which the tests use as the oracle). `read_tflite(path)` maps the file, reads every table it needs (model,
operator codes, subgraphs, tensors, operators and their options, buffers, signature defs, metadata) and
closes the map again: tensor values are never copied at parse time. A `Tensor` keeps the extent (path,
offset, byte count) of its stored bytes; `Tensor.read()` reads them when asked, from data inline in the
flatbuffer or stored after it by `Buffer.offset`/`size` (what the converter writes for files over 2 GB).

The operator code is `max(deprecated_builtin_code, builtin_code)`: files before 2021 only have the byte
field, newer ones write 127 (PLACEHOLDER_FOR_GREATER_OP_CODES) there for every code above 126.
"""
from __future__ import annotations

import math
import mmap
import os
import stat
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lstm_inspect.errors import (
    CorruptModelError,
    InspectError,
    NotAModelError,
    UnsafeModelError,
    UnsupportedDialectError,
)
from lstm_inspect.safety import DEFAULT_LIMITS, Limits, printable

from .flatbuf import DEFAULT_BUDGET, Budget, Flatbuffer, Table

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"

BUILTIN_OPERATORS = tuple("""
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE EMBEDDING_LOOKUP FLOOR
FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D LOCAL_RESPONSE_NORMALIZATION LOGISTIC
LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1 RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH
SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN
GATHER BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM
STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM
CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN
TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW ARG_MIN
FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV
REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU SQUARED_DIFFERENCE
MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG
QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND
SELECT_V2 DENSIFY SEGMENT_SUM BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO
RFFT2D CONV_3D IMAG REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL BUCKETIZE
RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX
UNSORTED_SEGMENT_SUM ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR RIGHT_SHIFT STABLEHLO_LOGISTIC
STABLEHLO_ADD STABLEHLO_DIVIDE STABLEHLO_MULTIPLY STABLEHLO_MAXIMUM STABLEHLO_RESHAPE STABLEHLO_CLAMP
STABLEHLO_CONCATENATE STABLEHLO_BROADCAST_IN_DIM STABLEHLO_CONVOLUTION STABLEHLO_SLICE STABLEHLO_CUSTOM_CALL
STABLEHLO_REDUCE STABLEHLO_ABS STABLEHLO_AND STABLEHLO_COSINE STABLEHLO_EXPONENTIAL STABLEHLO_FLOOR
STABLEHLO_LOG STABLEHLO_MINIMUM STABLEHLO_NEGATE STABLEHLO_OR STABLEHLO_POWER STABLEHLO_REMAINDER
STABLEHLO_RSQRT STABLEHLO_SELECT STABLEHLO_SUBTRACT STABLEHLO_TANH STABLEHLO_SCATTER STABLEHLO_COMPARE
STABLEHLO_CONVERT STABLEHLO_DYNAMIC_SLICE STABLEHLO_DYNAMIC_UPDATE_SLICE STABLEHLO_PAD STABLEHLO_IOTA
STABLEHLO_DOT_GENERAL STABLEHLO_REDUCE_WINDOW STABLEHLO_SORT STABLEHLO_WHILE STABLEHLO_GATHER
STABLEHLO_TRANSPOSE DILATE STABLEHLO_RNG_BIT_GENERATOR REDUCE_WINDOW STABLEHLO_COMPOSITE STABLEHLO_SHIFT_LEFT
STABLEHLO_CBRT STABLEHLO_CASE
""".split())

# TensorType: (name, numpy dtype or None when numpy has no such type / the bytes are not an array)
TENSOR_TYPES = (
    ("FLOAT32", "float32"), ("FLOAT16", "float16"), ("INT32", "int32"), ("UINT8", "uint8"), ("INT64", "int64"),
    ("STRING", None), ("BOOL", "bool"), ("INT16", "int16"), ("COMPLEX64", "complex64"), ("INT8", "int8"),
    ("FLOAT64", "float64"), ("COMPLEX128", "complex128"), ("UINT64", "uint64"), ("RESOURCE", None),
    ("VARIANT", None), ("UINT32", "uint32"), ("UINT16", "uint16"), ("INT4", None), ("BFLOAT16", None),
    ("INT2", None), ("UINT4", None),
)

_ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")
_ACT = ("fused_activation_function", "b", 0, _ACTIVATIONS)
_ASYM = ("asymmetric_quantize_inputs", "?", False, None)
# BuiltinOptions union type -> (table name, fields in id order: (name, struct code or "[i" for an int32
# vector, default, enum names or None)). Types not listed are kept as RawOptions.
OPTION_TABLES: dict[int, tuple[str, tuple[tuple[str, str, Any, tuple[str, ...] | None], ...]]] = {
    71: ("UnidirectionalSequenceLSTMOptions", (_ACT, ("cell_clip", "f", 0.0, None), ("proj_clip", "f", 0.0, None),
                                               ("time_major", "?", False, None), _ASYM,
                                               ("diagonal_recurrent_tensors", "?", False, None))),
    69: ("BidirectionalSequenceLSTMOptions", (_ACT, ("cell_clip", "f", 0.0, None), ("proj_clip", "f", 0.0, None),
                                              ("merge_outputs", "?", False, None),
                                              ("time_major", "?", True, None), _ASYM)),  # time_major defaults true
    14: ("LSTMOptions", (_ACT, ("cell_clip", "f", 0.0, None), ("proj_clip", "f", 0.0, None),
                         ("kernel_type", "b", 0, ("FULL", "BASIC")), _ASYM)),
    31: ("SequenceRNNOptions", (("time_major", "?", False, None), _ACT, _ASYM)),
    70: ("BidirectionalSequenceRNNOptions", (("time_major", "?", False, None), _ACT,
                                             ("merge_outputs", "?", False, None), _ASYM)),
    7: ("RNNOptions", (_ACT, _ASYM)),
    8: ("FullyConnectedOptions", (_ACT, ("weights_format", "b", 0, ("DEFAULT", "SHUFFLED4x16INT8")),
                                  ("keep_num_dims", "?", False, None), _ASYM, ("quantized_bias_type", "b", 0, None))),
    93: ("WhileOptions", (("cond_subgraph_index", "i", 0, None), ("body_subgraph_index", "i", 0, None))),
    92: ("IfOptions", (("then_subgraph_index", "i", 0, None), ("else_subgraph_index", "i", 0, None))),
    103: ("CallOnceOptions", (("init_subgraph_index", "i", 0, None),)),
    35: ("SplitOptions", (("num_splits", "i", 0, None),)),
    79: ("SplitVOptions", (("num_splits", "i", 0, None),)),
    10: ("ConcatenationOptions", (("axis", "i", 0, None), _ACT)),
    17: ("ReshapeOptions", (("new_shape", "[i", None, None),)),
    32: ("StridedSliceOptions", (("begin_mask", "i", 0, None), ("end_mask", "i", 0, None),
                                ("ellipsis_mask", "i", 0, None), ("new_axis_mask", "i", 0, None),
                                ("shrink_axis_mask", "i", 0, None), ("offset", "?", False, None))),
    11: ("AddOptions", (_ACT, ("pot_scale_int16", "?", True, None))),
    21: ("MulOptions", (_ACT,)),
    28: ("SubOptions", (_ACT, ("pot_scale_int16", "?", True, None))),
    23: ("GatherOptions", (("axis", "i", 0, None), ("batch_dims", "i", 0, None))),
    59: ("PackOptions", (("values_count", "i", 0, None), ("axis", "i", 0, None))),
    64: ("UnpackOptions", (("num", "i", 0, None), ("axis", "i", 0, None))),
}
# Options fields that name subgraphs: checked against the subgraph count.
_SUBGRAPH_FIELDS = ("cond_subgraph_index", "body_subgraph_index", "then_subgraph_index", "else_subgraph_index",
                    "init_subgraph_index")
_MAX_RUNTIME_VERSION_BYTES = 256


# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class Extent:
    """Where stored bytes are: `nbytes` at `offset` of the file `path` (identity checked when read)."""

    path: str
    offset: int
    nbytes: int
    identity: tuple[int, int, int, int] = field(repr=False, compare=False)  # dev, inode, size, mtime_ns

    def read(self) -> bytes:
        """The bytes, read now; refused if the file is no longer the one that was parsed."""
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            raise CorruptModelError(f"cannot reopen it to read tensor data ({exc.strerror or exc})",
                                    file=self.path) from None
        try:
            if _identity(os.fstat(fd)) != self.identity:
                raise CorruptModelError("the file changed after it was parsed", file=self.path)
            return _pread_exactly(fd, self.nbytes, self.offset, self.path)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Quantization:
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int
    min: tuple[float, ...]
    max: tuple[float, ...]
    details_type: int  # QuantizationDetails union: 0 none, 1 CustomQuantization, 2 Blockwise (not interpreted)

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1


@dataclass(frozen=True)
class Buffer:
    index: int
    stored: str  # "none", "inline" (a vector in the flatbuffer) or "offset" (after it, by offset/size)
    extent: Extent | None


@dataclass(frozen=True)
class ExternalBuffer:
    """Tensor data in another file (Model.external_buffers, 2025 schema); never opened by lstm-inspect."""

    id: int
    group: int  # index into TfliteModel.external_buffer_groups (whose names are file names)
    offset: int
    length: int
    packing: str | None


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    type: int  # TensorType code
    type_name: str  # "FLOAT32", "INT8"...
    dtype: str | None  # numpy dtype name, None when numpy has none (STRING, INT4, BFLOAT16...)
    buffer: int
    is_variable: bool
    quantization: Quantization | None
    sparse: bool
    external_buffer: int  # 0, or an ExternalBuffer id
    extent: Extent | None  # the stored bytes; None when the tensor holds no data in this file

    @property
    def has_data(self) -> bool:
        return self.extent is not None

    def read(self) -> np.ndarray:
        """The stored array (read-only, little-endian, in the stored dtype and shape)."""
        dtype = self._readable_dtype()
        return np.frombuffer(self.extent.read(), dtype=dtype).reshape(self.shape)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop of the first axis, reading only their bytes (0 <= start <= stop <= shape[0])."""
        dtype = self._readable_dtype()
        if not self.shape or not 0 <= start <= stop <= self.shape[0]:
            raise CorruptModelError(f"rows {start}:{stop} of tensor '{printable(self.name, 200)}' of shape "
                                    f"{list(self.shape)} do not exist")
        row = math.prod(self.shape[1:]) * dtype.itemsize
        part = replace(self.extent, offset=self.extent.offset + start * row, nbytes=(stop - start) * row)
        return np.frombuffer(part.read(), dtype=dtype).reshape((stop - start,) + tuple(self.shape[1:]))

    def _readable_dtype(self) -> np.dtype:
        """The little-endian dtype of the stored values, after checking that they can be read as an array."""
        shown, file = printable(self.name, 200), self.extent.path if self.extent else None
        if self.external_buffer:
            raise UnsupportedDialectError(f"tensor '{shown}' keeps its data in an external file, "
                                          "which lstm-inspect does not open", file=file)
        if self.extent is None:
            raise CorruptModelError(f"tensor '{shown}' holds no data in the file")
        if self.dtype is None or self.sparse:
            what = "sparse" if self.sparse else self.type_name
            raise UnsupportedDialectError(f"tensor '{shown}' is {what}, which lstm-inspect does not read", file=file)
        if any(d < 0 for d in self.shape):
            raise CorruptModelError(f"tensor '{shown}' has data but a dynamic shape {list(self.shape)}", file=file)
        dtype = np.dtype(self.dtype).newbyteorder("<")
        expected = math.prod(self.shape) * dtype.itemsize
        if expected != self.extent.nbytes:
            raise CorruptModelError(f"tensor '{shown}' of shape {list(self.shape)} and type {self.type_name} "
                                    f"needs {expected} bytes but its buffer holds {self.extent.nbytes}", file=file)
        return dtype

    def dequantize(self, values: np.ndarray | None = None) -> np.ndarray:
        """Float32 values: float16 widened, quantized integers as (q - zero_point) * scale, per tensor or
        per channel along `quantized_dimension`. `values` defaults to `read()`."""
        return dequantize(self, self.read() if values is None else values)


@dataclass(frozen=True)
class OperatorCode:
    code: int  # max(deprecated_builtin_code, builtin_code)
    name: str  # builtin operator name ("CUSTOM" for custom operators)
    custom_code: str | None
    version: int
    deprecated_builtin_code: int
    builtin_code: int


@dataclass(frozen=True)
class Options:
    """Decoded builtin options: the schema table's name and its fields (enums as names)."""

    table: str
    values: tuple[tuple[str, Any], ...]

    def __getitem__(self, key: str) -> Any:
        for name, value in self.values:
            if name == key:
                return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True)
class RawOptions:
    """Options not decoded here: the union type and where the table is (flatbuf.Table can read it)."""

    union: str  # "builtin_options" or "builtin_options_2"
    type: int
    table_offset: int


@dataclass(frozen=True)
class Operator:
    index: int
    opcode_index: int
    code: int
    name: str  # builtin name; "CUSTOM" with custom_code for custom operators (Flex ops: "FlexTensorList...")
    custom_code: str | None
    version: int
    inputs: tuple[int, ...]  # -1 marks an absent optional input
    outputs: tuple[int, ...]
    intermediates: tuple[int, ...]
    options: Options | RawOptions | None
    options_2: RawOptions | None
    custom_options: Extent | None

    @property
    def label(self) -> str:
        """The builtin name, or the custom code of a custom operator."""
        return self.custom_code if self.name == "CUSTOM" and self.custom_code else self.name


@dataclass(frozen=True)
class SubGraph:
    index: int
    name: str | None
    tensors: tuple[Tensor, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    operators: tuple[Operator, ...]


@dataclass(frozen=True)
class Metadata:
    name: str | None
    buffer: int


@dataclass(frozen=True)
class SignatureDef:
    key: str | None
    subgraph_index: int
    inputs: tuple[tuple[str | None, int], ...]  # (name, tensor index)
    outputs: tuple[tuple[str | None, int], ...]


@dataclass(frozen=True)
class TfliteModel:
    path: str
    file_size: int
    version: int
    description: str | None
    operator_codes: tuple[OperatorCode, ...]
    subgraphs: tuple[SubGraph, ...]
    buffers: tuple[Buffer, ...]
    metadata: tuple[Metadata, ...]
    signature_defs: tuple[SignatureDef, ...]
    min_runtime_version: str | None
    external_buffer_groups: tuple[str | None, ...]
    external_buffers: tuple[ExternalBuffer, ...]


# ----------------------------------------------------------------------------------------------
# reading


def read_tflite(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS,
                budget: Budget = DEFAULT_BUDGET) -> TfliteModel:
    """Parse a `.tflite` file (metadata only; tensor bytes stay in the file until `Tensor.read()`)."""
    name = os.fsdecode(path)
    fd = _open_regular(name, limits)
    try:
        st = os.fstat(fd)
        with mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ) as data:
            if data[4:8] != FILE_IDENTIFIER:
                raise NotAModelError("not a TensorFlow Lite model (no TFL3 identifier at byte 4)", file=name)
            try:
                return _Reader(name, _identity(st), data, limits, budget).model()
            except InspectError as err:
                err.file = err.file or name
                raise
    except BufferError:  # pragma: no cover - an array still viewed the map while an error unwound
        raise CorruptModelError("could not release the file map", file=name) from None
    finally:
        os.close(fd)


def _open_regular(name: str, limits: Limits) -> int:
    """Open a regular, non-empty file within the size limit (never blocking on a FIFO)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise NotAModelError("no such file", file=name) from None
    except OSError as exc:
        raise NotAModelError(f"cannot read it ({exc.strerror or exc})", file=name) from None
    st = os.fstat(fd)
    problem = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
               "is too short to be a TFLite model" if st.st_size < 8 else "")
    if problem or st.st_size > limits.max_file_bytes:
        os.close(fd)
        if problem:
            raise NotAModelError(problem, file=name)
        raise UnsafeModelError(f"file is {st.st_size} bytes, over the {limits.max_file_bytes}-byte limit", file=name)
    return fd


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _pread_exactly(fd: int, n: int, offset: int, path: str) -> bytes:
    parts, done = [], 0
    while done < n:
        chunk = os.pread(fd, min(n - done, 1 << 30), offset + done)
        if not chunk:
            raise CorruptModelError(f"the file ended before {n} bytes at offset {offset} could be read", file=path)
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)


class _Reader:
    """Walks the schema once; every structural check ends in CorruptModelError naming the field."""

    def __init__(self, path: str, identity: tuple[int, int, int, int], data: Any, limits: Limits,
                 budget: Budget) -> None:
        self.path, self.identity, self.data, self.limits = path, identity, data, limits
        self.fb = Flatbuffer(data, budget, what="TFLite flatbuffer")

    def fail(self, where: str, problem: str) -> CorruptModelError:
        return self.fb.fail(where, problem)

    def extent(self, offset: int, nbytes: int, where: str) -> Extent:
        if offset < 0 or nbytes < 0 or offset + nbytes > self.fb.size:
            raise self.fail(where, f"{nbytes} bytes at offset {offset} run past the end of the "
                                   f"{self.fb.size}-byte file")
        if nbytes > self.limits.max_dataset_bytes:
            raise UnsafeModelError(f"{where} is {nbytes} bytes, over the {self.limits.max_dataset_bytes}-byte "
                                   "limit for one tensor", file=self.path)
        return Extent(self.path, offset, nbytes, self.identity)

    def model(self) -> TfliteModel:
        root = self.fb.root("Model", FILE_IDENTIFIER)
        version = root.scalar(0, "I", 0, "version")
        if version != SCHEMA_VERSION:
            raise UnsupportedDialectError(f"TFLite schema version {version}; lstm-inspect reads version "
                                          f"{SCHEMA_VERSION}", file=self.path)
        buffers = tuple(self.buffer(i, t) for i, t in enumerate(root.tables(4, "buffers")))
        codes = tuple(self.operator_code(t) for t in root.tables(1, "operator_codes"))
        external = tuple(self.external_buffer(t) for t in root.tables(9, "external_buffers"))
        subgraphs = tuple(self.subgraph(i, t, codes, buffers)
                          for i, t in enumerate(root.tables(2, "subgraphs")))
        metadata = tuple(self.metadata(t, len(buffers)) for t in root.tables(6, "metadata"))
        signatures = tuple(self.signature(t, subgraphs) for t in root.tables(7, "signature_defs"))
        _check_subgraph_references(subgraphs, self.fb)
        return TfliteModel(
            path=self.path, file_size=self.fb.size, version=version, description=root.string(3, "description"),
            operator_codes=codes, subgraphs=subgraphs, buffers=buffers, metadata=metadata,
            signature_defs=signatures, min_runtime_version=self.min_runtime_version(metadata, buffers),
            external_buffer_groups=tuple(t.string(0, "name") for t in root.tables(8, "external_buffer_groups")),
            external_buffers=external)

    def buffer(self, index: int, table: Table) -> Buffer:
        where = table.where
        offset, size = table.scalar(1, "Q", 0, "offset"), table.scalar(2, "Q", 0, "size")
        if offset > 1:  # TFLite's rule: offsets 0 and 1 mean "not stored after the flatbuffer"
            extent = self.extent(offset, size, where) if size else None
            return Buffer(index, "offset" if extent else "none", extent)
        inline = table.vector_extent(0, 1, "data")
        if inline is None or inline[1] == 0:
            return Buffer(index, "none", None)
        return Buffer(index, "inline", self.extent(inline[0], inline[1], where + ".data"))

    def operator_code(self, table: Table) -> OperatorCode:
        deprecated = table.scalar(0, "b", 0, "deprecated_builtin_code")
        builtin = table.scalar(3, "i", 0, "builtin_code")
        code = max(deprecated, builtin)
        name = BUILTIN_OPERATORS[code] if 0 <= code < len(BUILTIN_OPERATORS) else f"BUILTIN_{code}"
        return OperatorCode(code=code, name=name, custom_code=table.string(1, "custom_code"),
                            version=table.scalar(2, "i", 1, "version"), deprecated_builtin_code=deprecated,
                            builtin_code=builtin)

    def external_buffer(self, table: Table) -> ExternalBuffer:
        return ExternalBuffer(id=table.scalar(0, "I", 0, "id"), group=table.scalar(1, "I", 0, "group"),
                              offset=table.scalar(2, "Q", 0, "offset"), length=table.scalar(3, "Q", 0, "length"),
                              packing=table.string(4, "packing"))

    def subgraph(self, index: int, table: Table, codes: tuple[OperatorCode, ...],
                 buffers: tuple[Buffer, ...]) -> SubGraph:
        tensors = tuple(self.tensor(i, t, buffers) for i, t in enumerate(table.tables(0, "tensors")))
        n = len(tensors)
        inputs = _indices(table.ints(1, "<i4", "inputs"), n, False, self.fb, table.where + ".inputs")
        outputs = _indices(table.ints(2, "<i4", "outputs"), n, False, self.fb, table.where + ".outputs")
        operators = tuple(self.operator(i, t, codes, n) for i, t in enumerate(table.tables(3, "operators")))
        return SubGraph(index=index, name=table.string(4, "name"), tensors=tensors, inputs=inputs,
                        outputs=outputs, operators=operators)

    def tensor(self, index: int, table: Table, buffers: tuple[Buffer, ...]) -> Tensor:
        type_code = table.scalar(1, "b", 0, "type")
        type_name, dtype = (TENSOR_TYPES[type_code] if 0 <= type_code < len(TENSOR_TYPES)
                            else (f"TYPE_{type_code}", None))
        buffer = table.scalar(2, "I", 0, "buffer")
        if buffer >= len(buffers):
            raise self.fail(table.where + ".buffer", f"buffer {buffer} does not exist ({len(buffers)} buffers)")
        return Tensor(
            index=index, name=table.string(3, "name") or "", shape=table.ints(0, "<i4", "shape") or (),
            shape_signature=table.ints(7, "<i4", "shape_signature"), type=type_code, type_name=type_name,
            dtype=dtype, buffer=buffer, is_variable=table.scalar(5, "?", False, "is_variable"),
            quantization=self.quantization(table.table(4, "quantization")), sparse=table.has(6),
            external_buffer=table.scalar(10, "I", 0, "external_buffer"), extent=buffers[buffer].extent)

    def quantization(self, table: Table | None) -> Quantization | None:
        if table is None:
            return None
        return Quantization(
            scale=_floats(table.numbers(2, "<f4", "scale")), zero_point=table.ints(3, "<i8", "zero_point") or (),
            quantized_dimension=table.scalar(6, "i", 0, "quantized_dimension"),
            min=_floats(table.numbers(0, "<f4", "min")), max=_floats(table.numbers(1, "<f4", "max")),
            details_type=table.scalar(4, "B", 0, "details_type"))

    def operator(self, index: int, table: Table, codes: tuple[OperatorCode, ...], n_tensors: int) -> Operator:
        where = table.where
        opcode_index = table.scalar(0, "I", 0, "opcode_index")
        if opcode_index >= len(codes):
            raise self.fail(where + ".opcode_index", f"operator code {opcode_index} does not exist "
                                                     f"({len(codes)} codes)")
        code = codes[opcode_index]
        options_type, options_table = table.union(3, "builtin_options")
        options_2_type, options_2_table = table.union(11, "builtin_options_2")
        return Operator(
            index=index, opcode_index=opcode_index, code=code.code, name=code.name, custom_code=code.custom_code,
            version=code.version,
            inputs=_indices(table.ints(1, "<i4", "inputs"), n_tensors, True, self.fb, where + ".inputs"),
            outputs=_indices(table.ints(2, "<i4", "outputs"), n_tensors, True, self.fb, where + ".outputs"),
            intermediates=_indices(table.ints(8, "<i4", "intermediates"), n_tensors, True, self.fb,
                                   where + ".intermediates"),
            options=_options(options_type, options_table),
            options_2=RawOptions("builtin_options_2", options_2_type, options_2_table.pos) if options_2_table else None,
            custom_options=self.custom_options(table))

    def custom_options(self, table: Table) -> Extent | None:
        large_size = table.scalar(10, "Q", 0, "large_custom_options_size")
        if large_size:
            return self.extent(table.scalar(9, "Q", 0, "large_custom_options_offset"), large_size,
                               table.where + ".large_custom_options")
        inline = table.vector_extent(5, 1, "custom_options")
        if inline is None or inline[1] == 0:
            return None
        return self.extent(inline[0], inline[1], table.where + ".custom_options")

    def metadata(self, table: Table, n_buffers: int) -> Metadata:
        buffer = table.scalar(1, "I", 0, "buffer")
        if buffer >= n_buffers:
            raise self.fail(table.where + ".buffer", f"buffer {buffer} does not exist ({n_buffers} buffers)")
        return Metadata(name=table.string(0, "name"), buffer=buffer)

    def signature(self, table: Table, subgraphs: tuple[SubGraph, ...]) -> SignatureDef:
        index = table.scalar(4, "I", 0, "subgraph_index")
        if index >= len(subgraphs):
            raise self.fail(table.where + ".subgraph_index", f"subgraph {index} does not exist")
        n = len(subgraphs[index].tensors)

        def maps(field_id: int, name: str) -> tuple[tuple[str | None, int], ...]:
            out = []
            for entry in table.tables(field_id, name):
                tensor = entry.scalar(1, "I", 0, "tensor_index")
                if tensor >= n:
                    raise self.fail(entry.where + ".tensor_index",
                                    f"tensor {tensor} does not exist in subgraph {index}")
                out.append((entry.string(0, "name"), tensor))
            return tuple(out)

        return SignatureDef(key=table.string(2, "signature_key"), subgraph_index=index,
                            inputs=maps(0, "inputs"), outputs=maps(1, "outputs"))

    def min_runtime_version(self, metadata: tuple[Metadata, ...], buffers: tuple[Buffer, ...]) -> str | None:
        """The converter's 16-byte, NUL-padded version string (read now: it is tiny)."""
        for entry in metadata:
            extent = buffers[entry.buffer].extent
            if entry.name == "min_runtime_version" and extent is not None:
                if extent.nbytes > _MAX_RUNTIME_VERSION_BYTES:
                    raise self.fail("Model.metadata.min_runtime_version", f"is {extent.nbytes} bytes long")
                raw = bytes(self.data[extent.offset:extent.offset + extent.nbytes])
                return printable(raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
        return None


def _floats(values: np.ndarray | None) -> tuple[float, ...]:
    return () if values is None else tuple(float(v) for v in values)


def _indices(values: tuple[int, ...] | None, n: int, optional: bool, fb: Flatbuffer,
             where: str) -> tuple[int, ...]:
    """Tensor indices, each in range (or -1, an absent optional tensor, where allowed)."""
    values = values or ()
    low = -1 if optional else 0
    for v in values:
        if not low <= v < n:
            raise fb.fail(where, f"tensor index {v} is out of range ({n} tensors)")
    return values


def _options(kind: int, table: Table | None) -> Options | RawOptions | None:
    if table is None:
        return None
    spec = OPTION_TABLES.get(kind)
    if spec is None:
        return RawOptions("builtin_options", kind, table.pos)
    name, fields = spec
    values = []
    for field_id, (key, fmt, default, enum) in enumerate(fields):
        if fmt == "[i":
            value: Any = table.ints(field_id, "<i4", key)
        else:
            value = table.scalar(field_id, fmt, default, key)
            if enum is not None:
                value = enum[value] if 0 <= value < len(enum) else f"UNKNOWN_{value}"
        values.append((key, value))
    return Options(name, tuple(values))


def _check_subgraph_references(subgraphs: tuple[SubGraph, ...], fb: Flatbuffer) -> None:
    """WHILE/IF/CALL_ONCE options name subgraphs: each must exist."""
    for graph in subgraphs:
        for op in graph.operators:
            if not isinstance(op.options, Options):
                continue
            for key in _SUBGRAPH_FIELDS:
                index = op.options.get(key)
                if index is not None and not 0 <= index < len(subgraphs):
                    raise fb.fail(f"Model.subgraphs[{graph.index}].operators[{op.index}].{key}",
                                  f"subgraph {index} does not exist ({len(subgraphs)} subgraphs)")


# ----------------------------------------------------------------------------------------------
# dequantization


def dequantize(tensor: Tensor, values: np.ndarray) -> np.ndarray:
    """Float32 values of a stored tensor (see Tensor.dequantize)."""
    shown = printable(tensor.name, 200)
    if values.dtype.kind == "f":
        return values.astype(np.float32)
    q = tensor.quantization
    if q is None or not q.scale:
        raise CorruptModelError(f"tensor '{shown}' is {tensor.type_name} but carries no quantization scale")
    scale = np.asarray(q.scale, dtype=np.float64)
    zero = np.asarray(q.zero_point or (0,) * len(q.scale), dtype=np.float64)
    if len(zero) not in (1, len(scale)):
        raise CorruptModelError(f"tensor '{shown}' has {len(scale)} scales but {len(zero)} zero points")
    if len(scale) > 1:
        axis = q.quantized_dimension
        if not 0 <= axis < values.ndim or values.shape[axis] != len(scale):
            raise CorruptModelError(f"tensor '{shown}' has {len(scale)} scales, which do not match dimension "
                                    f"{axis} of shape {list(values.shape)}")
        shape = [1] * values.ndim
        shape[axis] = len(scale)
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if len(zero) > 1 else zero
    # TFLite's reference kernel: float(double(scale) * (q - zero_point))
    return ((values.astype(np.float64) - zero) * scale).astype(np.float32)
