"""The neutral model every file format is read into: layers as a tree, weights as lazy handles.

Readers (lstm_inspect.formats) build these records; nothing here knows about a file format.
Weight values are read only when asked (`Weight.read`), so summarising a 1 GB model touches
only its metadata. `Model.framework` says which framework wrote the file; the recurrent cells
are recognised from these records by `lstm_inspect.cells`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Iterator, Mapping

import numpy as np

# A reader callable: given a numpy-style selection (or Ellipsis), returns that part of the array.
ReadFn = Callable[[Any], np.ndarray]


class Framework(str, Enum):
    KERAS = "keras"
    TENSORFLOW = "tensorflow"
    PYTORCH = "pytorch"
    ONNX = "onnx"
    TFLITE = "tflite"


@dataclass(frozen=True)
class Quantization:
    """Affine quantization of a stored integer tensor: real value = (stored - zero_point) * scale,
    with one (scale, zero_point) per tensor, or per channel along `axis`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def dequantize(self, data: np.ndarray, selection: Any, shape: tuple[int, ...]) -> np.ndarray:
        """`data` = stored[selection] of a tensor of `shape`, as float32 real values."""
        scale = np.asarray(self.scale, dtype=np.float64)
        zero = np.asarray(self.zero_point, dtype=np.float64)
        if self.axis is not None and scale.size > 1:
            scale, zero, where = self._channel_params(scale, zero, selection, shape)
            if where is not None:
                tail = (1,) * (data.ndim - where - 1)
                scale, zero = scale.reshape((-1,) + tail), zero.reshape((-1,) + tail)
        else:
            scale, zero = scale.reshape(-1)[0], zero.reshape(-1)[0]
        return ((data.astype(np.float64) - zero) * scale).astype(np.float32)

    def _channel_params(self, scale, zero, selection, shape):
        """The scales of the selected channels, and the axis of `data` they run along (None when
        the selection picked a single channel)."""
        axis = self.axis
        index = selection if isinstance(selection, tuple) else (() if selection is Ellipsis else (selection,))
        picked = index[axis] if axis < len(index) else slice(None)
        channels = np.arange(shape[axis])[picked]
        dropped = sum(1 for s in index[:axis] if isinstance(s, (int, np.integer)))  # axes an int removed
        where = None if np.ndim(channels) == 0 else axis - dropped
        return scale[channels], zero[channels], where


@dataclass(frozen=True)
class Weight:
    """One stored tensor. `name` is as the file names it (or a readable stand-in for positional dialects)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    trainable: bool = True
    location: str = ""  # where it lives in the container (HDF5 path), for messages and metadata
    _read: ReadFn | None = field(default=None, compare=False, repr=False)
    # (file, byte offset) of the raw little-endian C-order bytes, when stored that plainly
    # (contiguous, unfiltered): lets split-gates copy without going through HDF5.
    extent: tuple[str, int] | None = field(default=None, compare=False, repr=False)
    quantization: Quantization | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * dtype_itemsize(self.dtype)

    def read(self, selection: Any = Ellipsis) -> np.ndarray:
        """Read the values (or a hyperslab of them) from the file."""
        if self._read is None:
            raise RuntimeError(f"weight {self.name} has no data source")
        return self._read(selection)

    @property
    def value_dtype(self) -> str:
        """The dtype of `read_values()`: float32 for quantized and bfloat16 weights, else stored."""
        return "float32" if self.quantization is not None or self.dtype == "bfloat16" else self.dtype

    def read_values(self, selection: Any = Ellipsis) -> np.ndarray:
        """The real values: `read()` dequantized when the weight is quantized."""
        data = self.read(selection)
        if self.quantization is None:
            return data
        return self.quantization.dequantize(np.asarray(data), selection, self.shape)

    @property
    def short_name(self) -> str:
        """The last path component without a TF ':0' suffix (kernel, recurrent_kernel, W_i, ...)."""
        return strip_tf_suffix(self.name).rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Layer:
    """A layer, a wrapper or a nested model. `children` carry wrapped layers, cells and sub-models.

    `role` says how a child hangs off its parent: "forward"/"backward" for Bidirectional sides,
    "layer" for TimeDistributed, "cell" for RNN(cell), "cell_<k>" for stacked cells, "" for a
    nested model's layers.
    """

    name: str
    class_name: str
    config: Mapping[str, Any] | None = None
    trainable: bool = True
    weights: tuple[Weight, ...] = ()
    children: tuple["Layer", ...] = ()
    role: str = ""
    inferred: bool = False  # class guessed from weight names/shapes (weights-only files)
    input_shape: tuple[int | None, ...] | None = None  # batch input shape, when the config states it
    inbound: tuple[str, int] | None = None  # functional graph: (source layer name, tensor index)
    registered_name: str | None = None  # a custom class the config names (never loaded)

    def all_weights(self) -> Iterator[Weight]:
        yield from self.weights
        for child in self.children:
            yield from child.all_weights()

    @property
    def params(self) -> int:
        return sum(w.size for w in self.all_weights())

    def child(self, role: str) -> "Layer | None":
        return next((c for c in self.children if c.role == role), None)


@dataclass(frozen=True)
class Model:
    """A whole file read into neutral records. Close it (or use `with`) to release the file."""

    file: str
    format: str  # e.g. "hdf5-legacy", "hdf5-weights", "keras-zip", "keras-dir", "keras-weights-h5"
    layers: tuple[Layer, ...]
    framework: Framework = Framework.KERAS
    keras_version: str | None = None
    backend: str | None = None
    name: str | None = None
    class_name: str | None = None
    has_config: bool = False
    notes: tuple[str, ...] = ()
    producer: str | None = None  # the writing program and version where the file states it (not Keras)
    optimizer_params: int = 0  # elements of optimizer state stored beside the model (not parameters)
    # What only this file format states, as JSON-ready data the summary reports under the framework's
    # name (TFLite: operators by kind, fused or not, stored constants by dtype, parameter counts).
    format_facts: Mapping[str, Any] | None = field(default=None, compare=False)
    _close: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    def all_weights(self) -> Iterator[Weight]:
        for layer in self.layers:
            yield from layer.all_weights()

    @property
    def total_params(self) -> int:
        return sum(w.size for w in self.all_weights())

    @property
    def trainable_params(self) -> int:
        return sum(w.size for w in self.all_weights() if w.trainable)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def strip_tf_suffix(name: str) -> str:
    """TF1/TF2 variable names end in ':0'; Keras 3 names do not."""
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


_ITEMSIZE_OVERRIDES = {"bfloat16": 2}


def dtype_itemsize(dtype: str) -> int:
    if dtype in _ITEMSIZE_OVERRIDES:
        return _ITEMSIZE_OVERRIDES[dtype]
    try:
        return np.dtype(dtype).itemsize
    except TypeError:
        return 0


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32: widening it is exact."""
    bits = np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)
