"""HDF5 pieces of the Keras readers: attribute decoding and lazy weights over h5py datasets."""
from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from lstm_inspect.errors import CorruptModelError
from lstm_inspect.model import Weight, bfloat16_to_float32, strip_tf_suffix


NON_TRAINABLE_NAMES = frozenset({"moving_mean", "moving_variance", "running_mean", "running_std"})


def decode(value: Any) -> Any:
    """HDF5 attributes arrive as bytes, str, numpy scalars or arrays of those."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def attr_list(obj: h5py.HLObject, name: str) -> list[str] | None:
    """A list attribute such as `layer_names`, also when Keras chunked it as `name0`, `name1`, ..."""
    if name in obj.attrs:
        value = decode(obj.attrs[name])
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if f"{name}0" not in obj.attrs:
        return None
    out: list[str] = []
    k = 0
    while f"{name}{k}" in obj.attrs:
        out.extend(str(v) for v in decode(obj.attrs[f"{name}{k}"]))
        k += 1
    return out


def attr_str(obj: h5py.HLObject, name: str) -> str | None:
    if name not in obj.attrs:
        return None
    value = decode(obj.attrs[name])
    return str(value) if value is not None else None


def dataset_dtype(ds: h5py.Dataset) -> str:
    declared = ds.attrs.get("dtype") if "dtype" in ds.attrs else None
    if declared is not None and decode(declared) == "bfloat16":
        return "bfloat16"
    if ds.dtype.kind == "V" and ds.dtype.itemsize == 2:  # only bfloat16 is stored as 2-byte opaque
        return "bfloat16"
    return ds.dtype.name


def raw_extent(ds: h5py.Dataset, base: tuple[str, int] | None) -> tuple[str, int] | None:
    """(file, offset) of a dataset's bytes when they sit in the file exactly as NumPy lays them out."""
    if base is None or ds.chunks is not None or ds.dtype.kind not in "fiub" or ds.dtype.byteorder == ">":
        return None
    if ds.dtype.byteorder == "=" and np.little_endian is False:
        return None
    try:
        offset = ds.id.get_offset()
        plain = ds.id.get_create_plist().get_nfilters() == 0 and ds.id.get_storage_size() == ds.nbytes
    except (OSError, ValueError, RuntimeError):
        return None
    if offset is None or not plain:
        return None
    return base[0], base[1] + int(offset)


def h5_weight(name: str, ds: h5py.Dataset, trainable: bool = True,
              base: tuple[str, int] | None = None) -> Weight:
    """A lazy weight. `base` = (file path, offset of the HDF5 image in it) enables `extent`."""
    dtype = dataset_dtype(ds)

    def read(selection: Any = Ellipsis, _ds: h5py.Dataset = ds) -> np.ndarray:
        try:
            data = np.asarray(_ds[()] if selection is Ellipsis else _ds[selection])
        except (OSError, ValueError, KeyError) as err:  # a damaged chunk, a failing filter...
            raise CorruptModelError(f"weight {name} cannot be read ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
        # NumPy has no bfloat16: hand out its exact float32 values.
        return bfloat16_to_float32(data) if dtype == "bfloat16" else data

    short = strip_tf_suffix(name).rsplit("/", 1)[-1]
    return Weight(name=name, shape=tuple(int(d) for d in ds.shape), dtype=dtype,
                  trainable=trainable and short not in NON_TRAINABLE_NAMES,
                  location=ds.name, _read=read,
                  extent=raw_extent(ds, base) if dtype != "bfloat16" else None)
