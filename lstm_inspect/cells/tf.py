"""TensorFlow files into directions: TF1 cells (one per variable scope) cut by the TF1 gate layouts,
and Keras layers of TF2 checkpoints and SavedModels handed to the Keras cell builder.

TF1 cells compute from one kernel whose rows are [x; h] and whose gate columns are i, j, f, o (LSTM),
r, u plus a candidate kernel (GRU), or one block (BasicRNNCell). Two facts of the cell are not in the
checkpoint: the run-time `forget_bias` added to the forget gate (1.0 by default for BasicLSTMCell,
LSTMCell and LSTMBlockCell, 0 for cuDNN-compatible cells) and the activation (tanh by default). They
are reported as assumptions; `with_forget_bias` replaces the bias when the user states it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import CellKind, Direction, block_order
from lstm_inspect.errors import CorruptModelError
from lstm_inspect.formats.tf import tf1
from lstm_inspect.model import Layer, Model, Weight

DEFAULT_FORGET_BIAS = {"BasicLSTMCell": 1.0, "LSTMCell": 1.0, "LSTMBlockFusedCell": 1.0,
                       "CudnnCompatibleLSTMCell": 0.0}
_OLD_NAMES = {"Linear/Matrix": "TF 0.x", "W_0": "TF 0.x", "Gates/Linear/Matrix": "TF 0.x",
              "weights": "TF 1.0-1.1", "gates/weights": "TF 1.0-1.1"}


def tf_directions(model: Model) -> list[Direction]:
    """Every recurrent direction, in layer order: TF1 cells here, Keras layers by the Keras builder."""
    from lstm_inspect.cells.keras import keras_directions

    keras_layers = tuple(layer for layer in model.layers if not is_tf1_cell(layer))
    keras_dirs = keras_directions(replace(model, layers=keras_layers)) if keras_layers else []
    out: list[Direction] = []
    for layer in model.layers:
        if is_tf1_cell(layer):
            out.append(tf1_direction(layer))
            continue
        mine = [d for d in keras_dirs if d.path == layer.name or d.path.startswith(layer.name + "/")]
        out.extend(mine)
        keras_dirs = [d for d in keras_dirs if d not in mine]
    return out + keras_dirs


def is_tf1_cell(layer: Layer) -> bool:
    """A TF1 cell layer as the TF reader makes it: a TF1 class, no config, no Keras recurrent_kernel."""
    return layer.class_name in tf1.CELL_CLASSES and layer.config is None and not layer.children \
        and not any(w.short_name == "recurrent_kernel" for w in layer.weights)


# ----------------------------------------------------------------------------------------- one TF1 cell
def tf1_direction(layer: Layer) -> Direction:
    scope = layer.name
    by_name = {w.name: w for w in layer.weights}
    cell = tf1.describe_cell(scope, {w.name: w.shape for w in layer.weights})
    if isinstance(cell, str):
        raise CorruptModelError(cell)
    tensors = {role: by_name[name] for role, name in cell.roles.items()}
    for w in tensors.values():
        if w.dtype not in ("float32", "float64", "float16", "bfloat16"):
            raise CorruptModelError(f"{scope}: {w.name} has dtype {w.dtype}, not a floating-point type")
    if cell.class_name in tf1.LSTM_CLASSES:
        d = _lstm(scope, cell.class_name, tensors)
    elif cell.class_name in tf1.GRU_CLASSES:
        d = _gru(scope, cell.class_name, tensors)
    else:
        d = _rnn(scope, cell.class_name, tensors)
    notes = list(cell.notes) + _name_notes(scope, cell.roles) + list(d.notes)
    side = _side(scope)
    if side is None:
        return replace(d, notes=tuple(notes))
    if side == "bw":
        notes.append("the bw cell of a bidirectional RNN: TF feeds it the input reversed in time and reverses "
                     "its outputs back (go_backwards=True, as Keras's Bidirectional does)")
    else:
        notes.append("the fw cell of a bidirectional RNN")
    return replace(d, notes=tuple(notes), go_backwards=side == "bw")


def _common(scope: str, kind: CellKind, class_name: str, layout: layouts.GateLayout,
            tensors: Mapping[str, Weight], units: int, input_dim: int, recurrent: int | None = None,
            **extra) -> Direction:
    sizes = layouts.Sizes(units, input_dim, recurrent)
    blocks = layouts.cut(layout, tensors, sizes, path=scope)
    out_size = recurrent or units
    states = ((None, out_size), (None, units)) if kind is CellKind.LSTM else ((None, units),)
    return Direction(path=scope, kind=kind, class_name=class_name, units=units, input_dim=input_dim,
                     blocks=tuple(sorted(blocks, key=lambda b: block_order(b.name))),
                     use_bias=any(b.name.startswith("b") for b in blocks), source_layout=layout.name,
                     activation="tanh", recurrent_activation="sigmoid" if kind is not CellKind.SIMPLE_RNN else None,
                     output_shape=(None, None, out_size), state_shapes=states, layer_name=scope, **extra)


def _rows_note(input_dim: int, recurrent: int, what: str = "kernel") -> str:
    return (f"{what} rows are [x; h]: rows 0..{input_dim - 1} act on the input (W), rows "
            f"{input_dim}..{input_dim + recurrent - 1} on h (U)")


def _lstm(scope: str, class_name: str, tensors: Mapping[str, Weight]) -> Direction:
    rows, columns = tensors["kernel"].shape
    units = columns // 4
    projection = tensors.get("projection/kernel")
    recurrent = projection.shape[1] if projection is not None else units
    input_dim = rows - recurrent
    cudnn = class_name == "CudnnCompatibleLSTMCell"
    layout = layouts.TF1["cudnn-compatible-lstm" if cudnn else "lstm"]
    order = "i, c, f, o" if cudnn else "i, j, f, o (j is the cell candidate c)"
    corrections = [f"TF1 fused kernel: {_rows_note(input_dim, recurrent)}; gate columns {order}, "
                   "reordered to i, f, c, o"]
    forget_bias = DEFAULT_FORGET_BIAS.get(class_name, 1.0)
    if cudnn:
        notes = ["forget_bias 0: a cuDNN-compatible cell adds no forget bias at run time; its bias is "
                 "cuDNN's input and recurrent biases summed"]
    else:
        notes = [f"forget_bias is not stored in the checkpoint: assumed {forget_bias:g}, the {class_name} "
                 "default (give --forget-bias if the model set another); b_f is reported as stored"]
    if class_name == "LSTMCell":
        notes.append("scope lstm_cell: LSTMCell, or contrib LSTMBlockCell (same variables, same math)")
    if class_name != "BasicLSTMCell" and not cudnn:
        notes.append("cell_clip and proj_clip are not stored: none assumed")
    if projection is not None:
        corrections.append(f"projection/kernel {tuple(projection.shape)} → block P: h = (o ⊙ tanh(c)) @ P, "
                           f"so h and the output have num_proj = {recurrent} features")
    if "w_i_diag" in tensors:
        corrections.append("peepholes w_i_diag, w_f_diag, w_o_diag → blocks p_i, p_f, p_o")
    notes.append("activation is not stored: tanh assumed (the default)")
    return _common(scope, CellKind.LSTM, class_name, layout, tensors, units, input_dim,
                   recurrent if projection is not None else None,
                   projection_size=recurrent if projection is not None else None, forget_bias=forget_bias,
                   corrections=tuple(corrections), notes=tuple(notes))


def _gru(scope: str, class_name: str, tensors: Mapping[str, Weight]) -> Direction:
    rows, units = tensors["candidate/kernel"].shape
    input_dim = rows - units
    corrections = (f"TF1 GRU: {_rows_note(input_dim, units, 'gates/kernel')}; its columns are r, u (TF's "
                   "update gate u is z); candidate/kernel rows act on [x; r ⊙ h] (Keras reset_after=False)",)
    notes = ("activation is not stored: tanh assumed (the default)",)
    return _common(scope, CellKind.GRU, class_name, layouts.TF1["gru"], tensors, units, input_dim,
                   reset_after=False, corrections=corrections, notes=notes)


def _rnn(scope: str, class_name: str, tensors: Mapping[str, Weight]) -> Direction:
    rows, units = tensors["kernel"].shape
    input_dim = rows - units
    return _common(scope, CellKind.SIMPLE_RNN, class_name, layouts.TF1["rnn"], tensors, units, input_dim,
                   corrections=(f"TF1 fused kernel: {_rows_note(input_dim, units)}",),
                   notes=("activation is not stored: tanh assumed (the default)",))


def _name_notes(scope: str, roles: Mapping[str, str]) -> list[str]:
    eras = {era for name in roles.values() for alias, era in _OLD_NAMES.items()
            if name.endswith("/" + alias)}
    return [f"{era} variable names ({', '.join(sorted(n[len(scope) + 1:] for n in roles.values()))})"
            for era in sorted(eras)]


def _side(scope: str) -> str | None:
    """"fw" / "bw" for the cells of bidirectional_dynamic_rnn and static_bidirectional_rnn (scope
    `bidirectional_rnn/fw|bw`, TF 0.x `BiRNN/FW|BW`), else None."""
    parts = scope.split("/")
    for k in range(len(parts) - 1):
        if parts[k].startswith("bidirectional_rnn") or parts[k] == "BiRNN":
            side = parts[k + 1].lower()
            if side in ("fw", "bw"):
                return side
    return None


# ----------------------------------------------------------------------------------------- forget_bias
def with_forget_bias(dirs: list[Direction], value: float) -> list[Direction]:
    """The directions with the run-time forget bias the user stated (cells that add one only)."""
    out = []
    for d in dirs:
        if d.forget_bias is None:
            out.append(d)
            continue
        notes = tuple(n for n in d.notes if not n.startswith("forget_bias is not stored")) + \
            (f"forget_bias {value:g} as given with --forget-bias (not stored in the file); b_f is "
             "reported as stored",)
        out.append(replace(d, forget_bias=float(value), notes=notes))
    return out
