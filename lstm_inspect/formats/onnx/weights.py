"""ONNX values as lazy `Weight`s: stored tensors (initializers, Constant nodes), values computed by the
constant folder, and values the file does not hold (graph inputs, run-time results) whose reads fail
with a typed error.

Raw tensors in the model file are views of its memory map; tensors in an external data file are mapped
the same way on first read, so reading one gate's rows touches only those pages. Both keep `extent`.
Each read first lets go of the pages the previous read mapped in (MADV_DONTNEED on a shared read-only
mapping: the pages stay in the page cache, and a view still held reads the same bytes again), so reading
a model block by block keeps the process's memory at about one block, as `pread` would, without a copy.
"""
from __future__ import annotations

import mmap
import os
import stat
from typing import Any, Callable

import numpy as np

from ...errors import CorruptModelError, UnsupportedDialectError
from ...model import Weight
from ...safety import printable
from .fold import Folded, Unknown
from .proto import OnnxTensor

def tensor_weight(tensor: OnnxTensor, location: str) -> Weight:
    """A stored tensor. Integer and boolean tensors (shapes, indices, masks) are not trainable."""
    return Weight(name=tensor.name, shape=tensor.dims, dtype=tensor.dtype, trainable=_is_float(tensor.dtype),
                  location=location, _read=_Stored(tensor).read, extent=tensor.extent)


def folded_weight(value: Folded, name: str, location: str) -> Weight:
    """A value the folder knows: lazy (a reshape of a stored tensor) or computed."""
    if value.array is not None:
        array = value.array
        read: Callable[[Any], np.ndarray] = lambda selection: array[selection]  # noqa: E731 - in memory
        extent = None
    else:
        assert value.tensor is not None
        read = _Stored(value.tensor, value.shape).read  # C order: a reshape keeps the bytes
        extent = value.tensor.extent
    return Weight(name=name, shape=value.shape, dtype=value.dtype, trainable=_is_float(value.dtype),
                  location=location, _read=read, extent=extent)


def absent_weight(value: Unknown, name: str, location: str, where: str) -> Weight | None:
    """A value the file does not hold: its declared shape, and reads that say so. None when the graph
    does not declare a whole shape."""
    shape = value.shape
    if shape is None or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        return None
    message = f"{where}: the values are not in the file ({value.why})"

    def refuse(selection: Any) -> np.ndarray:
        raise UnsupportedDialectError(message)
    return Weight(name=name, shape=tuple(shape), dtype=value.dtype or "float32", location=location,
                  _read=refuse)


class _Stored:
    """A stored tensor's values, `shape`d: mapped (raw or external data) or decoded (typed fields), once."""

    def __init__(self, tensor: OnnxTensor, shape: tuple[int, ...] | None = None) -> None:
        self.tensor, self.shape = tensor, shape
        self.array: np.ndarray | None = None
        self.release: Callable[[], None] = _nothing

    def read(self, selection: Any) -> np.ndarray:
        _release_previous(self.release)
        if self.array is None:
            self.array, self.release = self._open()
            _release_previous(self.release)
            if self.shape is not None:
                self.array = self.array.reshape(self.shape)
        return self.array[selection]

    def _open(self) -> tuple[np.ndarray, Callable[[], None]]:
        tensor = self.tensor
        if tensor.storage == "external" and tensor.extent is not None:
            return _map_external(tensor)
        data = tensor.read()
        payload = tensor._payload
        mapped = payload.obj if isinstance(payload, memoryview) else None
        if tensor.storage == "raw_data" and tensor.extent is not None and isinstance(mapped, mmap.mmap):
            return data, _page_release(mapped, tensor.extent[1], data.nbytes)
        return data, _nothing


def _nothing() -> None:
    """Nothing to let go of: the values are in memory."""


_previous: list[Callable[[], None]] = [_nothing]  # how to let go of what the last read mapped in


def _release_previous(then: Callable[[], None]) -> None:
    """Let go of the pages the previous read touched (its caller has used them by now); remember this
    read's."""
    _previous[0]()
    _previous[0] = then


def _page_release(mapped: mmap.mmap, start: int, length: int) -> Callable[[], None]:
    """Drop this range's pages from the process (they stay in the page cache and come back on access)."""
    advice = getattr(mmap, "MADV_DONTNEED", None)
    low = start - start % mmap.PAGESIZE
    high = min(len(mapped), start + length)
    if advice is None or high <= low:
        return _nothing

    def release() -> None:
        try:
            mapped.madvise(advice, low, high - low)
        except (OSError, ValueError):  # best effort: the values were already copied
            pass
    return release


def _is_float(dtype: str) -> bool:
    return dtype in ("float16", "float32", "float64", "bfloat16") or dtype.startswith("float8")


def _map_external(tensor: OnnxTensor) -> tuple[np.ndarray, Callable[[], None]]:
    """The tensor's range of its external file, memory-mapped (the file is checked again: it may have
    changed since the model was read), and how to let go of its pages."""
    ext = tensor.external
    assert ext is not None and tensor.extent is not None
    where = f"external data of tensor '{printable(tensor.name, 200)}'"
    dtype = np.dtype(_numpy_dtype(tensor))
    if ext.length == 0:
        empty = np.zeros(tensor.dims, dtype=dtype)
        empty.flags.writeable = False
        return empty, _nothing
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(ext.path, flags)
    except OSError as err:
        raise CorruptModelError(f"{where} cannot be opened ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or ext.offset + ext.length > st.st_size:
            raise CorruptModelError(f"{where}: the file changed since the model was read")
        start = ext.offset - ext.offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(fd, ext.offset + ext.length - start, offset=start, access=mmap.ACCESS_READ)
    except OSError as err:
        raise CorruptModelError(f"{where} cannot be mapped ({err.strerror or err})") from None
    finally:
        os.close(fd)
    array = np.frombuffer(mapped, dtype=dtype, count=ext.length // dtype.itemsize, offset=ext.offset - start)
    return array.reshape(tensor.dims), _page_release(mapped, 0, len(mapped))


def _numpy_dtype(tensor: OnnxTensor) -> str:
    """The little-endian numpy dtype of a plainly stored tensor (`extent` is set only for those)."""
    return np.dtype(tensor.dtype).newbyteorder("<").str
