"""Keras recurrent layers into directions: the layer tree walked (Bidirectional sides, RNN(cell),
stacked cells, TimeDistributed, nested models), each cell's stored tensors cut by the matching gate
layout: Keras's fused kernels, cuDNN's scrambled ones, Keras 1's one array per gate."""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import GATES, CellKind, Direction, block_order
from lstm_inspect.cells.keras_classes import CUDNN_CLASSES, kind_of
from lstm_inspect.cells.keras_shapes import as_tuple, input_shapes, rnn_outputs, shapes
from lstm_inspect.errors import CorruptModelError
from lstm_inspect.model import Layer, Model, Weight


# --- walking the layer tree --------------------------------------------------------------------

def keras_directions(model: Model) -> list[Direction]:
    """Every recurrent direction of the model, in layer order, with its path."""
    out: list[Direction] = []
    known = input_shapes(model)
    for layer in model.layers:
        out.extend(_walk(layer, layer.name, known.get(id(layer)), model, known))
    return out


def _walk(layer: Layer, path: str, input_shape, model: Model, known: dict) -> Iterator[Direction]:
    kind = kind_of(layer.class_name)
    if kind is not None and (layer.weights or not layer.children):
        if layer.weights:
            yield _direction(layer, layer.config, path, kind, input_shape, model)
        return
    if layer.class_name == "Bidirectional":
        for child in layer.children:
            yield from _walk(child, f"{path}/{child.role}", input_shape, model, known)
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
        layer_out = rnn_outputs(layer, input_shape) if input_shape is not None else None
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
        child_shape = input_shape if child.role == "layer" else known.get(id(child))
        yield from _walk(child, child_path, child_shape, model, known)


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
        blocks, units, input_dim, corrections, layout = _keras1_blocks(per_gate, kind, path)
        kernel_size = None
    else:
        blocks, units, input_dim, kernel_size, corrections, layout = _fused_blocks(layer, kind, path)
    _check_config_units(config, units, path)
    declared_kernel = config.get("kernel_size")
    if kernel_size and declared_kernel is not None and as_tuple(declared_kernel, len(kernel_size)) != kernel_size:
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
    output_shape, state_shapes = shapes(kind, units, config, input_shape, flags, kernel_size)
    notes = list(corrections)
    if recurrent == "hard_sigmoid":
        notes.append("recurrent_activation is hard_sigmoid: Keras 2 computes clip(0.2x+0.5, 0, 1), "
                     "Keras 3 relu6(x+3)/6")
    return Direction(path=path, kind=kind, class_name=class_name, units=units, input_dim=input_dim,
                     blocks=tuple(sorted(blocks, key=lambda b: block_order(b.name))), use_bias=use_bias,
                     reset_after=reset_after, source_layout=layout.name,
                     activation=_act_name(activation), recurrent_activation=_act_name(recurrent),
                     kernel_size=kernel_size, output_shape=output_shape, state_shapes=state_shapes,
                     corrections=tuple(corrections), notes=tuple(notes), layer_name=layer.name,
                     **flags)


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
    layout = _fused_layout(kind, cudnn, bias, n, units, path)
    tensors = {"kernel": kernel, "recurrent_kernel": recurrent}
    if bias is not None:
        tensors["bias"] = bias
    blocks = layouts.cut(layout, tensors, layouts.Sizes(units, input_dim), path=path)
    corrections = ("cuDNN layout: each kernel gate block de-scrambled (reshape(units, input_dim).T), "
                   "each recurrent block transposed; input-side and recurrent biases kept apart",) \
        if cudnn else ()
    return blocks, units, input_dim, (spatial or None), corrections, layout


def _fused_layout(kind: CellKind, cudnn: bool, bias: Weight | None, n: int, units: int,
                  path: str) -> layouts.GateLayout:
    """The stored layout, told apart by class and bias shape: cuDNN's 2·n·units bias, Keras GRU
    reset_after=True's (2, 3·units), else one n·units bias."""
    if cudnn:
        if bias is not None and bias.shape != (2 * n * units,):
            raise CorruptModelError(f"{path}: cuDNN bias {bias.shape} is not 2 x {n} x {units}")
        return layouts.CUDNN[kind]
    if bias is not None and kind is CellKind.GRU and bias.shape == (2, n * units):
        return layouts.KERAS_GRU_RESET_AFTER
    if bias is not None and bias.shape != (n * units,):
        raise CorruptModelError(f"{path}: bias shape {bias.shape} does not fit {n} gates of {units} units")
    return layouts.KERAS[kind]


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
    layout = layouts.KERAS1[kind]
    blocks = layouts.cut(layout, arrays, layouts.Sizes(units, input_dim), path=path)
    corrections = (f"Keras 1 layout: one array per gate, stored in the order "
                   f"{', '.join(_stored_order(kind))}; mapped to gates by name",) if GATES[kind] else \
        ("Keras 1 layout: W, U, b stored as separate arrays",)
    return blocks, units, input_dim, corrections, layout


def _stored_order(kind: CellKind) -> tuple[str, ...]:
    return ("i", "c", "f", "o") if kind is CellKind.LSTM else GATES[kind]
