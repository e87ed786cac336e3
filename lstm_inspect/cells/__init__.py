"""Recurrent cells: from a neutral `Model` to its `Direction`s and their per-gate `Block`s.

Each framework has its own cell builder (which layers or tensors make a cell, and which gate
layout of `layouts.py` they are stored in); `directions()` picks it by `Model.framework`.
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable, Sequence

from lstm_inspect.cells.core import GATE_MEANING, GATES, Block, CellKind, Direction, Transform
from lstm_inspect.errors import UsageError
from lstm_inspect.model import Framework, Model

__all__ = ["directions", "select", "with_forget_bias", "Block", "CellKind", "Direction", "Transform", "GATES", "GATE_MEANING"]


def directions(model: Model) -> list[Direction]:
    """Every recurrent direction of the model, in model order, with its path."""
    return _builder(model.framework)(model)


def _builder(framework: Framework) -> Callable[[Model], list[Direction]]:
    if framework is Framework.KERAS:
        from lstm_inspect.cells.keras import keras_directions
        return keras_directions
    if framework is Framework.ONNX:
        from lstm_inspect.cells.onnx import onnx_directions
        return onnx_directions
    if framework is Framework.TENSORFLOW:
        from lstm_inspect.cells.tf import tf_directions
        return tf_directions
    if framework is Framework.TFLITE:
        from lstm_inspect.cells.tflite import tflite_directions
        return tflite_directions
    raise NotImplementedError(f"no cell builder for {framework.value} models")


def with_forget_bias(dirs: Sequence[Direction], value: float | None) -> list[Direction]:
    """`--forget-bias F`: the run-time forget bias of the cells that add one (TF1 LSTM cells), as the
    user states it; the stored b_f stays as stored. A usage error when no selected cell adds one."""
    if value is None:
        return list(dirs)
    if not any(d.forget_bias is not None for d in dirs):
        raise UsageError("--forget-bias applies to cells that add a forget bias at run time (TF1 LSTM cells); "
                         "none is selected")
    from lstm_inspect.cells.tf import with_forget_bias as replace_bias
    return replace_bias(list(dirs), value)


def select(dirs: Sequence[Direction], patterns: Iterable[str]) -> list[Direction]:
    """Directions whose path matches any glob (a pattern naming a layer selects all its sides/cells)."""
    patterns = list(patterns)
    if not patterns:
        return list(dirs)
    chosen = [d for d in dirs if any(_matches(d.path, p) for p in patterns)]
    if not chosen:
        known = ", ".join(d.path for d in dirs) or "none"
        raise UsageError(f"no recurrent layer matches {', '.join(patterns)} (recurrent layers: {known})")
    return chosen


def _matches(path: str, pattern: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
