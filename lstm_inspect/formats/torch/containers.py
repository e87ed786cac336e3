"""PyTorch files as plain data plus lazy tensors: the zip format, the pre-1.6 legacy stream,
safetensors and TorchScript archives, read without torch and without running anything.

`read_torch(path)` sniffs the bytes and returns a `TorchFile`: `tree` is what the file's pickle
holds (built by `unpickler`, so only plain data, `TensorRef`s and inert stand-ins), `tensors()` lists
every tensor with its dotted path. A `TensorRef` knows its dtype, shape, stride and where its
storage lies; `read()` returns the values with NumPy. Storages are never extracted: a stored zip
member or a range of the legacy/safetensors file is read in place with `pread` when asked; a
compressed member (torch never writes one) is read whole, within the zip limits.
"""
from __future__ import annotations

import math
import os
import re
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import numpy as np
from numpy.lib.stride_tricks import as_strided

from lstm_inspect import safety
from lstm_inspect.errors import CorruptModelError, InspectError, NotAModelError, UnsafeModelError, \
    UnsupportedDialectError
from lstm_inspect.formats.sniff import HDF5_SIGNATURE
from lstm_inspect.safety import DEFAULT_LIMITS, Limits, printable

from .unpickler import DEFAULT_PICKLE_LIMITS, GlobalRef, ObjectStandIn, PickleLimits, PickleMachine, \
    TruncatedPickleError, check_tree, state_attributes

__all__ = ["TensorRef", "TorchFile", "ScriptClass", "read_torch", "walk_tree", "named_children", "KINDS"]

KINDS = ("torch-zip", "torch-legacy", "safetensors", "torchscript")
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_HEAD_BYTES = 4096
_CRC_CHECK_LIMIT = 256 << 20  # bytes: a larger in-place storage is not CRC-checked (~1 s per GB)
_SMALL_MEMBER = 64  # byteorder / version members
_CODE_FILE_LIMIT, _CODE_TOTAL_LIMIT = 16 << 20, 64 << 20  # TorchScript code read for names only

# ----------------------------------------------------------------------------------------------
# dtypes


@dataclass(frozen=True)
class _DType:
    name: str  # numpy's name; "bfloat16", "float8_e4m3fn", "float8_e5m2" as torch names them
    stored: str  # numpy code of the stored little-endian bytes
    result: str  # numpy dtype read() returns

    @property
    def itemsize(self) -> int:
        return np.dtype(self.stored).itemsize


_DTYPES = {d.name: d for d in (
    _DType("float64", "<f8", "<f8"), _DType("float32", "<f4", "<f4"), _DType("float16", "<f2", "<f2"),
    _DType("bfloat16", "<u2", "<f4"), _DType("float8_e4m3fn", "|u1", "<f4"), _DType("float8_e5m2", "|u1", "<f4"),
    _DType("int64", "<i8", "<i8"), _DType("int32", "<i4", "<i4"), _DType("int16", "<i2", "<i2"),
    _DType("int8", "|i1", "|i1"), _DType("uint8", "|u1", "|u1"), _DType("uint16", "<u2", "<u2"),
    _DType("uint32", "<u4", "<u4"), _DType("uint64", "<u8", "<u8"), _DType("bool", "|b1", "|b1"),
    _DType("complex64", "<c8", "<c8"), _DType("complex128", "<c16", "<c16"),
)}

_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
_STORAGE_MODULES = ("torch", "torch.cuda", "torch.storage")

_SAFETENSORS_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32", "U32": "uint32",
    "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}


def _e4m3fn_bits(code: int) -> int:
    """float8_e4m3fn (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities,
    S.1111.111 is NaN) to float32 bits, as c10's fp8e4m3fn_to_fp32_value computes them (so NaNs
    keep torch's exact bits)."""
    w = code << 24
    sign, nonsign = w & 0x80000000, w & 0x7FFFFFFF
    if nonsign == 0:
        return sign
    shift = 32 - nonsign.bit_length()
    shift = shift - 4 if shift > 4 else 0
    carried = nonsign + 0x01000000
    inf_nan = ((carried - (1 << 32) if carried >= 1 << 31 else carried) >> 8) & 0x7F800000
    return (sign | ((((nonsign << shift) & 0xFFFFFFFF) >> 4) + ((0x78 - shift) << 23) | inf_nan)) & 0xFFFFFFFF


def _e4m3fn_table() -> np.ndarray:
    return np.array([_e4m3fn_bits(code) for code in range(256)], dtype=np.uint32).view(np.float32)


def _e5m2_table() -> np.ndarray:
    """float8_e5m2 is the upper byte of a float16. torch widens through float32 arithmetic, which
    quiets signalling NaNs: the quiet bit is set here the same way, so NaNs match torch's bits."""
    bits = (np.arange(256, dtype=np.uint16) << 8).view(np.float16).astype(np.float32).view(np.uint32)
    bits[np.isnan(bits.view(np.float32))] |= 0x00400000
    return bits.view(np.float32)


_E4M3FN, _E5M2 = _e4m3fn_table(), _e5m2_table()


def _decode(raw: np.ndarray, dtype: _DType) -> np.ndarray:
    """Stored values (a native-order copy) to what read() returns; every conversion is exact."""
    if dtype.name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype.name == "float8_e5m2":
        return _E5M2[raw]
    if dtype.name == "float8_e4m3fn":
        return _E4M3FN[raw]
    return raw


# ----------------------------------------------------------------------------------------------
# The open file and its storages


class _OpenFile:
    """One regular file, read with pread (no shared offset), opened without blocking on FIFOs."""

    def __init__(self, path: str | os.PathLike[str], limits: Limits, label: str) -> None:
        self.label = label
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotAModelError("no such file", file=label) from None
        except OSError as exc:
            raise NotAModelError(f"cannot read it ({exc.strerror or exc})", file=label) from None
        if stat.S_ISDIR(st.st_mode):
            raise NotAModelError("is a directory, not a PyTorch file", file=label)
        if not stat.S_ISREG(st.st_mode):
            raise NotAModelError("is not a regular file", file=label)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
        try:
            self.fd = os.open(path, flags)
        except OSError as exc:
            raise NotAModelError(f"cannot read it ({exc.strerror or exc})", file=label) from None
        now = os.fstat(self.fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(self.fd)
            raise NotAModelError("the file changed while being opened", file=label)
        self.size = now.st_size
        if self.size > limits.max_file_bytes:
            os.close(self.fd)
            raise UnsafeModelError(f"file is {self.size} bytes, over the {limits.max_file_bytes}-byte limit",
                                   file=label)
        self.closed = False

    def pread(self, n: int, offset: int) -> bytes:
        if self.closed:
            raise ValueError(f"{self.label} is closed")
        parts, got = [], 0
        while got < n:
            chunk = os.pread(self.fd, min(n - got, 64 << 20), offset + got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def pread_exact(self, n: int, offset: int, what: str) -> bytes:
        if offset < 0 or n < 0:  # a damaged zip directory can put a member before the file's start
            raise CorruptModelError(f"{what} lies before the start of the file (offset {offset})")
        data = self.pread(n, offset)
        if len(data) != n:
            raise CorruptModelError(f"{what} runs past the end of the file (needs {n} bytes at offset {offset})")
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class _Storage:
    """The bytes of one storage: a range of the file (located now, or after the legacy pickles), or
    a compressed zip member read whole on first use."""

    def __init__(self, key: str, dtype: _DType, nbytes: int, file: _OpenFile, limits: Limits, *,
                 offset: int | None = None, member: tuple[zipfile.ZipFile, zipfile.ZipInfo] | None = None,
                 big_endian: bool = False) -> None:
        self.key, self.dtype, self.nbytes = key, dtype, nbytes
        self.file, self.limits = file, limits
        self.offset, self.member, self.big_endian = offset, member, big_endian
        self._data: bytes | None = None
        self._checked = member is None or member[1].compress_type != zipfile.ZIP_STORED

    @property
    def numel(self) -> int:
        return self.nbytes // self.dtype.itemsize

    @property
    def in_place(self) -> bool:
        """Its bytes lie in the file as they are (a stored member or a range of the file)."""
        return self.offset is not None

    def read(self, start: int, count: int) -> bytes:
        """`count` bytes from byte `start` of the storage (the caller checked the range)."""
        if self.offset is not None:
            self._check_crc()
            return self.file.pread_exact(count, self.offset + start, f"storage {printable(self.key, 100)}")
        if self._data is None:
            zf, info = self.member  # type: ignore[misc]
            self._data = safety.read_member(zf, info.filename, self.limits)
        return self._data[start:start + count]

    def _check_crc(self) -> None:
        """A damaged stored member is refused instead of giving wrong numbers (zipfile would check
        the CRC when reading the member whole; reading in place must do it itself)."""
        if self._checked:
            return
        _zf, info = self.member  # type: ignore[misc]
        if info.file_size <= _CRC_CHECK_LIMIT:
            crc, position, end = 0, self.offset, self.offset + info.file_size  # type: ignore[operator]
            what = f"zip member {printable(info.filename, 200)}"
            while position < end:
                chunk = self.file.pread_exact(min(1 << 20, end - position), position, what)
                crc, position = zlib.crc32(chunk, crc), position + len(chunk)
            if crc != info.CRC:
                raise CorruptModelError(f"zip member '{printable(info.filename, 200)}' is damaged (its CRC-32 "
                                        "does not match)", file=self.file.label)
        self._checked = True


@dataclass(frozen=True)
class _StorageView:
    """What a persistent id gives the pickle: a storage, or a byte range of it (legacy views)."""

    storage: _Storage
    byte_offset: int
    nbytes: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor in the file, not read yet. `dtype` is a numpy name ("float32"; "bfloat16",
    "float8_e4m3fn" and "float8_e5m2" as torch names them); `storage_offset` counts elements of
    `dtype` from the start of the storage `storage_key` (tensors sharing a storage share the key)."""

    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    storage_key: str
    _storage: _Storage = field(repr=False)  # equal refs: the same bytes of the same open file

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per stored element."""
        return _DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's own elements as stored."""
        return self.numel * self.itemsize

    @property
    def is_contiguous(self) -> bool:
        """Row-major with no gaps (dimensions of size 1 may have any stride), as torch defines it."""
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size == 0:
                return True
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    @property
    def extent(self) -> tuple[str, int] | None:
        """(file path, byte offset) of the tensor's bytes when they lie in the file contiguously, as
        little-endian values (so a splitter can copy `nbytes` bytes directly); None otherwise."""
        storage = self._storage
        if not (storage.in_place and self.is_contiguous and not storage.big_endian):
            return None
        return storage.file.label, storage.offset + self.storage_offset * self.itemsize  # type: ignore[operator]

    def read(self, selection: Any = Ellipsis) -> np.ndarray:
        """The values (a new array; bfloat16 and float8 as exact float32), optionally `[selection]`."""
        dtype = _DTYPES[self.dtype]
        result_itemsize = np.dtype(dtype.result).itemsize
        if self.numel == 0:
            return np.zeros(self.shape, dtype.result)[selection]
        span = 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        raw = self._storage.read(self.storage_offset * dtype.itemsize, span * dtype.itemsize)
        stored = np.dtype(dtype.stored)
        if self._storage.big_endian:
            stored = stored.newbyteorder(">")
        base = np.frombuffer(raw, dtype=stored, count=span)
        view = as_strided(base, shape=self.shape, strides=[s * stored.itemsize for s in self.stride],
                          writeable=False)[selection]
        limit = self._storage.limits.max_dataset_bytes
        if view.size * result_itemsize > limit:
            raise UnsafeModelError(f"tensor of {view.size} elements would take over the {limit}-byte limit "
                                   "to read (a broadcast tensor?)", file=self._storage.file.label)
        return _decode(np.array(view, dtype=stored.newbyteorder("=")), dtype)


# ----------------------------------------------------------------------------------------------
# The result


@dataclass(frozen=True)
class ScriptClass:
    """A TorchScript module class as its code/ file declares it: which attributes are parameters
    and buffers (its other tensors are plain attributes, not in its state_dict), and its `Final`
    constants with literal values (an RNN's `mode`, `hidden_size`, `nonlinearity`...)."""

    parameters: tuple[str, ...]
    buffers: tuple[str, ...]
    constants: Mapping[str, Any]


@dataclass(frozen=True)
class TorchFile:
    """What `read_torch` found. `tree` is the pickled object (for safetensors: a dict name →
    TensorRef in header order); `metadata` holds what the container states (zip `version` and
    `byteorder`, the legacy `sys_info`, safetensors `__metadata__`, a Lightning version...);
    `constants` the TorchScript constants (`CONSTANTS.c<i>` in its code); `script_classes` the
    parameter and buffer names of each TorchScript class. Close it (or use `with`) when done:
    tensors read the file lazily."""

    path: str
    kind: str
    tree: Any
    metadata: Mapping[str, Any]
    constants: tuple = ()
    script_classes: Mapping[str, ScriptClass] = field(default_factory=lambda: MappingProxyType({}))
    _close: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def tensors(self) -> list[tuple[str, TensorRef]]:
        """Every tensor with its dotted path in the tree (a shared tensor once per path), then the
        TorchScript constants as `CONSTANTS.c<i>`."""
        found = [(".".join(path), node) for path, node in walk_tree(self.tree) if type(node) is TensorRef]
        found += [(f"CONSTANTS.c{i}", t) for i, t in enumerate(self.constants) if type(t) is TensorRef]
        return found

    def close(self) -> None:
        self._close()

    def __enter__(self) -> "TorchFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def walk_tree(root: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, node) for every node of a checked tree, depth first in file order. Path parts are
    dict keys (as text), list indices, and for a stand-in its attribute names (`state`), item keys,
    list indices and `args.<i>`."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), root)]
    while stack:
        path, node = stack.pop()
        yield path, node
        stack.extend(reversed(named_children(path, node)))


def named_children(path: tuple[str, ...], node: Any) -> list[tuple[tuple[str, ...], Any]]:
    """The (path, child) pairs of one node, as `walk_tree` names them."""
    kind = type(node)
    if isinstance(node, dict):
        return [(path + (_key_text(k),), v) for k, v in node.items()]
    if kind is list or kind is tuple:
        return [(path + (str(i),), v) for i, v in enumerate(node)]
    if kind is ObjectStandIn:
        out: list[tuple[tuple[str, ...], Any]] = []
        attributes = state_attributes(node.state)
        if attributes is not None:
            out += [(path + (_key_text(k),), v) for k, v in attributes.items()]
        elif node.state is not None:
            out.append((path + ("state",), node.state))
        out += [(path + (_key_text(k),), v) for k, v in node.items.items()]
        out += [(path + (str(i),), v) for i, v in enumerate(node.list_items)]
        out += [(path + ("args", str(i)), v) for i, v in enumerate(node.args)]
        return out
    return []


def _key_text(key: Any) -> str:
    if type(key) is str:
        return key
    if type(key) in (int, float, bool) or key is None:
        return str(key)
    if type(key) is bytes:
        return key.decode("utf-8", "backslashreplace")
    return f"<{type(key).__name__}>"


# ----------------------------------------------------------------------------------------------
# Entry point


def read_torch(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS,
               pickle_limits: PickleLimits = DEFAULT_PICKLE_LIMITS) -> TorchFile:
    """Read a PyTorch file (zip, legacy, safetensors, TorchScript) into plain data and lazy tensors.

    Raises NotAModelError (Python source, HTML, a Git LFS pointer, another format...),
    CorruptModelError, UnsafeModelError (refused globals, limits) or UnsupportedDialectError.
    """
    label = os.fsdecode(path)
    f = _OpenFile(path, limits, label)
    closers: list[Callable[[], None]] = [f.close]
    try:
        if f.size == 0:
            raise NotAModelError("empty file")
        reader = _READERS[_sniff(f.pread(_HEAD_BYTES, 0), f.size)]
        return reader(f, limits, pickle_limits, closers)
    except InspectError as err:
        _close_all(closers)
        err.file = err.file or label
        raise
    except BaseException:
        _close_all(closers)
        raise


def _close_all(closers: list[Callable[[], None]]) -> None:
    while closers:
        closers.pop()()


def _closer(closers: list[Callable[[], None]]) -> Callable[[], None]:
    return lambda: _close_all(closers)


# ----------------------------------------------------------------------------------------------
# Sniffing


_PYTHON_LINE = re.compile(rb"^(?:import\s+[A-Za-z_]|from\s+[\w.]+\s+import\s|def\s+\w+\s*\(|class\s+\w+\s*[(:]|"
                          rb"if\s+__name__\s*==|#!.*python|#.*-\*-\s*coding)", re.M)


def _sniff(head: bytes, size: int) -> str:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[:1] == b"\x80" or head.startswith(b"L1195470371"):
        if _first_pickle(head) == LEGACY_MAGIC:
            return "legacy"
        raise NotAModelError("a Python pickle, but not a PyTorch file (no PyTorch magic number); "
                             "lstm-inspect never loads arbitrary pickles")
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[257:262] == b"ustar" and head.startswith(b"sys_info\0"):
        raise UnsupportedDialectError("PyTorch's pre-0.4 tar format (sys_info, storages, tensors, pickle), "
                                      "which lstm-inspect does not read")
    raise NotAModelError(_not_torch_message(head))


def _first_pickle(head: bytes) -> Any:
    tiny = PickleLimits(max_pickle_bytes=_HEAD_BYTES, max_objects=64, max_memo=16, max_string_bytes=256)
    try:
        return PickleMachine(head, what="the first pickle", limits=tiny).load(0)[0]
    except InspectError:
        return None


def _not_torch_message(head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    lower = text[:64].lower()
    if text.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the model itself (git lfs pull?)"
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        return "is an HTML page (a failed download?), not a model"
    if _is_text(head) and _PYTHON_LINE.search(head):
        return "is Python source code, not a saved PyTorch model"
    if head[257:262] == b"ustar":
        return "is a tar archive, not a PyTorch file"
    if head.startswith(HDF5_SIGNATURE):
        return "is an HDF5 file (a Keras model?), not a PyTorch file"
    preview = " ".join(f"{b:02x}" for b in head[:8])
    return f"not a PyTorch file (starts with {preview})"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a character cut at the end of the head is fine
            return False
        text = head[:exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


# ----------------------------------------------------------------------------------------------
# Storages from persistent ids


def _ascii(value: Any) -> Any:
    """torch.load decodes Python 2 byte strings in persistent ids as ASCII."""
    if type(value) is bytes:
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return value
    return value


def _storage_dtype(storage_type: Any) -> _DType:
    if type(storage_type) is GlobalRef and storage_type.module in _STORAGE_MODULES:
        name = _STORAGE_DTYPES.get(storage_type.name)
        if name is not None:
            return _DTYPES[name]
        if storage_type.name.endswith("Storage"):
            raise UnsupportedDialectError(f"holds a {printable(storage_type.qualname, 100)} (quantized tensors "
                                          "are not supported)")
    raise CorruptModelError(f"a persistent id names {_name_of(storage_type)} where a torch storage type belongs")


def _name_of(obj: Any) -> str:
    return printable(obj.qualname, 200) if isinstance(obj, (GlobalRef, ObjectStandIn)) else f"a {type(obj).__name__}"


def _make_tensor(view: Any, offset: int, size: tuple, stride: tuple, dtype_name: str | None) -> TensorRef:
    """A rebuilt tensor (its arguments checked by the unpickler) as a TensorRef that fits its storage."""
    if type(view) is not _StorageView:
        raise CorruptModelError(f"a tensor whose storage is {_name_of(view)}")
    dtype = view.storage.dtype if dtype_name is None else _DTYPES[dtype_name]
    if view.byte_offset % dtype.itemsize:
        raise CorruptModelError(f"storage {printable(view.storage.key, 100)}: a view not aligned to its elements")
    capacity = view.nbytes // dtype.itemsize
    if math.prod(size):
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= capacity:
            raise CorruptModelError(f"a tensor of shape {tuple(size)} needs element {last} of storage "
                                    f"{printable(view.storage.key, 100)}, which holds {capacity}")
    return TensorRef(dtype.name, tuple(size), tuple(stride), view.byte_offset // dtype.itemsize + offset,
                     view.storage.key, view.storage)


# ----------------------------------------------------------------------------------------------
# zip (torch.save since 1.6, and TorchScript)


class _ZipArchive:
    """The archive folder of a torch zip, its members read in place, and its storages."""

    def __init__(self, f: _OpenFile, zf: zipfile.ZipFile, prefix: str, limits: Limits, big_endian: bool) -> None:
        self.f, self.zf, self.prefix, self.limits, self.big_endian = f, zf, prefix, limits, big_endian
        infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
        # Where each member's data must end: the next local header, or the central directory.
        self._bounds = {i.filename: (after.header_offset if after else zf.start_dir)
                        for i, after in zip(infos, infos[1:] + [None])}
        self.cache: dict[tuple[str, str], _Storage] = {}

    def read_small(self, name: str, limit: int) -> bytes | None:
        if self.prefix + name not in self._bounds:
            return None
        info = self.zf.getinfo(self.prefix + name)
        if info.file_size > limit:
            raise UnsafeModelError(f"zip member '{printable(info.filename, 200)}' is {info.file_size} bytes, "
                                   f"over the {limit}-byte limit for it")
        return safety.read_member(self.zf, info.filename, self.limits)

    def data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a stored member's bytes start, from its local header, checked against its neighbours."""
        what = f"the local header of {printable(info.filename, 200)}"
        header = self.f.pread_exact(30, info.header_offset, what)
        signature, name_len, extra_len = header[:4], *struct.unpack("<HH", header[26:30])
        name = self.f.pread_exact(name_len, info.header_offset + 30, what)
        expected = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
        if signature != b"PK\x03\x04" or name != expected:
            raise CorruptModelError(f"zip member '{printable(info.filename, 200)}' has a bad local header")
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.compress_size > self._bounds[info.filename]:
            raise CorruptModelError(f"zip member '{printable(info.filename, 200)}' runs past the end of its "
                                    "space in the archive")
        return start

    def persistent_load(self, folder: str) -> Callable[[Any], _StorageView]:
        def load(pid: Any) -> _StorageView:
            if type(pid) is not tuple or len(pid) != 5 or _ascii(pid[0]) != "storage":
                raise CorruptModelError(f"{folder}: a persistent id that is not a ('storage', ...) tuple")
            storage_type, key, numel = pid[1], _ascii(pid[2]), pid[4]  # pid[3]: the device, unused
            dtype = _storage_dtype(storage_type)
            if type(key) is not str or type(numel) is not int or numel < 0:
                raise CorruptModelError(f"{folder}: a storage persistent id with a bad key or size")
            storage = self.cache.get((folder, key))
            if storage is None:
                storage = self.cache[(folder, key)] = self._storage(folder, key, dtype, numel)
            return _StorageView(storage, 0, storage.nbytes)
        return load

    def _storage(self, folder: str, key: str, dtype: _DType, numel: int) -> _Storage:
        name = f"{self.prefix}{folder}/{key}"
        if name not in self._bounds:
            raise CorruptModelError(f"storage {printable(key, 100)} is missing (no zip member "
                                    f"'{printable(name, 200)}')")
        info = self.zf.getinfo(name)
        nbytes = numel * dtype.itemsize
        if info.file_size < nbytes:
            raise CorruptModelError(f"storage '{printable(name, 200)}' holds {info.file_size} bytes but the "
                                    f"pickle needs {nbytes}")
        if info.compress_type == zipfile.ZIP_STORED:
            return _Storage(key, dtype, nbytes, self.f, self.limits, offset=self.data_offset(info),
                            member=(self.zf, info), big_endian=self.big_endian)
        return _Storage(key, dtype, nbytes, self.f, self.limits, member=(self.zf, info), big_endian=self.big_endian)

    def load_pickle(self, name: str, folder: str, pickle_limits: PickleLimits) -> Any:
        full = self.prefix + name
        info = self.zf.getinfo(full)
        if info.file_size > pickle_limits.max_pickle_bytes:
            raise UnsafeModelError(f"{name} is {info.file_size} bytes, over the "
                                   f"{pickle_limits.max_pickle_bytes}-byte limit for a pickle")
        data = safety.read_member(self.zf, full, self.limits)
        machine = PickleMachine(data, what=name, limits=pickle_limits, make_tensor=_make_tensor)
        value, _end = machine.load(0, self.persistent_load(folder))
        check_tree(value, pickle_limits, name, machine.objects)
        return value


def _read_zip(f: _OpenFile, limits: Limits, pickle_limits: PickleLimits, closers: list) -> TorchFile:
    fh = open(f.fd, "rb", closefd=False)
    closers.append(fh.close)
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise CorruptModelError(f"a damaged zip archive ({printable(str(exc), 200)})") from None
    closers.append(zf.close)
    safety.check_zip(zf, limits)
    prefix = _archive_prefix(zf)
    names = set(zf.namelist())
    byteorder = _byteorder(zf, prefix, limits)
    archive = _ZipArchive(f, zf, prefix, limits, big_endian=byteorder == "big")
    version = archive.read_small("version", _SMALL_MEMBER) or archive.read_small(".data/version", _SMALL_MEMBER)
    metadata: dict[str, Any] = {"archive": prefix[:-1], "byteorder": byteorder,
                                "format_version": _text_member(version)}
    script = prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names)
    tree = archive.load_pickle("data.pkl", "data", pickle_limits)
    constants: tuple = ()
    classes: Mapping[str, ScriptClass] = MappingProxyType({})
    if script:
        if prefix + "constants.pkl" in names:
            loaded = archive.load_pickle("constants.pkl", "constants", pickle_limits)
            if type(loaded) is not tuple:
                raise CorruptModelError("constants.pkl does not hold a tuple")
            constants = loaded
        classes = _script_classes(zf, prefix, limits)
    metadata.update(_stated_versions(tree))
    return TorchFile(f.label, "torchscript" if script else "torch-zip", tree, MappingProxyType(metadata),
                     constants, classes, _closer(closers))


def _archive_prefix(zf: zipfile.ZipFile) -> str:
    """The archive folder (`<name>/`): torch.save uses the file's stem, but any name is valid."""
    found = [n[:-len("data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not found and any(n.endswith("/archive_format") and n.count("/") == 1 for n in zf.namelist()):
        raise UnsupportedDialectError("a torch.export program archive (.pt2), which lstm-inspect does not read")
    if not found and any(n.endswith("/model.json") and n.count("/") == 1 for n in zf.namelist()):
        raise UnsupportedDialectError("a TorchScript archive of torch < 1.4 (model.json), which lstm-inspect "
                                      "does not read; re-save it with a newer torch")
    if not found:
        hint = " (it looks like a Keras .keras archive)" if "config.json" in zf.namelist() else ""
        raise NotAModelError(f"a zip archive, but not a PyTorch file: no <archive>/data.pkl{hint}")
    if len(found) > 1:
        raise UnsupportedDialectError(f"a zip archive holding {len(found)} PyTorch archives "
                                      f"({', '.join(printable(p, 60) for p in found[:3])}...)")
    return found[0]


def _byteorder(zf: zipfile.ZipFile, prefix: str, limits: Limits) -> str:
    if prefix + "byteorder" not in zf.namelist():
        return "little"  # files written before torch recorded it: little-endian machines
    info = zf.getinfo(prefix + "byteorder")
    if info.file_size > _SMALL_MEMBER:
        raise CorruptModelError("the byteorder member is not 'little' or 'big'")
    value = safety.read_member(zf, info.filename, limits)
    if value not in (b"little", b"big"):
        raise CorruptModelError("the byteorder member is not 'little' or 'big'")
    return value.decode()


def _text_member(data: bytes | None) -> str | None:
    if data is None:
        return None
    return printable(data.decode("utf-8", "replace").strip(), _SMALL_MEMBER)


_SCRIPT_CLASS = re.compile(r"class (\w+)\(Module\):")
_SCRIPT_NAMES = re.compile(r"  __(parameters|buffers)__ = \[([^\]]*)\]")
_SCRIPT_CONSTANT = re.compile(r"  (\w+) : Final\[(str|int|float|bool)\] = (.{1,200})")
_QUOTED = re.compile(r'"([^"\\]*)"')


def _script_classes(zf: zipfile.ZipFile, prefix: str, limits: Limits) -> Mapping[str, ScriptClass]:
    """Parameter and buffer names and constants of each TorchScript module class, from the
    declarations at the top of its class in code/ (read as text, line by line; never run)."""
    classes: dict[str, ScriptClass] = {}
    budget = _CODE_TOTAL_LIMIT
    for info in zf.infolist():
        name = info.filename
        if not (name.startswith(prefix + "code/") and name.endswith(".py")) or info.file_size > _CODE_FILE_LIMIT:
            continue
        budget -= info.file_size
        if budget < 0:
            break
        text = safety.read_member(zf, name, limits).decode("utf-8", "replace")
        module = name[len(prefix) + len("code/"):-len(".py")].replace("/", ".")
        classes.update(_parse_script_classes(text, module))
    return MappingProxyType(classes)


def _parse_script_classes(text: str, module: str) -> dict[str, ScriptClass]:
    classes: dict[str, ScriptClass] = {}
    current: tuple[str, dict[str, tuple[str, ...]], dict[str, Any]] | None = None
    for line in text.splitlines() + [""]:
        match = _SCRIPT_CLASS.fullmatch(line)
        if current is not None and (match or not line.startswith("  ") or line.startswith("  def ")):
            qualname, names, constants = current
            classes[qualname] = ScriptClass(names.get("parameters", ()), names.get("buffers", ()),
                                            MappingProxyType(constants))
            current = None
        if match:
            current = (f"{module}.{match[1]}", {}, {})
        elif current is not None:
            if declared := _SCRIPT_NAMES.fullmatch(line):
                current[1][declared[1]] = tuple(_QUOTED.findall(declared[2]))
            elif (constant := _SCRIPT_CONSTANT.fullmatch(line)) and (value := _literal(*constant.groups()[1:])) \
                    is not None:
                current[2][constant[1]] = value
    return classes


def _literal(kind: str, text: str) -> Any:
    """A constant's literal (`"LSTM"`, `4`, `0.`, `True`); None when it is anything else."""
    if kind == "str":
        quoted = _QUOTED.fullmatch(text)
        return quoted[1] if quoted else None
    if kind == "bool":
        return {"True": True, "False": False}.get(text)
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        return None


def _stated_versions(tree: Any) -> dict[str, Any]:
    """Versions a checkpoint dict states about itself (Lightning writes its own)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for key, name in (("pytorch-lightning_version", "lightning_version"), ("torch_version", "torch_version")):
            if type(tree.get(key)) is str:
                out[name] = printable(tree[key], 100)
    return out


# ----------------------------------------------------------------------------------------------
# legacy (torch < 1.6): magic, protocol, sys_info, the object, storage keys, raw storages


class _LegacyStorages:
    """Root storages named by the object's persistent ids, located after the pickles."""

    def __init__(self, f: _OpenFile, limits: Limits) -> None:
        self.f, self.limits = f, limits
        self.roots: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is not tuple or not pid:
            raise CorruptModelError("the legacy pickle has a persistent id that is not a tuple")
        typename = _ascii(pid[0])
        if typename == "module" and len(pid) == 4:
            # torch.save(module) recorded the class with its source: the class name is all we keep.
            if type(pid[1]) is not GlobalRef:
                raise CorruptModelError("the legacy pickle names a module that is not a class")
            return pid[1]
        if typename != "storage" or len(pid) != 6:
            raise CorruptModelError("the legacy pickle has a persistent id that is not a storage or a module")
        storage_type, key, numel, view = pid[1], _ascii(pid[2]), pid[4], pid[5]  # pid[3]: the device
        dtype = _storage_dtype(storage_type)
        if type(key) is not str or type(numel) is not int or numel < 0:
            raise CorruptModelError("the legacy pickle has a storage persistent id with a bad key or size")
        root = self.roots.get(key)
        if root is None:
            root = self.roots[key] = _Storage(key, dtype, numel * dtype.itemsize, self.f, self.limits)
        elif root.dtype != dtype or root.numel != numel:
            raise CorruptModelError(f"storage {printable(key, 100)} is named with two types or sizes")
        if view is None:
            return _StorageView(root, 0, root.nbytes)
        return self._view(root, view)

    def _view(self, root: _Storage, view: Any) -> _StorageView:
        if type(view) is not tuple or len(view) != 3 or any(type(v) is not int for v in view[1:]):
            raise CorruptModelError(f"storage {printable(root.key, 100)} has a malformed view")
        _view_key, offset, size = view
        if offset < 0 or size < 0 or offset + size > root.numel:
            raise CorruptModelError(f"a view of storage {printable(root.key, 100)} lies outside it")
        size_of = root.dtype.itemsize
        return _StorageView(root, offset * size_of, size * size_of)

    def locate(self, keys: Any, offset: int) -> None:
        """Each listed storage: an int64 element count, then its bytes."""
        if type(keys) is not list or any(type(_ascii(k)) is not str for k in keys):
            raise CorruptModelError("the legacy file's storage key list is not a list of names")
        keys = [_ascii(k) for k in keys]
        if len(set(keys)) != len(keys):
            raise CorruptModelError("the legacy file lists a storage twice")
        for key in keys:
            storage = self.roots.get(key)
            if storage is None:
                raise CorruptModelError(f"the legacy file stores data for {printable(key, 100)}, "
                                        "which no tensor uses")
            (count,) = struct.unpack("<q", self.f.pread_exact(8, offset, f"storage {printable(key, 100)}"))
            if count != storage.numel:
                raise CorruptModelError(f"storage {printable(key, 100)} holds {count} elements but the pickle "
                                        f"says {storage.numel}")
            storage.offset = offset + 8
            offset = storage.offset + storage.nbytes
            if offset > self.f.size:
                raise CorruptModelError(f"storage {printable(key, 100)} runs past the end of the file")
        missing = [k for k, s in self.roots.items() if s.offset is None]
        if missing:
            raise CorruptModelError(f"storage {printable(missing[0], 100)} has no data in the file")


def _read_legacy(f: _OpenFile, limits: Limits, pickle_limits: PickleLimits, closers: list) -> TorchFile:
    head_size = min(f.size, pickle_limits.max_pickle_bytes)
    storages = _LegacyStorages(f, limits)
    machine = PickleMachine(f.pread(head_size, 0), what="the legacy pickle stream", limits=pickle_limits,
                            make_tensor=_make_tensor)
    try:
        _magic, pos = machine.load(0)
        protocol, pos = machine.load(pos)
        if protocol != LEGACY_PROTOCOL:
            raise UnsupportedDialectError(f"a legacy PyTorch file with protocol version "
                                          f"{printable(str(protocol), 40)}, not {LEGACY_PROTOCOL}")
        sys_info, pos = machine.load(pos)
        tree, pos = machine.load(pos, storages.persistent_load)
        keys, pos = machine.load(pos)
    except TruncatedPickleError:
        if head_size < f.size:
            raise UnsafeModelError(f"the pickles of this legacy file are over the "
                                   f"{pickle_limits.max_pickle_bytes}-byte limit") from None
        raise
    check_tree(tree, pickle_limits, "the legacy pickle", machine.objects)
    storages.locate(keys, pos)
    metadata: dict[str, Any] = {"protocol_version": protocol}
    if isinstance(sys_info, dict):
        metadata.update({k: v for k, v in sys_info.items() if k in ("little_endian", "type_sizes")
                         and type(v) in (bool, dict)})
    metadata.update(_stated_versions(tree))
    return TorchFile(f.label, "torch-legacy", tree, MappingProxyType(metadata), _close=_closer(closers))


# ----------------------------------------------------------------------------------------------
# safetensors: u64 header length, JSON header, raw tensors


def _read_safetensors(f: _OpenFile, limits: Limits, pickle_limits: PickleLimits, closers: list) -> TorchFile:
    (length,) = struct.unpack("<Q", f.pread_exact(8, 0, "the safetensors header length"))
    if length > limits.max_json_bytes:
        raise UnsafeModelError(f"the safetensors header is {length} bytes, over the "
                               f"{limits.max_json_bytes}-byte limit")
    if 8 + length > f.size:
        raise CorruptModelError(f"the safetensors header claims {length} bytes; the file has {f.size - 8}")
    header = safety.load_json(f.pread_exact(length, 8, "the safetensors header"), "the safetensors header", limits)
    if not isinstance(header, dict):
        raise CorruptModelError("the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(type(v) is str for v in metadata.values())):
        raise CorruptModelError("the safetensors __metadata__ is not a map of strings")
    start, size = 8 + length, f.size - 8 - length
    tree: dict[str, TensorRef] = {}
    spans = []
    for name, entry in header.items():
        dtype, shape, begin, end = _safetensors_entry(name, entry, size)
        storage = _Storage(name, dtype, end - begin, f, limits, offset=start + begin)
        strides = _contiguous_strides(shape)
        tree[name] = _make_tensor(_StorageView(storage, 0, end - begin), 0, shape, strides, None)
        spans.append((begin, end, name))
    _check_disjoint(spans)
    return TorchFile(f.label, "safetensors", tree, MappingProxyType({"safetensors_metadata": metadata}),
                     _close=_closer(closers))


def _safetensors_entry(name: str, entry: Any, size: int) -> tuple[_DType, tuple[int, ...], int, int]:
    shown = printable(name, 200)
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CorruptModelError(f"safetensors entry '{shown}' lacks dtype, shape or data_offsets")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if type(code) is not str or code not in _SAFETENSORS_DTYPES:
        raise UnsupportedDialectError(f"safetensors entry '{shown}' has dtype {printable(str(code), 40)}, "
                                      "which lstm-inspect does not read")
    if type(shape) is not list or len(shape) > 64 or any(type(n) is not int or n < 0 for n in shape):
        raise CorruptModelError(f"safetensors entry '{shown}' has a bad shape")
    if type(offsets) is not list or len(offsets) != 2 or any(type(o) is not int for o in offsets):
        raise CorruptModelError(f"safetensors entry '{shown}' has bad data_offsets")
    dtype = _DTYPES[_SAFETENSORS_DTYPES[code]]
    begin, end = offsets
    if not 0 <= begin <= end <= size:
        raise CorruptModelError(f"safetensors entry '{shown}' lies outside the file (bytes {begin}..{end} of "
                                f"{size})")
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise CorruptModelError(f"safetensors entry '{shown}' holds {end - begin} bytes but its shape needs "
                                f"{math.prod(shape) * dtype.itemsize}")
    return dtype, tuple(shape), begin, end


def _check_disjoint(spans: list[tuple[int, int, str]]) -> None:
    last_end, last_name = 0, ""
    for begin, end, name in sorted(spans):
        if begin < last_end:
            raise CorruptModelError(f"safetensors entries '{printable(last_name, 100)}' and "
                                    f"'{printable(name, 100)}' overlap")
        if end > begin:
            last_end, last_name = end, name


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


_READERS: dict[str, Callable[[_OpenFile, Limits, PickleLimits, list], TorchFile]] = {
    "zip": _read_zip, "legacy": _read_legacy, "safetensors": _read_safetensors,
}
