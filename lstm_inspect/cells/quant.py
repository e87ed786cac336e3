"""How a block is stored when its tensor is quantized (or kept as float16 for TFLite's DEQUANTIZE): the
stored dtype, and the scales and zero points that apply to the block itself, along the block's own axis.

A per-channel tensor's block has one scale per channel it selects (a (4u, in) TFLite FC weight quantized
along its rows gives each gate block u scales, on the block's last axis once it is transposed to x @ W).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from lstm_inspect.cells.core import Block, Direction, Transform


def block_storage(block: Block) -> dict[str, Any]:
    """{"stored_dtype"} plus, for a quantized source, {"scale", "zero_point", "axis"} of this block
    (axis None: one scale for the whole block)."""
    source = block.source
    out: dict[str, Any] = {"stored_dtype": source.dtype}
    q = source.quantization
    if q is None:
        return out
    if q.axis is None or len(q.scale) == 1:
        out.update(scale=[float(q.scale[0])], zero_point=[int(q.zero_point[0])], axis=None)
        return out
    channels, axis = _selected_channels(block, q.axis)
    out.update(scale=[float(q.scale[c]) for c in channels], zero_point=[int(q.zero_point[c]) for c in channels],
               axis=axis)
    return out


def _selected_channels(block: Block, axis: int) -> tuple[list[int], int | None]:
    """The source channels (along `axis`) the block selects, and the block axis they run along."""
    shape = block.source.shape
    selection = block.selection
    index = selection if isinstance(selection, tuple) else (() if selection is Ellipsis else (selection,))
    picked = index[axis] if axis < len(index) else slice(None)
    channels = np.arange(shape[axis])[picked]
    if np.ndim(channels) == 0:
        return [int(channels)], None
    kept = [k for k in range(len(shape)) if not (k < len(index) and isinstance(index[k], (int, np.integer)))]
    where = kept.index(axis)
    if block.transform is Transform.TRANSPOSE:
        where = len(kept) - 1 - where
    elif block.transform is Transform.CUDNN_KERNEL:
        return [int(c) for c in channels], None  # a scrambled view: no single block axis
    return [int(c) for c in channels], where


def is_stored_quantized(d: Direction) -> bool:
    """Whether the direction's JSON gets a per-block `quantization` entry: an affine-quantized block, or a
    TFLite float16 block (TFLite's float16 quantization, dequantized at run time)."""
    return any(b.source.quantization is not None for b in d.blocks) or (
        d.source_layout.startswith("tflite-") and any(b.source.dtype == "float16" for b in d.blocks))


def direction_storage(d: Direction) -> dict[str, dict[str, Any]] | None:
    """block name -> block_storage, when the direction is quantized (see is_stored_quantized), else None."""
    if not is_stored_quantized(d):
        return None
    return {b.name: block_storage(b) for b in d.blocks}
