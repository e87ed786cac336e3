"""ONNX values as lazy `Weight`s: stored tensors (initializers, Constant nodes), values computed by the
constant folder, and values the file does not hold (graph inputs, run-time results) whose reads fail
with a typed error.

Raw tensors in the model file are views of its memory map; tensors in an external data file are mapped
the same way on first read, so reading one gate's rows touches only those pages. Both keep `extent`.
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

ArrayFn = Callable[[], np.ndarray]


def tensor_weight(tensor: OnnxTensor, location: str) -> Weight:
    """A stored tensor. Integer and boolean tensors (shapes, indices, masks) are not trainable."""
    return Weight(name=tensor.name, shape=tensor.dims, dtype=tensor.dtype, trainable=_is_float(tensor.dtype),
                  location=location, _read=_selector(tensor_array(tensor)), extent=tensor.extent)


def folded_weight(value: Folded, name: str, location: str) -> Weight:
    """A value the folder knows: lazy (a reshape of a stored tensor) or computed."""
    if value.array is not None:
        array = value.array
        full: ArrayFn = lambda: array  # noqa: E731 - a constant
        extent = None
    else:
        assert value.tensor is not None
        stored, shape = tensor_array(value.tensor), value.shape
        full = lambda: stored().reshape(shape)  # noqa: E731 - C order: a reshape keeps the bytes
        extent = value.tensor.extent
    return Weight(name=name, shape=value.shape, dtype=value.dtype, trainable=_is_float(value.dtype),
                  location=location, _read=_selector(full), extent=extent)


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


def tensor_array(tensor: OnnxTensor) -> ArrayFn:
    """A function giving the whole tensor as a read-only array, decoded or mapped once."""
    cache: dict[str, np.ndarray] = {}

    def full() -> np.ndarray:
        if "array" not in cache:
            cache["array"] = _map_external(tensor) if tensor.storage == "external" and tensor.extent \
                else tensor.read()
        return cache["array"]
    return full


def _selector(full: ArrayFn) -> Callable[[Any], np.ndarray]:
    return lambda selection: full()[selection]


def _is_float(dtype: str) -> bool:
    return dtype in ("float16", "float32", "float64", "bfloat16") or dtype.startswith("float8")


def _map_external(tensor: OnnxTensor) -> np.ndarray:
    """The tensor's range of its external file, memory-mapped (the file is checked again: it may have
    changed since the model was read)."""
    ext = tensor.external
    assert ext is not None and tensor.extent is not None
    where = f"external data of tensor '{printable(tensor.name, 200)}'"
    dtype = np.dtype(_numpy_dtype(tensor))
    if ext.length == 0:
        empty = np.zeros(tensor.dims, dtype=dtype)
        empty.flags.writeable = False
        return empty
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
    return array.reshape(tensor.dims)


def _numpy_dtype(tensor: OnnxTensor) -> str:
    """The little-endian numpy dtype of a plainly stored tensor (`extent` is set only for those)."""
    return np.dtype(tensor.dtype).newbyteorder("<").str
