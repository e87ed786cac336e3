"""Output and state shapes of Keras recurrent layers, from their configs alone: the input shape is
what the config states, or what the previous layers produce (Sequential stack, functional graph)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from lstm_inspect.cells.core import CellKind
from lstm_inspect.cells.keras_classes import kind_of
from lstm_inspect.model import Layer, Model


def shapes(kind: CellKind, units: int, config: Mapping, input_shape, flags, kernel_size):
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
    strides = as_tuple(config.get("strides", 1), rank)
    dilation = as_tuple(config.get("dilation_rate", 1), rank)
    padding = config.get("padding", "valid")
    out = []
    for d, k, s, r in zip(dims, kernel_size, strides, dilation):
        if d is None:
            out.append(None)
            continue
        effective = (k - 1) * r + 1
        out.append(-(-d // s) if padding == "same" else (d - effective) // s + 1)
    return tuple(out)


def as_tuple(value: Any, rank: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * rank
    return tuple(int(v) for v in value)


# --- input shapes: stated in the config, or carried through the Sequential stack / functional graph --

_PASSTHROUGH = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                          "GaussianNoise", "GaussianDropout", "AlphaDropout", "BatchNormalization",
                          "LayerNormalization", "Activation", "Masking", "ActivityRegularization",
                          "InputLayer"})
Shape = tuple


def input_shapes(model: Model) -> dict[int, Shape]:
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
        side = rnn_outputs(layer.children[0], shape)
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
    return rnn_outputs(layer, shape)


def rnn_outputs(layer: Layer, shape: Shape) -> list[Shape] | None:
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
    kernel_size = as_tuple(kernel, len(shape) - 3) if kind is CellKind.CONV_LSTM and kernel is not None else None
    flags = {"return_sequences": config.get("return_sequences")}
    output, states = shapes(kind, units, cell_config if not cells else dict(cell_config, **config),
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
