"""Recurrent cells: which layers are recurrent, their gate layout, and every per-gate block.

A `Direction` is one recurrent cell as it computes: a plain LSTM, one side of a Bidirectional, or
one cell of a stacked RNN. Its blocks are lazy views in the Keras math layout (`x @ W`): a slice of a
fused weight, plus the transform that undoes a storage quirk (CuDNN's scrambled kernels, Keras 1's
one-array-per-gate files).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import CorruptModelError
from .model import Layer, Model, Weight


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

_CLASS_KIND = {
    "LSTM": CellKind.LSTM, "LSTMCell": CellKind.LSTM, "CuDNNLSTM": CellKind.LSTM,
    "PeepholeLSTMCell": CellKind.LSTM,
    "GRU": CellKind.GRU, "GRUCell": CellKind.GRU, "CuDNNGRU": CellKind.GRU,
    "SimpleRNN": CellKind.SIMPLE_RNN, "SimpleRNNCell": CellKind.SIMPLE_RNN,
    "ConvLSTM1D": CellKind.CONV_LSTM, "ConvLSTM2D": CellKind.CONV_LSTM, "ConvLSTM3D": CellKind.CONV_LSTM,
    "ConvLSTMCell": CellKind.CONV_LSTM, "ConvLSTM1DCell": CellKind.CONV_LSTM,
    "ConvLSTM2DCell": CellKind.CONV_LSTM, "ConvLSTM3DCell": CellKind.CONV_LSTM,
}
CUDNN_CLASSES = frozenset({"CuDNNLSTM", "CuDNNGRU"})


class Transform(str, Enum):
    NONE = "none"
    CUDNN_KERNEL = "cudnn_kernel"      # cuDNN's (H, I) row-major buffer viewed as (I, H)
    TRANSPOSE = "transpose"            # cuDNN's recurrent block is stored transposed


@dataclass(frozen=True)
class Block:
    """One gate's W, U or b (or bU) in the Keras math layout, read lazily from its source weight."""

    name: str
    shape: tuple[int, ...]
    source: Weight
    selection: Any = Ellipsis
    transform: Transform = Transform.NONE

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def read(self) -> np.ndarray:
        data = np.asarray(self.source.read(self.selection))
        if self.transform is Transform.CUDNN_KERNEL:
            data = data.reshape(self.shape[1], self.shape[0]).T
        elif self.transform is Transform.TRANSPOSE:
            data = data.T
        return np.ascontiguousarray(data)


@dataclass(frozen=True)
class Direction:
    """One recurrent cell as it computes, with its per-gate blocks."""

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

    @property
    def gates(self) -> tuple[str, ...]:
        return GATES[self.kind]

    @property
    def params(self) -> int:
        return sum(b.size for b in self.blocks)

    def block(self, name: str) -> Block:
        return next(b for b in self.blocks if b.name == name)

    @property
    def is_cudnn(self) -> bool:
        return self.class_name in CUDNN_CLASSES


def kind_of(class_name: str) -> CellKind | None:
    return _CLASS_KIND.get(class_name)


# --- walking the layer tree --------------------------------------------------------------------

def directions(model: Model) -> list[Direction]:
    """Every recurrent direction of the model, in layer order, with its path."""
    out: list[Direction] = []
    shapes = _input_shapes(model)
    for layer in model.layers:
        out.extend(_walk(layer, layer.name, shapes.get(id(layer)), model, shapes))
    return out


def _walk(layer: Layer, path: str, input_shape, model: Model, shapes: dict) -> Iterator[Direction]:
    kind = kind_of(layer.class_name)
    if kind is not None and (layer.weights or not layer.children):
        if layer.weights:
            yield _direction(layer, layer.config, path, kind, input_shape, model)
        return
    if layer.class_name == "Bidirectional":
        for child in layer.children:
            yield from _walk(child, f"{path}/{child.role}", input_shape, model, shapes)
        return
    cells = [c for c in layer.children if c.role.startswith("cell")]
    if cells:
        if len(cells) == 1 and cells[0].role == "cell":
            cell = cells[0]
            k = kind_of(cell.class_name)
            if k is not None and cell.weights:
                config = dict(cell.config or {}, **_rnn_flags(layer.config))
                yield _direction(cell, config, path, k, input_shape, model, class_name=layer.class_name)
            return
        # Keras returns the last cell's output for the whole stack; each cell has its own state.
        layer_out = _rnn_outputs(layer, input_shape) if input_shape is not None else None
        for cell in cells:
            k = kind_of(cell.class_name)
            if k is not None and cell.weights:
                d = _direction(cell, dict(cell.config or {}, **_rnn_flags(layer.config)),
                               f"{path}/{cell.role}", k, input_shape, model)
                if layer_out is not None:
                    d = replace(d, output_shape=layer_out[0])
                yield d
        return
    for child in layer.children:
        child_path = path if child.role == "layer" else f"{path}/{child.name}"
        child_shape = input_shape if child.role == "layer" else shapes.get(id(child))
        yield from _walk(child, child_path, child_shape, model, shapes)


def _rnn_flags(config: Mapping | None) -> dict:
    keys = ("return_sequences", "return_state", "stateful", "go_backwards")
    return {k: config[k] for k in keys if config and k in config}


# --- one direction -----------------------------------------------------------------------------

_KERAS1_NAME = re.compile(r"(?:^|_)(?P<kind>[WUb])(?:_(?P<gate>[a-z]))?$")


def _direction(layer: Layer, config: Mapping | None, path: str, kind: CellKind,
               input_shape, model: Model, class_name: str | None = None) -> Direction:
    class_name = class_name or layer.class_name
    config = config or {}
    per_gate = _keras1_arrays(layer.weights, kind)
    if per_gate is not None:
        blocks, units, input_dim, corrections = _keras1_blocks(per_gate, kind, path)
        kernel_size = None
    else:
        blocks, units, input_dim, kernel_size, corrections = _fused_blocks(layer, kind, path)
    _check_config_units(config, units, path)
    declared_kernel = config.get("kernel_size")
    if kernel_size and declared_kernel is not None and _tuple(declared_kernel, len(kernel_size)) != kernel_size:
        raise CorruptModelError(f"{path}: the config says kernel_size {declared_kernel} but the weights "
                                f"hold {list(kernel_size)}")
    use_bias = any(b.name.startswith("b") for b in blocks)
    reset_after = None
    if kind is CellKind.GRU:
        if use_bias:  # the bias shape decides: (2, 3H) or cuDNN's 6H is reset_after=True
            reset_after = any(b.name.startswith("bU_") for b in blocks)
        elif config:  # no bias: only the config can tell; before the option existed it was False
            reset_after = bool(config.get("reset_after", False))
    activation = config.get("activation")
    recurrent = config.get("recurrent_activation", config.get("inner_activation"))
    if kind is CellKind.SIMPLE_RNN:
        recurrent = None
    elif recurrent is None and config and "recurrent_activation" not in config and \
            _is_keras1(model):
        recurrent = "hard_sigmoid"
    flags = {k: (bool(config[k]) if k in config else None)
             for k in ("return_sequences", "return_state", "stateful", "go_backwards")}
    if class_name in CUDNN_CLASSES and activation is None:
        activation, recurrent = "tanh", "sigmoid"  # fixed by cuDNN
    output_shape, state_shapes = _shapes(kind, units, config, input_shape, flags, kernel_size)
    notes = list(corrections)
    if recurrent == "hard_sigmoid":
        notes.append("recurrent_activation is hard_sigmoid: Keras 2 computes clip(0.2x+0.5, 0, 1), "
                     "Keras 3 relu6(x+3)/6")
    return Direction(path=path, kind=kind, class_name=class_name, units=units, input_dim=input_dim,
                     blocks=tuple(sorted(blocks, key=_block_order)), use_bias=use_bias, reset_after=reset_after,
                     activation=_act_name(activation), recurrent_activation=_act_name(recurrent),
                     kernel_size=kernel_size, output_shape=output_shape, state_shapes=state_shapes,
                     corrections=tuple(corrections), notes=tuple(notes), layer_name=layer.name,
                     **flags)


_BLOCK_KIND_ORDER = {"W": 0, "U": 1, "b": 2, "bU": 3}


def _block_order(block: Block) -> tuple[int, int]:
    """W of every gate, then U, then b, then bU: gates in file order within each."""
    kind, _, gate = block.name.partition("_")
    gates = "ifcozrh"
    return _BLOCK_KIND_ORDER[kind], gates.index(gate) if gate else 0


def _act_name(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping):  # Keras 3 may serialise activations as objects
        inner = value.get("config")
        name = inner.get("name") if isinstance(inner, Mapping) else None
        return str(name or value.get("class_name"))
    return str(value)


def _is_keras1(model: Model) -> bool:
    version = model.keras_version or ""
    return version.startswith("1.") or version.startswith("2.") and not version.endswith("-tf")


def _check_config_units(config: Mapping, units: int, path: str) -> None:
    declared = config.get("units", config.get("output_dim", config.get("filters")))
    if declared is None:
        return
    if not isinstance(declared, int) or isinstance(declared, bool) or declared <= 0:
        raise CorruptModelError(f"{path}: units in the config is not a positive integer ({declared!r})")
    if declared != units:
        raise CorruptModelError(f"{path}: the config says {declared} units but the weights hold {units}")


def _roles(weights: Sequence[Weight]) -> tuple[Weight, Weight, Weight | None]:
    """kernel, recurrent kernel, bias: by name when the file names them, else by position."""
    by_name = {w.short_name: w for w in weights}
    if "kernel" in by_name and "recurrent_kernel" in by_name:
        return by_name["kernel"], by_name["recurrent_kernel"], by_name.get("bias")
    if len(weights) in (2, 3):
        return weights[0], weights[1], weights[2] if len(weights) == 3 else None
    raise CorruptModelError(f"expected kernel, recurrent_kernel and bias, found "
                            f"{', '.join(w.name for w in weights) or 'no weights'}")


def _check_numeric(weights: Sequence[Weight | None], path: str) -> None:
    for w in weights:
        if w is not None and w.dtype != "bfloat16" and _kind(w.dtype) not in "fiu":
            raise CorruptModelError(f"{path}: weight {w.name} has dtype {w.dtype}, not a number type")


def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:  # names NumPy does not parse back (bytes24, ...) are not numbers either
        return "?"


def _fused_blocks(layer: Layer, kind: CellKind, path: str):
    kernel, recurrent, bias = _roles(layer.weights)
    _check_numeric((kernel, recurrent, bias), path)
    n = max(1, len(GATES[kind]))
    rk = recurrent.shape
    if len(rk) < 2 or len(kernel.shape) != len(rk):
        raise CorruptModelError(f"{path}: recurrent kernel shape {rk} does not fit kernel {kernel.shape}")
    units = rk[-2]
    if units <= 0 or rk[-1] != n * units or kernel.shape[-1] != n * units:
        raise CorruptModelError(f"{path}: {kind.value} kernels {kernel.shape} and {rk} are not "
                                f"{n} gates of {units} units")
    input_dim = kernel.shape[-2]
    spatial = tuple(kernel.shape[:-2])
    if rk[:-2] != spatial:
        raise CorruptModelError(f"{path}: kernel {kernel.shape} and recurrent kernel {rk} disagree")
    cudnn = layer.class_name in CUDNN_CLASSES or (
        bias is not None and bias.shape == (2 * n * units,) and kind is not CellKind.SIMPLE_RNN)
    names = GATES[kind] or ("",)
    blocks: list[Block] = []
    lead = (slice(None),) * (len(kernel.shape) - 1)
    for g, gate in enumerate(names):
        cols = slice(g * units, (g + 1) * units)
        suffix = f"_{gate}" if gate else ""
        if cudnn:
            blocks.append(Block(f"W{suffix}", (input_dim, units), kernel, (slice(None), cols),
                                Transform.CUDNN_KERNEL))
            blocks.append(Block(f"U{suffix}", (units, units), recurrent, (slice(None), cols),
                                Transform.TRANSPOSE))
        else:
            blocks.append(Block(f"W{suffix}", spatial + (input_dim, units), kernel, lead + (cols,)))
            blocks.append(Block(f"U{suffix}", spatial + (units, units), recurrent, lead + (cols,)))
    blocks.extend(_bias_blocks(bias, kind, units, names, cudnn, path))
    corrections = ("cuDNN layout: each kernel gate block de-scrambled (reshape(units, input_dim).T), "
                   "each recurrent block transposed; input-side and recurrent biases kept apart",) \
        if cudnn else ()
    return blocks, units, input_dim, (spatial or None), corrections


def _bias_blocks(bias: Weight | None, kind: CellKind, units: int, names, cudnn: bool, path: str):
    if bias is None:
        return []
    n = len(names)
    blocks = []
    if cudnn:
        if bias.shape != (2 * n * units,):
            raise CorruptModelError(f"{path}: cuDNN bias {bias.shape} is not 2 x {n} x {units}")
        for g, gate in enumerate(names):
            blocks.append(Block(f"b_{gate}", (units,), bias, (slice(g * units, (g + 1) * units),)))
        for g, gate in enumerate(names):
            start = (n + g) * units
            blocks.append(Block(f"bU_{gate}", (units,), bias, (slice(start, start + units),)))
        return blocks
    if kind is CellKind.GRU and bias.shape == (2, n * units):
        for row, prefix in ((0, "b"), (1, "bU")):
            for g, gate in enumerate(names):
                blocks.append(Block(f"{prefix}_{gate}", (units,), bias,
                                    (row, slice(g * units, (g + 1) * units))))
        return blocks
    if bias.shape != (n * units,):
        raise CorruptModelError(f"{path}: bias shape {bias.shape} does not fit {n} gates of {units} units")
    for g, gate in enumerate(names):
        suffix = f"_{gate}" if gate else ""
        blocks.append(Block(f"b{suffix}", (units,), bias, (slice(g * units, (g + 1) * units),)))
    return blocks


def _keras1_arrays(weights: Sequence[Weight], kind: CellKind) -> dict[str, Weight] | None:
    """Keras 1 stored one array per gate, named `<layer>_W_i`; map them to block names."""
    gates = GATES[kind]
    found: dict[str, Weight] = {}
    for w in weights:
        m = _KERAS1_NAME.search(w.short_name)
        if not m or w.short_name in ("kernel", "recurrent_kernel", "bias"):
            return None
        gate = m.group("gate")
        if gates and gate not in gates:
            return None
        found[f"{m.group('kind')}_{gate}" if gate else m.group("kind")] = w
    expected = {f"{k}_{g}" for g in gates for k in "WU"} if gates else {"W", "U"}
    return found if expected <= set(found) else None


def _keras1_blocks(arrays: dict[str, Weight], kind: CellKind, path: str):
    _check_numeric(list(arrays.values()), path)
    gates = GATES[kind] or ("",)
    first = arrays[f"W_{gates[0]}" if gates[0] else "W"]
    if len(first.shape) != 2:
        raise CorruptModelError(f"{path}: Keras 1 weight {first.name} is not 2-D")
    input_dim, units = first.shape
    blocks = []
    for gate in gates:
        suffix = f"_{gate}" if gate else ""
        for kind_letter, shape in (("W", (input_dim, units)), ("U", (units, units)), ("b", (units,))):
            w = arrays.get(f"{kind_letter}{suffix}")
            if w is None:
                if kind_letter == "b":
                    continue
                raise CorruptModelError(f"{path}: Keras 1 weight {kind_letter}{suffix} is missing")
            if w.shape != shape:
                raise CorruptModelError(f"{path}: {w.name} has shape {w.shape}, expected {shape}")
            blocks.append(Block(f"{kind_letter}{suffix}", shape, w))
    corrections = (f"Keras 1 layout: one array per gate, stored in the order "
                   f"{', '.join(_stored_order(kind))}; mapped to gates by name",) if GATES[kind] else \
        ("Keras 1 layout: W, U, b stored as separate arrays",)
    return blocks, units, input_dim, corrections


def _stored_order(kind: CellKind) -> tuple[str, ...]:
    return ("i", "c", "f", "o") if kind is CellKind.LSTM else GATES[kind]


# --- shapes ------------------------------------------------------------------------------------

def _shapes(kind: CellKind, units: int, config: Mapping, input_shape, flags, kernel_size):
    if not config:
        return None, None
    batch = input_shape[0] if input_shape else None
    time = input_shape[1] if input_shape and len(input_shape) > 1 else None
    if kind is CellKind.CONV_LSTM:
        spatial = _conv_out(config, input_shape, kernel_size)
        data_format = config.get("data_format") or "channels_last"
        one = (batch,) + (spatial + (units,) if data_format == "channels_last" else (units,) + spatial)
    else:
        one = (batch, units)
    if flags.get("return_sequences"):
        output = one[:1] + (time,) + one[1:]
    else:
        output = one
    n_states = 2 if kind in (CellKind.LSTM, CellKind.CONV_LSTM) else 1
    states = tuple(one for _ in range(n_states))
    return output, states


def _conv_out(config: Mapping, input_shape, kernel_size) -> tuple[int | None, ...]:
    rank = len(kernel_size or ())
    data_format = config.get("data_format") or "channels_last"
    if not input_shape or len(input_shape) != rank + 3:
        return (None,) * rank
    dims = input_shape[2:2 + rank] if data_format == "channels_last" else input_shape[3:3 + rank]
    strides = _tuple(config.get("strides", 1), rank)
    dilation = _tuple(config.get("dilation_rate", 1), rank)
    padding = config.get("padding", "valid")
    out = []
    for d, k, s, r in zip(dims, kernel_size, strides, dilation):
        if d is None:
            out.append(None)
            continue
        effective = (k - 1) * r + 1
        out.append(-(-d // s) if padding == "same" else (d - effective) // s + 1)
    return tuple(out)


def _tuple(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    return tuple(int(v) for v in value)


# --- input shapes: stated in the config, or carried through the Sequential stack / functional graph --

_PASSTHROUGH = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                          "GaussianNoise", "GaussianDropout", "AlphaDropout", "BatchNormalization",
                          "LayerNormalization", "Activation", "Masking", "ActivityRegularization",
                          "InputLayer"})
Shape = tuple


def _input_shapes(model: Model) -> dict[int, Shape]:
    """Input shape of every layer (by id) wherever it can be known without running the model."""
    out: dict[int, Shape] = {}
    _propagate(model.layers, model.class_name == "Sequential", out)
    return out


def _propagate(layers: Sequence[Layer], sequential: bool, out: dict[int, Shape]) -> list[Shape] | None:
    """Fill `out` for `layers` (siblings of one model); returns the last layer's outputs."""
    outputs: dict[str, list[Shape]] = {}
    previous: list[Shape] | None = None
    for layer in layers:
        carried = None
        if layer.inbound and layer.inbound[0] in outputs:
            produced = outputs[layer.inbound[0]]
            index = layer.inbound[1]
            carried = produced[index] if index < len(produced) else None
        elif sequential and previous:
            carried = previous[0]
        shape = _merge_shapes(layer.input_shape, carried)
        if shape is not None:
            out[id(layer)] = shape
        nested = [c for c in layer.children if not c.role]
        if nested:
            produced = _propagate(nested, layer.class_name == "Sequential", out)
        else:
            produced = _outputs(layer, shape) if shape is not None else None
        if produced:
            outputs[layer.name] = produced
        previous = produced
    return previous


def _merge_shapes(stated: Shape | None, carried: Shape | None) -> Shape | None:
    """A layer's own stated shape, with unknown dims filled from what the previous layer produces."""
    if stated is None or carried is None or len(stated) != len(carried):
        return stated if stated is not None else carried
    return tuple(s if s is not None else c for s, c in zip(stated, carried))


def _outputs(layer: Layer, shape: Shape) -> list[Shape] | None:
    config = layer.config or {}
    cls = layer.class_name
    if cls in _PASSTHROUGH:
        return [shape]
    if cls == "Embedding":
        dim = config.get("output_dim")
        return [shape + (dim,)] if isinstance(dim, int) else None
    if cls == "Dense" and isinstance(config.get("units"), int):
        return [shape[:-1] + (config["units"],)]
    if cls == "TimeDistributed" and layer.children:
        inner = _outputs(layer.children[0], (shape[0],) + tuple(shape[2:]))
        return [(inner[0][0], shape[1]) + tuple(inner[0][1:])] if inner else None
    if cls == "Bidirectional" and len(layer.children) == 2:
        side = _rnn_outputs(layer.children[0], shape)
        if side is None:
            return None
        merge = config.get("merge_mode", "concat")
        first = side[0]
        if merge == "concat":
            channels_first = (layer.children[0].config or {}).get("data_format") == "channels_first"
            axis = 2 if channels_first and kind_of(layer.children[0].class_name) is CellKind.CONV_LSTM \
                and len(first) > 3 else -1
            dims = list(first)
            dims[axis] = None if dims[axis] is None else 2 * dims[axis]
            first = tuple(dims)
        states = side[1:] * 2 if (layer.children[0].config or {}).get("return_state") else []
        return [first] + states if merge is not None else [side[0], side[0]] + states
    return _rnn_outputs(layer, shape)


def _rnn_outputs(layer: Layer, shape: Shape) -> list[Shape] | None:
    """[output] (+ states with return_state) of a recurrent layer or RNN(cell(s)) from its config."""
    config = layer.config or {}
    kind = kind_of(layer.class_name)
    cells = [c for c in layer.children if c.role.startswith("cell")]
    cell_config = (cells[-1].config or {}) if cells else config
    if kind is None and cells:
        kind = kind_of(cells[-1].class_name)
    if kind is None:
        return None
    units = cell_config.get("units", cell_config.get("output_dim", cell_config.get("filters")))
    if not isinstance(units, int):
        return None
    kernel = cell_config.get("kernel_size")
    kernel_size = _tuple(kernel, len(shape) - 3) if kind is CellKind.CONV_LSTM and kernel is not None else None
    flags = {"return_sequences": config.get("return_sequences")}
    output, states = _shapes(kind, units, cell_config if not cells else dict(cell_config, **config),
                             shape, flags, kernel_size)
    if output is None:
        return None
    if config.get("return_state"):
        all_states = []
        for cell in cells or [layer]:
            c_units = (cell.config or {}).get("units", units)
            n = 2 if kind_of(cell.class_name) in (CellKind.LSTM, CellKind.CONV_LSTM) else 1
            all_states += [states[0][:-1] + (c_units,)] * n
        return [output] + all_states
    return [output]
