"""Gate layouts as data: how each framework stores a recurrent cell's weights.

One `GateLayout` per source layout says which stored tensor holds which blocks (W, U, b, bU, P,
peepholes), along which axis the gates are fused, in which order, how two block kinds share one
tensor, and which transform turns a stored slice into the canonical `x @ W` block. The same table
is read both ways: `cut()` makes lazy blocks from a file's tensors (summary, split-gates), `fuse()`
builds a framework's tensors from blocks (convert). Canonical gates are LSTM `i f c o`, GRU `z r h`;
a framework's own letters (PyTorch `g`, `n`; TF1 `j`) appear only in `native`.

Adding a framework's layout is a new table here; its reader's cell builder picks the table and maps
the table's tensor roles to the file's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Sequence

import numpy as np

from lstm_inspect.cells.core import GATES, Block, CellKind, Transform
from lstm_inspect.errors import CorruptModelError
from lstm_inspect.model import Weight


class Axis(str, Enum):
    COLUMNS = "columns"  # gates side by side on the last axis: (..., n·units), the `x @ W` layout
    ROWS = "rows"        # gates stacked on the first axis: (n·units, ...), the `W x` layout


class Stack(str, Enum):
    """How a tensor that holds two block kinds arranges them."""

    SINGLE = "single"    # one block kind
    ROWS = "rows"        # [x; h] rows: the W rows, then the U rows (TF1 kernels (input + units, n·units))
    FLAT = "flat"        # [b; bU] end to end on the fused axis: (2·n·units,) (cuDNN, ONNX B)
    LEADING = "leading"  # one row per kind: (2, n·units) (Keras GRU reset_after=True)


_BIAS_KINDS = frozenset({"b", "bU", "p", "ln", "bP"})


@dataclass(frozen=True)
class Part:
    """One stored tensor of a layout and the blocks cut from it."""

    tensor: str                  # the tensor's role, as the framework names it ("kernel", "weight_ih", "W")
    kinds: tuple[str, ...]       # block kinds it holds: ("W",), ("U",), ("b",), ("b", "bU"), ("W", "U"), ("P",)
    gates: tuple[str, ...]       # canonical gates in stored order on the fused axis ("" = the one block)
    axis: Axis = Axis.COLUMNS
    stack: Stack = Stack.SINGLE
    transform: Transform = Transform.NONE
    optional: bool = False       # absent without a bias, projection, peepholes...
    whole: bool = False          # the block is the whole tensor (projection)

    def base_ndim(self) -> int:
        vector = all(k in _BIAS_KINDS for k in self.kinds)
        return (1 if vector else 2) + (1 if self.stack is Stack.LEADING else 0)


@dataclass(frozen=True)
class GateLayout:
    name: str
    kind: CellKind
    parts: tuple[Part, ...]
    native: Mapping[str, str] = field(default_factory=dict)  # canonical gate -> the framework's letter
    description: str = ""

    @property
    def gate_order(self) -> tuple[str, ...]:
        """Stored order of the fused gates, canonical letters."""
        return self.parts[0].gates if len(self.parts[0].gates) > 1 else GATES[self.kind]

    @property
    def native_order(self) -> str:
        """The stored gate order in the framework's own letters, e.g. "i, f, g, o"."""
        return ", ".join(self.native.get(g, g) for g in self.gate_order)

    def part(self, tensor: str) -> Part:
        return next(p for p in self.parts if p.tensor == tensor)


def block_name(kind: str, gate: str) -> str:
    return f"{kind}_{gate}" if gate else kind


def tensor_of(layout: GateLayout, block: str) -> str | None:
    """The tensor role (as the layout names it) that holds a block, e.g. TF1 W_f → "kernel"."""
    for part in layout.parts:
        names = {part.kinds[0]} if part.whole else {block_name(k, g) for k in part.kinds for g in part.gates}
        if block in names:
            return part.tensor
    return None


@dataclass(frozen=True)
class Sizes:
    """The sizes a layout's blocks are cut to."""

    units: int
    input_dim: int
    recurrent_dim: int | None = None  # rows of U: the projection size when there is one, else units

    @property
    def rows_of_u(self) -> int:
        return self.units if self.recurrent_dim is None else self.recurrent_dim

    def rows(self, kind: str) -> int:
        return self.input_dim if kind == "W" else self.rows_of_u


# --- reading: tensors -> blocks ------------------------------------------------------------------

def cut(layout: GateLayout, tensors: Mapping[str, Weight], sizes: Sizes, *, path: str = "",
        direction: int | None = None) -> list[Block]:
    """Lazy blocks of one direction from the file's tensors (by the layout's tensor roles).

    Extra leading axes of a tensor (ConvLSTM's spatial kernel axes) are kept in the block shape;
    with `direction`, the first extra axis instead selects that direction (ONNX's [directions, ...]).
    """
    blocks: list[Block] = []
    for part in layout.parts:
        weight = tensors.get(part.tensor)
        if weight is None:
            if part.optional:
                continue
            raise CorruptModelError(f"{path}: the {part.tensor} tensor of {layout.name} is missing")
        blocks.extend(_cut_part(part, weight, sizes, path, direction))
    return blocks


def _cut_part(part: Part, weight: Weight, sizes: Sizes, path: str, direction: int | None) -> list[Block]:
    extra = len(weight.shape) - part.base_ndim()
    if extra < (1 if direction is not None else 0):
        raise CorruptModelError(f"{path}: {weight.name} has shape {weight.shape}, too few axes")
    lead: tuple = ()
    lead_shape: tuple[int, ...] = ()
    for axis in range(extra):
        if axis == 0 and direction is not None:
            if not 0 <= direction < weight.shape[0]:
                raise CorruptModelError(f"{path}: {weight.name} has no direction {direction}")
            lead += (direction,)
        else:
            lead += (slice(None),)
            lead_shape += (weight.shape[axis],)
    base = weight.shape[extra:]
    if part.whole:
        shape = base[::-1] if part.transform is Transform.TRANSPOSE else base
        return [Block(part.kinds[0], lead_shape + tuple(shape), weight, lead + (slice(None),) * len(base)
                      if lead else Ellipsis, part.transform)]
    _check_shape(part, weight, base, sizes, path)
    out = []
    for g, gate in enumerate(part.gates):
        for k, kind in enumerate(part.kinds):
            index = _index(part, g, k, kind, sizes)
            vector = kind in _BIAS_KINDS
            shape = (sizes.units,) if vector else lead_shape + (sizes.rows(kind), sizes.units)
            whole = not lead and _covers(index, base)
            out.append(Block(block_name(kind, gate), shape, weight, Ellipsis if whole else lead + index,
                             part.transform))
    return out


def _index(part: Part, g: int, k: int, kind: str, sizes: Sizes) -> tuple:
    """The selection, within the tensor's base axes, of gate g of block kind k."""
    u, n = sizes.units, len(part.gates)
    slot = g if part.stack is not Stack.FLAT else k * n + g
    fused = slice(slot * u, (slot + 1) * u)
    if part.stack is Stack.LEADING:
        return (k, fused)
    if all(kd in _BIAS_KINDS for kd in part.kinds):
        return (fused,)
    rows = slice(None)
    if part.stack is Stack.ROWS:
        start = 0 if kind == "W" else sizes.input_dim
        rows = slice(start, start + sizes.rows(kind))
    return (rows, fused) if part.axis is Axis.COLUMNS else (fused, rows)


def _covers(index: tuple, base: Sequence[int]) -> bool:
    """Whether a selection is the whole tensor (then read as such: simpler and faster)."""
    return len(index) == len(base) and all(
        isinstance(s, slice) and s.step in (None, 1) and (s.start or 0) == 0 and s.stop in (None, dim)
        for s, dim in zip(index, base))


def expected_shape(part: Part, sizes: Sizes) -> tuple[int, ...]:
    """The base shape (without leading axes) a tensor of this part must have."""
    n, u = len(part.gates), sizes.units
    kinds = len(part.kinds)
    if all(k in _BIAS_KINDS for k in part.kinds):
        if part.stack is Stack.LEADING:
            return (kinds, n * u)
        return (n * u * (kinds if part.stack is Stack.FLAT else 1),)
    rows = sum(sizes.rows(k) for k in part.kinds) if part.stack is Stack.ROWS else sizes.rows(part.kinds[0])
    return (rows, n * u) if part.axis is Axis.COLUMNS else (n * u, rows)


def _check_shape(part: Part, weight: Weight, base: Sequence[int], sizes: Sizes, path: str) -> None:
    want = expected_shape(part, sizes)
    if tuple(base) != want:
        raise CorruptModelError(f"{path}: {weight.name} has shape {tuple(weight.shape)}, expected "
                                f"{want} for {len(part.gates)} gate(s) of {sizes.units} units")


# --- writing: blocks -> tensors ------------------------------------------------------------------

def fuse(layout: GateLayout, blocks: Mapping[str, np.ndarray], sizes: Sizes) -> dict[str, np.ndarray]:
    """The framework's tensors (by role) holding these canonical blocks: the inverse of `cut`.

    A missing second bias (bU) is written as zeros where the target keeps two biases (PyTorch adds
    bias_ih and bias_hh); without any `b` block no bias tensor is written (use_bias=False).
    """
    has_bias = any(name == "b" or name.startswith("b_") for name in blocks)
    out: dict[str, np.ndarray] = {}
    for part in layout.parts:
        if part.whole:
            if part.kinds[0] in blocks:
                block = np.asarray(blocks[part.kinds[0]])
                out[part.tensor] = block.T if part.transform is Transform.TRANSPOSE else block
            continue
        if part.optional and all(k in ("b", "bU") for k in part.kinds) and not has_bias:
            continue
        if part.optional and not all(k in ("b", "bU") for k in part.kinds) and \
                not any(block_name(k, g) in blocks for k in part.kinds for g in part.gates):
            continue
        out[part.tensor] = _fuse_part(part, blocks, sizes)
    return out


def _fuse_part(part: Part, blocks: Mapping[str, np.ndarray], sizes: Sizes) -> np.ndarray:
    def stored(kind: str, gate: str) -> np.ndarray:
        name = block_name(kind, gate)
        if name in blocks:
            value = np.asarray(blocks[name])
        elif kind == "bU":
            value = np.zeros(sizes.units, dtype=np.asarray(blocks[block_name("b", gate)]).dtype)
        else:
            raise CorruptModelError(f"block {name} is missing")
        if part.transform is Transform.TRANSPOSE and value.ndim >= 2:
            return value.T
        if part.transform is Transform.CUDNN_KERNEL:
            return value.T.reshape(value.shape[-2], value.shape[-1])
        return value

    fused_axis = -1 if part.axis is Axis.COLUMNS else 0
    if part.stack is Stack.ROWS:  # per gate [W; U] rows, gates side by side
        row_axis = 0 if part.axis is Axis.COLUMNS else 1
        per_gate = [np.concatenate([stored(k, g) for k in part.kinds], axis=row_axis) for g in part.gates]
        return np.concatenate(per_gate, axis=fused_axis)
    by_kind = [np.concatenate([stored(k, g) for g in part.gates], axis=fused_axis) for k in part.kinds]
    if part.stack is Stack.LEADING:
        return np.stack(by_kind)
    return np.concatenate(by_kind, axis=fused_axis) if len(by_kind) > 1 else by_kind[0]


# --- the tables ----------------------------------------------------------------------------------

def _gates(kind: CellKind) -> tuple[str, ...]:
    return GATES[kind] or ("",)


def _keras(kind: CellKind, name: str, two_biases: bool = False) -> GateLayout:
    g = _gates(kind)
    bias = Part("bias", ("b", "bU"), g, stack=Stack.LEADING, optional=True) if two_biases \
        else Part("bias", ("b",), g, optional=True)
    return GateLayout(name, kind, (Part("kernel", ("W",), g), Part("recurrent_kernel", ("U",), g), bias),
                      description="Keras: kernel (input, n·units) and recurrent_kernel (units, n·units), "
                                  "gates side by side (x @ W)")


def _cudnn(kind: CellKind) -> GateLayout:
    g = _gates(kind)
    return GateLayout(f"cudnn-{kind.value.lower()}", kind, (
        Part("kernel", ("W",), g, transform=Transform.CUDNN_KERNEL),
        Part("recurrent_kernel", ("U",), g, transform=Transform.TRANSPOSE),
        Part("bias", ("b", "bU"), g, stack=Stack.FLAT, optional=True)),
        description="Keras CuDNNLSTM/CuDNNGRU: each kernel gate block is cuDNN's (units, input) buffer, "
                    "each recurrent block transposed; bias = [input-side; recurrent-side]")


def _keras1(kind: CellKind) -> GateLayout:
    g = _gates(kind)
    parts = tuple(Part(block_name(k, gate), (k,), (gate,), optional=(k == "b")) for gate in g for k in "WUb")
    stored = "i, c, f, o" if kind is CellKind.LSTM else ", ".join(g)
    return GateLayout(f"keras1-{kind.value.lower()}", kind, parts,
                      description=f"Keras 1: one array per gate and kind (<layer>_W_i, ...), stored "
                                  f"in the order {stored}")


def _torch(kind: CellKind, gates: tuple[str, ...], native: Mapping[str, str]) -> GateLayout:
    t = Transform.TRANSPOSE
    return GateLayout(f"pytorch-{kind.value.lower()}", kind, (
        Part("weight_ih", ("W",), gates, Axis.ROWS, transform=t),
        Part("weight_hh", ("U",), gates, Axis.ROWS, transform=t),
        Part("bias_ih", ("b",), gates, Axis.ROWS, optional=True),
        Part("bias_hh", ("bU",), gates, Axis.ROWS, optional=True),
        Part("weight_hr", ("P",), ("",), transform=t, optional=True, whole=True)),
        native=native,
        description="PyTorch: weight_ih (n·H, input) and weight_hh (n·H, H) stacked by gate (W x); "
                    "bias_ih and bias_hh kept apart; weight_hr (proj, H) with proj_size")


def _onnx(kind: CellKind, gates: tuple[str, ...]) -> GateLayout:
    t = Transform.TRANSPOSE
    parts = (Part("W", ("W",), gates, Axis.ROWS, transform=t),
             Part("R", ("U",), gates, Axis.ROWS, transform=t),
             Part("B", ("b", "bU"), gates, Axis.ROWS, Stack.FLAT, optional=True))
    if kind is CellKind.LSTM:
        parts += (Part("P", ("p",), ("i", "o", "f"), Axis.ROWS, optional=True),)
    return GateLayout(f"onnx-{kind.value.lower()}", kind, parts,
                      description="ONNX: W [directions, n·H, input], R [directions, n·H, H] (W x); "
                                  "B [directions, 2·n·H] = [Wb; Rb]; P [directions, 3H] peepholes i, o, f")


def _tf1_lstm(name: str, native: Mapping[str, str], what: str) -> GateLayout:
    """TF1 LSTM cells: kernel (input + recurrent, 4·units) with rows [x; h] (h has the projection's
    size when there is one), gates side by side in the order i, j, f, o (j is the candidate)."""
    gates = ("i", "c", "f", "o")
    return GateLayout(name, CellKind.LSTM, (
        Part("kernel", ("W", "U"), gates, stack=Stack.ROWS),
        Part("bias", ("b",), gates, optional=True),
        Part("w_i_diag", ("p",), ("i",), optional=True),
        Part("w_f_diag", ("p",), ("f",), optional=True),
        Part("w_o_diag", ("p",), ("o",), optional=True),
        Part("projection/kernel", ("P",), ("",), optional=True, whole=True)),
        native=native,
        description=f"{what}: kernel (input + h, 4·units), rows [x; h], used as [x, h] @ kernel; gates "
                    f"{', '.join(native.get(g, g) for g in gates)}; optional peepholes w_i_diag, w_f_diag, "
                    "w_o_diag (units,) and projection/kernel (units, num_proj); forget_bias added at run "
                    "time, not stored")


def _tf1_gru() -> GateLayout:
    """TF1 GRUCell (and contrib GRUBlockCell, mapped by shape): gates/kernel (input + units, 2·units)
    holding r, u (u is Keras's z), and candidate/kernel (input + units, units) applied to [x; r ⊙ h]."""
    return GateLayout("tf1-gru", CellKind.GRU, (
        Part("gates/kernel", ("W", "U"), ("r", "z"), stack=Stack.ROWS),
        Part("gates/bias", ("b",), ("r", "z"), optional=True),
        Part("candidate/kernel", ("W", "U"), ("h",), stack=Stack.ROWS),
        Part("candidate/bias", ("b",), ("h",), optional=True)),
        native={"z": "u"},
        description="TF1 GRUCell: gates/kernel (input + units, 2·units), rows [x; h], gates r, u (u = z); "
                    "candidate/kernel (input + units, units) on [x; r ⊙ h] (Keras reset_after=False)")


def _tf1_rnn() -> GateLayout:
    return GateLayout("tf1-rnn", CellKind.SIMPLE_RNN, (
        Part("kernel", ("W", "U"), ("",), stack=Stack.ROWS),
        Part("bias", ("b",), ("",), optional=True)),
        description="TF1 BasicRNNCell: kernel (input + units, units), rows [x; h]")


def _tflite_lstm() -> GateLayout:
    """TFLite's LSTM operators (UNIDIRECTIONAL_SEQUENCE_LSTM, BIDIRECTIONAL_SEQUENCE_LSTM per side, the
    one-step LSTM with the full kernel): one tensor per gate and kind, named by the operator's input roles."""
    t = Transform.TRANSPOSE
    names = {"i": "input", "f": "forget", "c": "cell", "o": "output"}
    parts = tuple(Part(f"input_to_{names[g]}_weights", ("W",), (g,), Axis.ROWS, transform=t, optional=g == "i")
                  for g in "ifco")
    parts += tuple(Part(f"recurrent_to_{names[g]}_weights", ("U",), (g,), Axis.ROWS, transform=t,
                        optional=g == "i") for g in "ifco")
    parts += tuple(Part(f"{names[g]}_gate_bias", ("b",), (g,), Axis.ROWS, optional=True) for g in "ifco")
    parts += tuple(Part(f"cell_to_{names[g]}_weights", ("p",), (g,), Axis.ROWS, optional=True) for g in "ifo")
    parts += tuple(Part(f"{names[g]}_layer_norm_coefficients", ("ln",), (g,), Axis.ROWS, optional=True)
                   for g in "ifco")
    parts += (Part("projection_weights", ("P",), ("",), transform=t, optional=True, whole=True),
              Part("projection_bias", ("bP",), ("",), optional=True, whole=True))
    return GateLayout("tflite-lstm", CellKind.LSTM, parts,
                      description="TFLite LSTM operator: one tensor per gate, input_to_<gate>_weights (units, "
                                  "input) and recurrent_to_<gate>_weights (units, output) (W x), <gate>_gate_bias "
                                  "(units,); optional peepholes cell_to_<gate>_weights, layer-norm coefficients, "
                                  "projection_weights (output, units) and projection_bias; no input gate with "
                                  "CIFG")


def _tflite_fc(kind: CellKind, name: str, recurrent: tuple[tuple[str, tuple[str, ...]], ...],
               two_biases: bool = False) -> GateLayout:
    """A cell TFLite computes with FULLY_CONNECTED ops (WHILE loop bodies, unrolled graphs): the FC weights
    are the Keras kernels transposed, gates stacked on the rows in Keras order."""
    t, g = Transform.TRANSPOSE, _gates(kind)
    parts = (Part("kernel", ("W",), g, Axis.ROWS, transform=t),)
    parts += tuple(Part(tensor, ("U",), gates, Axis.ROWS, transform=t) for tensor, gates in recurrent)
    parts += (Part("bias", ("b",), g, Axis.ROWS, optional=True),)
    if two_biases:
        parts += (Part("recurrent_bias", ("bU",), g, Axis.ROWS, optional=True),)
    split = " split in two FC weights, (2·units, units) for z, r and (units, units) for h" if len(recurrent) > 1 \
        else ""
    return GateLayout(name, kind, parts,
                      description="TFLite FULLY_CONNECTED cell (WHILE loop body or unrolled graph): kernel "
                                  "(n·units, input) = Keras kernel.T and recurrent kernel (n·units, units) = "
                                  f"Keras recurrent_kernel.T{split}, gates in Keras order on the rows; bias "
                                  "(n·units,)" + (" and the recurrent bias (n·units,)" if two_biases else ""))


def _tflite_tables() -> dict[str, GateLayout]:
    t = Transform.TRANSPOSE
    rnn = GateLayout("tflite-rnn", CellKind.SIMPLE_RNN, (
        Part("weights", ("W",), ("",), Axis.ROWS, transform=t),
        Part("recurrent_weights", ("U",), ("",), Axis.ROWS, transform=t),
        Part("bias", ("b",), ("",), Axis.ROWS, optional=True)),
        description="TFLite RNN operator (UNIDIRECTIONAL_SEQUENCE_RNN, BIDIRECTIONAL_SEQUENCE_RNN per side, "
                    "RNN): weights (units, input), recurrent_weights (units, units) (W x), bias (units,)")
    basic = GateLayout("tflite-lstm-basic", CellKind.LSTM, (
        Part("weights", ("W", "U"), ("i", "c", "f", "o"), Axis.ROWS, Stack.ROWS, transform=t),
        Part("biases", ("b",), ("i", "c", "f", "o"), Axis.ROWS, optional=True)),
        description="TFLite LSTM operator with kernel_type BASIC: one weight (4·units, input + units) over "
                    "concat(input, previous output), gates stored i, c, f, o; biases (4·units,)")
    lstm, gru, srnn = CellKind.LSTM, CellKind.GRU, CellKind.SIMPLE_RNN
    tables = (_tflite_lstm(), rnn, basic,
              _tflite_fc(lstm, "tflite-fc-lstm", (("recurrent_kernel", GATES[lstm]),)),
              _tflite_fc(gru, "tflite-fc-gru-reset-after", (("recurrent_kernel", GATES[gru]),), two_biases=True),
              _tflite_fc(gru, "tflite-fc-gru", (("recurrent_kernel_zr", ("z", "r")), ("recurrent_kernel_h", ("h",)))),
              _tflite_fc(srnn, "tflite-fc-simplernn", (("recurrent_kernel", ("",)),)))
    return {layout.name: layout for layout in tables}


KERAS = {CellKind.LSTM: _keras(CellKind.LSTM, "keras-lstm"),
         CellKind.GRU: _keras(CellKind.GRU, "keras-gru"),
         CellKind.SIMPLE_RNN: _keras(CellKind.SIMPLE_RNN, "keras-simplernn"),
         CellKind.CONV_LSTM: _keras(CellKind.CONV_LSTM, "keras-convlstm")}
KERAS_GRU_RESET_AFTER = _keras(CellKind.GRU, "keras-gru-reset-after", two_biases=True)
CUDNN = {CellKind.LSTM: _cudnn(CellKind.LSTM), CellKind.GRU: _cudnn(CellKind.GRU)}
KERAS1 = {k: _keras1(k) for k in (CellKind.LSTM, CellKind.GRU, CellKind.SIMPLE_RNN)}
PYTORCH = {CellKind.LSTM: _torch(CellKind.LSTM, ("i", "f", "c", "o"), {"c": "g"}),
           CellKind.GRU: _torch(CellKind.GRU, ("r", "z", "h"), {"h": "n"}),
           CellKind.SIMPLE_RNN: _torch(CellKind.SIMPLE_RNN, ("",), {})}
ONNX = {CellKind.LSTM: _onnx(CellKind.LSTM, ("i", "o", "f", "c")),
        CellKind.GRU: _onnx(CellKind.GRU, ("z", "r", "h")),
        CellKind.SIMPLE_RNN: _onnx(CellKind.SIMPLE_RNN, ("",))}

TF1 = {"lstm": _tf1_lstm("tf1-lstm", {"c": "j"}, "TF1 BasicLSTMCell / LSTMCell / contrib LSTMBlockCell"),
       "cudnn-compatible-lstm": _tf1_lstm("tf1-cudnn-compatible-lstm", {},
                                          "contrib CudnnCompatibleLSTMCell (CudnnLSTM's canonical copy)"),
       "gru": _tf1_gru(),
       "rnn": _tf1_rnn()}

LAYOUTS: dict[str, GateLayout] = {
    layout.name: layout
    for table in (KERAS, CUDNN, KERAS1, PYTORCH, ONNX, TF1)
    for layout in table.values()
}
LAYOUTS[KERAS_GRU_RESET_AFTER.name] = KERAS_GRU_RESET_AFTER
TFLITE = _tflite_tables()  # by layout name (cells/tflite.py picks them)
LAYOUTS.update(TFLITE)
