"""The framework-neutral view of a recurrent cell: a `Direction` and its per-gate `Block`s.

A `Direction` is one recurrent cell as it computes: a plain LSTM, one side of a Bidirectional, one
cell of a stacked RNN, one layer of a multi-layer `torch.nn.LSTM`. Its blocks are lazy views in the
canonical math layout (`x @ W`, Keras's): a slice of a stored tensor plus the transform that undoes
the storage layout (see `layouts.py`). Gate names are canonical: LSTM `i f c o`, GRU `z r h`;
each framework's own letters (TF1 `j`, PyTorch `g`/`n`) are mapped in the layout tables only.

Block names: `W_<g>` input kernel, `U_<g>` recurrent kernel, `b_<g>` input-side bias, `bU_<g>` a
second (recurrent-side) bias; SimpleRNN `W`, `U`, `b`. Optional extras of other frameworks:
`P` projection (units, projection_size), `bP` its bias, `p_i p_f p_o` peepholes, `ln_<g>` layer
normalisation coefficients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from lstm_inspect.model import Weight


class CellKind(str, Enum):
    LSTM = "LSTM"
    GRU = "GRU"
    SIMPLE_RNN = "SimpleRNN"
    CONV_LSTM = "ConvLSTM"


GATES: dict[CellKind, tuple[str, ...]] = {
    CellKind.LSTM: ("i", "f", "c", "o"),
    CellKind.GRU: ("z", "r", "h"),
    CellKind.SIMPLE_RNN: (),
    CellKind.CONV_LSTM: ("i", "f", "c", "o"),
}

GATE_MEANING = {
    "i": "input gate", "f": "forget gate", "c": "cell candidate", "o": "output gate",
    "z": "update gate", "r": "reset gate", "h": "candidate state",
}


class Transform(str, Enum):
    """How a block's stored slice becomes the `x @ W` matrix."""

    NONE = "none"
    CUDNN_KERNEL = "cudnn_kernel"      # cuDNN's (H, I) row-major buffer viewed as (I, H)
    TRANSPOSE = "transpose"            # stored as `W x` (PyTorch, ONNX, TFLite, cuDNN's recurrent block)


@dataclass(frozen=True)
class Block:
    """One gate's W, U or b (or bU, P, a peephole...) in the canonical layout, read lazily."""

    name: str
    shape: tuple[int, ...]
    source: Weight
    selection: Any = Ellipsis
    transform: Transform = Transform.NONE

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype(self) -> str:
        """The dtype of the values `read()` returns: the stored one, or float32 for bfloat16 and
        quantized weights (NumPy has no bfloat16; quantized blocks are read dequantized)."""
        return self.source.value_dtype

    def read(self) -> np.ndarray:
        data = np.asarray(self.source.read_values(self.selection))
        if self.transform is Transform.CUDNN_KERNEL:
            data = data.reshape(self.shape[1], self.shape[0]).T
        elif self.transform is Transform.TRANSPOSE:
            data = data.T
        return np.ascontiguousarray(data)


@dataclass(frozen=True)
class Direction:
    """One recurrent cell as it computes, with its per-gate blocks and what the file says of it.

    Fields other frameworks need and Keras files leave empty: `projection_size` (LSTM with a
    projection: the output and h have this size, the cell state `units`), `forget_bias` (added at
    run time, not stored: TF1 cells), `cell_clip` / `proj_clip`, `gate_clip` (ONNX).
    """

    path: str
    kind: CellKind
    class_name: str
    units: int
    input_dim: int
    blocks: tuple[Block, ...]
    use_bias: bool
    reset_after: bool | None = None
    activation: str | None = None
    recurrent_activation: str | None = None
    return_sequences: bool | None = None
    return_state: bool | None = None
    stateful: bool | None = None
    go_backwards: bool | None = None
    kernel_size: tuple[int, ...] | None = None
    output_shape: tuple[int | None, ...] | None = None
    state_shapes: tuple[tuple[int | None, ...], ...] | None = None
    corrections: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    layer_name: str = ""
    source_layout: str = "keras-lstm"  # name of the stored gate layout (cells.layouts.LAYOUTS)
    projection_size: int | None = None
    forget_bias: float | None = None
    cell_clip: float | None = None
    proj_clip: float | None = None
    # ONNX `clip`: every gate's pre-activation (input of the f and g activations) clipped to
    # [-gate_clip, gate_clip] as onnxruntime computes it; the cell state itself is not clipped.
    gate_clip: float | None = None

    @property
    def gates(self) -> tuple[str, ...]:
        return GATES[self.kind]

    @property
    def params(self) -> int:
        return sum(b.size for b in self.blocks)

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    def has_block(self, name: str) -> bool:
        return any(b.name == name for b in self.blocks)

    @property
    def is_cudnn(self) -> bool:
        return self.source_layout.startswith("cudnn")


_BLOCK_KIND_ORDER = {"W": 0, "U": 1, "b": 2, "bU": 3, "p": 4, "ln": 5, "P": 6, "bP": 7}
_GATE_ORDER = "ifcozrh"


def block_order(name: str) -> tuple[int, int]:
    """W of every gate, then U, b, bU, peepholes, layer norm, projection: gates in canonical order."""
    kind, _, gate = name.partition("_")
    return _BLOCK_KIND_ORDER[kind], _GATE_ORDER.index(gate) if gate else 0
