"""Truth from torch's own loaders, and the bit-exact comparison of what the reader returns."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_inspect.formats.torch.containers import TensorRef

TORCH_DTYPE_NAMES = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2", torch.int64: "int64",
    torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8", torch.bool: "bool",
    torch.complex64: "complex64", torch.complex128: "complex128", torch.uint16: "uint16",
}
WIDENED = (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)  # read() gives exact float32


def load_weights_only(path: Path) -> Any:
    return torch.load(path, weights_only=True, map_location="cpu")


def load_trusted(path: Path) -> Any:
    """Full unpickling: only for files these tests built themselves (whole modules, Namespace...)."""
    return torch.load(path, weights_only=False, map_location="cpu")


def script_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.jit.load(str(path), map_location="cpu").state_dict())


def safetensors_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def expected_values(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype in WIDENED:
        t = t.float()
    return t.contiguous().numpy()


def assert_same_tensor(ref: TensorRef, t: torch.Tensor, *, check_layout: bool = True, where: str = "") -> None:
    """Same dtype name, shape and (optionally) stride/offset as torch, and bit-identical values."""
    assert ref.dtype == TORCH_DTYPE_NAMES[t.dtype], where
    assert ref.shape == tuple(t.shape), where
    if check_layout:
        assert ref.stride == tuple(t.stride()), where
        assert ref.storage_offset == t.storage_offset(), where
    ours, theirs = ref.read(), expected_values(t)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
    assert ours.tobytes() == theirs.tobytes(), where


def flatten(obj: Any, path: tuple[str, ...] = ()) -> list[tuple[str, torch.Tensor]]:
    """Tensors of a torch.load result with the dotted paths TorchFile.tensors() uses (recursive:
    test data is shallow)."""
    if isinstance(obj, torch.Tensor):
        return [(".".join(path), obj)]
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in flatten(v, path + (str(k),))]
    if isinstance(obj, (list, tuple)):
        return [item for i, v in enumerate(obj) for item in flatten(v, path + (str(i),))]
    return []
