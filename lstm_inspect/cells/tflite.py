"""TFLite recurrent layers into directions, from the facts the reader put in each layer's config.

Three shapes (see formats/tflite/recurrent.py): a fused operator (one tensor per gate and kind, cut by
`layouts.TFLITE["tflite-lstm"]` or the RNN/basic-LSTM tables), and a WHILE loop body or an unrolled graph
(one FULLY_CONNECTED weight per kind = the Keras kernel transposed, cut by the `tflite-fc-*` tables).
Paths are the Keras layer name where the converter kept it (a Bidirectional pair: `<layer>/forward` and
`<layer>/backward`), else `op<k>`. A loop whose cell is not recognised has no direction: the reader
reports it as a layer with its sizes and a note. Every direction says whether the layer fused.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import CellKind, Direction, block_order
from lstm_inspect.errors import CorruptModelError
from lstm_inspect.model import Layer, Model, Weight

# fused_activation_function -> the activation's name in reference.py (None: no NumPy reference)
ACTIVATIONS = {"NONE": "linear", "RELU": "relu", "RELU_N1_TO_1": None, "RELU6": "relu6", "TANH": "tanh",
               "SIGN_BIT": None}
# activation operators of a loop body or unrolled graph -> names
_OP_ACTIVATIONS = {"TANH": "tanh", "LOGISTIC": "sigmoid", "RELU": "relu", "RELU6": "relu6", "ELU": "elu",
                   "GELU": "gelu", "HARD_SWISH": "hard_silu"}
_KINDS = {"lstm": CellKind.LSTM, "gru": CellKind.GRU, "simple_rnn": CellKind.SIMPLE_RNN}
FUSED_NOTE = "fused: TFLite runs it as one {op} operator (operator {index}, version {version})"
NOT_FUSED_NOTE = ("not fused: the converter made a {form} of the layer instead of a fused LSTM/RNN operator "
                  "(TFLite Micro runs WHILE loops poorly or not at all; unrolled graphs repeat the cell per step)")


def tflite_directions(model: Model) -> list[Direction]:
    out: list[Direction] = []
    for layer in model.layers:
        for recurrent, parent in _recurrent_layers(layer):
            # The reader's handles of every tensor the cell uses, by location: also a tensor whose buffer
            # another tensor already lists (equal constants are stored once), which layer.weights omits.
            out.extend(_directions(recurrent, parent, recurrent.config["tflite"]["tensors"]))
    return out


def direction_sources(model: Model) -> dict[str, tuple[Mapping[str, Any], str | None]]:
    """path -> (the recurrent layer's facts from the reader, "fw"/"bw" for a side of a bidirectional
    operator else None), for every direction tflite_directions makes (verify finds the operators with it)."""
    out: dict[str, tuple[Mapping[str, Any], str | None]] = {}
    for top in model.layers:
        for layer, parent in _recurrent_layers(top):
            facts = layer.config["tflite"]
            base = f"{parent.name}/{layer.role}" if parent is not None else layer.name
            if facts["form"] == "fused-op" and facts["bidirectional_op"]:
                out[f"{base}/forward"], out[f"{base}/backward"] = (facts, "fw"), (facts, "bw")
            else:
                out[base] = (facts, None)
    return out


def _recurrent_layers(layer: Layer):
    facts = (layer.config or {}).get("tflite", {})
    if facts.get("form") == "bidirectional":
        for child in sorted(layer.children, key=lambda c: c.role != "forward"):  # forward, then backward
            yield child, layer
    elif facts.get("form") in ("fused-op", "while-loop", "unrolled"):
        yield layer, None


def _directions(layer: Layer, parent: Layer | None, weights: Mapping[str, Weight]) -> list[Direction]:
    facts = layer.config["tflite"]
    base = f"{parent.name}/{layer.role}" if parent is not None else layer.name
    if facts["form"] == "fused-op":
        return _fused(facts, base, layer, weights)
    cells = [c for c in facts.get("cells", []) if c["kind"] in _KINDS]
    if len(cells) != 1:
        return []  # the layer keeps its note: no recognised cell (or several in one body)
    return [_fc_cell(facts, cells[0], base, layer, weights, parent)]


# ----------------------------------------------------------------------------------------------
# fused operators


def _fused(facts: Mapping[str, Any], base: str, layer: Layer, weights: Mapping[str, Weight]) -> list[Direction]:
    roles, options = facts["roles"], facts.get("options") or {}
    if facts["bidirectional_op"]:
        sides = (("fw_", f"{base}/forward", False), ("bw_", f"{base}/backward", True))
    else:
        sides = (("", base, facts["reversed_input"]),)
    out = []
    for prefix, path, backwards in sides:
        tensors = {role[len(prefix):]: weights[loc] for role, loc in roles.items()
                   if loc is not None and role.startswith(prefix) and (prefix or not role[:3] in ("fw_", "bw_"))}
        out.append(_fused_direction(facts, options, tensors, path, backwards, layer))
    return out


def _fused_direction(facts, options, tensors: dict[str, Weight], path: str, backwards: bool, layer: Layer) -> Direction:
    op = facts["operator"]
    cell = facts["kind"]
    notes = [FUSED_NOTE.format(op=op, index=facts["op_index"], version=facts.get("version"))]
    if facts["subgraph"]:
        notes[0] += f" in subgraph {facts['subgraph']}"
    if backwards and not facts["bidirectional_op"]:
        notes.append("its input is reversed in time (REVERSE_V2) before the operator: a Keras go_backwards "
                     "or backward layer")
    if options.get("time_major"):
        notes.append("time_major: the operator reads (time, batch, features)")
    activation = ACTIVATIONS.get(str(options.get("fused_activation_function")), None)
    if activation is None:
        notes.append(f"activation {options.get('fused_activation_function')} has no NumPy reference")
    if cell == "simple_rnn":
        layout = layouts.TFLITE["tflite-rnn"]
        units, input_dim = _shape2(tensors, "weights", path)
        sizes = layouts.Sizes(units, input_dim)
        kind, recurrent = CellKind.SIMPLE_RNN, None
    elif "weights" in tensors and "prev_activation" in facts["roles"]:
        layout = layouts.TFLITE["tflite-lstm-basic"]
        rows, cols = _shape2(tensors, "weights", path)
        units = facts.get("units") or rows // 4
        sizes = layouts.Sizes(units, cols - (facts.get("output_size") or units))
        kind, recurrent = CellKind.LSTM, "sigmoid"
        notes.append("LSTM operator, basic kernel: one weight over concat(input, previous output), gates i, c, f, o")
    else:
        layout = layouts.TFLITE["tflite-lstm"]
        sizes, notes = _lstm_sizes(facts, tensors, path, notes)
        kind, recurrent = CellKind.LSTM, "sigmoid"
    blocks = layouts.cut(layout, tensors, sizes, path=path)
    projection = sizes.recurrent_dim if any(b.name == "P" for b in blocks) else None
    notes += _storage_notes(facts, blocks)
    clip = float(options.get("cell_clip") or 0.0)
    if clip > 0 and kind is CellKind.LSTM:
        notes.append(f"cell_clip {clip:g}: the cell state is clipped to [-{clip:g}, {clip:g}] at every step "
                     "(the TFLite converter adds 10 to every Keras LSTM; Keras has no clipping)")
    output = facts.get("output")
    return Direction(
        path=path, kind=kind, class_name=op, units=sizes.units, input_dim=sizes.input_dim,
        blocks=tuple(sorted(blocks, key=lambda b: block_order(b.name))),
        use_bias=any(b.name.startswith("b") for b in blocks), activation=activation,
        recurrent_activation=recurrent, go_backwards=backwards,
        output_shape=tuple(output["shape"]) if output and not facts["bidirectional_op"] else None,
        notes=tuple(notes), layer_name=layer.name, source_layout=layout.name,
        projection_size=projection, cell_clip=clip or None if kind is CellKind.LSTM else None,
        proj_clip=float(options.get("proj_clip") or 0.0) or None if projection else None)


def _lstm_sizes(facts, tensors: dict[str, Weight], path: str, notes: list[str]):
    units, input_dim = _shape2(tensors, "input_to_forget_weights", path)
    recurrent = tensors.get("recurrent_to_forget_weights")
    if recurrent is None or len(recurrent.shape) != 2:
        shape = None if recurrent is None else recurrent.shape
        raise CorruptModelError(f"{path}: recurrent_to_forget_weights has shape {shape}; diagonal (IndyLSTM) "
                                "recurrent weights are not split")
    if recurrent.shape[0] != units:
        raise CorruptModelError(f"{path}: recurrent_to_forget_weights {recurrent.shape} does not have {units} rows")
    output = recurrent.shape[1]
    if "projection_weights" not in tensors and output != units:
        raise CorruptModelError(f"{path}: recurrent weights {recurrent.shape} need a projection to {output} "
                                "features, and there is none")
    if "input_to_input_weights" not in tensors:
        notes.append("CIFG: no input-gate weights; TFLite computes the input gate as 1 - f")
    if any(k.endswith("layer_norm_coefficients") for k in tensors):
        notes.append("layer normalisation: each gate's pre-activation is normalised, scaled by ln_<gate>, "
                     "then its bias is added")
    if any(k.startswith("cell_to_") for k in tensors):
        notes.append("peepholes: p_i, p_f on the previous cell state, p_o on the new one")
    return layouts.Sizes(units, input_dim, output if "projection_weights" in tensors else None), notes


def _shape2(tensors: dict[str, Weight], role: str, path: str) -> tuple[int, int]:
    w = tensors.get(role)
    if w is None or len(w.shape) != 2 or min(w.shape) <= 0:
        raise CorruptModelError(f"{path}: the {role} tensor is missing or not a matrix "
                                f"({None if w is None else list(w.shape)})")
    return w.shape[0], w.shape[1]


def _storage_notes(facts: Mapping[str, Any], blocks) -> list[str]:
    notes = []
    dtypes = sorted({b.source.dtype for b in blocks})
    quantized = [b for b in blocks if b.source.quantization is not None]
    if quantized:
        notes.append(f"quantized weights ({', '.join(dtypes)}): blocks are read dequantized, "
                     "(stored - zero_point) × scale, as float32")
    elif "float16" in dtypes:
        notes.append("float16 weights (dequantized to float32 by a DEQUANTIZE operator at run time): "
                     "blocks are kept as stored")
    state = (facts.get("variable_roles") or {}).get("cell_state")
    if state and state.get("dtype") == "int16":
        scale = state.get("scale", [None])[0]
        exponent = math.log2(scale) if scale else None
        power = f" (scale 2^{exponent:g})" if exponent is not None and exponent == round(exponent) else ""
        notes.append(f"full integer: int16 cell state{power}, {len(facts.get('intermediates') or [])} "
                     "intermediate tensors")
    return notes


# ----------------------------------------------------------------------------------------------
# loops and unrolled graphs


def _fc_cell(facts: Mapping[str, Any], cell: Mapping[str, Any], base: str, layer: Layer,
             weights: Mapping[str, Weight], parent: Layer | None) -> Direction:
    kind = _KINDS[cell["kind"]]
    path = base
    tensors = {"kernel": weights[cell["kernel_tensor"]]}
    if kind is CellKind.GRU and not cell["reset_after"]:
        name, layout = "tflite-fc-gru", layouts.TFLITE["tflite-fc-gru"]
        zr, h = cell["recurrent_tensors"]
        tensors.update(recurrent_kernel_zr=weights[zr], recurrent_kernel_h=weights[h])
    else:
        name = {CellKind.LSTM: "tflite-fc-lstm", CellKind.GRU: "tflite-fc-gru-reset-after",
                CellKind.SIMPLE_RNN: "tflite-fc-simplernn"}[kind]
        layout = layouts.TFLITE[name]
        tensors["recurrent_kernel"] = weights[cell["recurrent_tensors"][0]]
    if cell.get("bias_tensor"):
        tensors["bias"] = weights[cell["bias_tensor"]]
    if cell.get("recurrent_bias_tensor"):
        tensors["recurrent_bias"] = weights[cell["recurrent_bias_tensor"]]
    blocks = layouts.cut(layout, tensors, layouts.Sizes(cell["units"], cell["input_size"]), path=path)
    activation, recurrent, act_note = _fc_activations(kind, cell["activations"])
    notes = [_form_note(facts, cell)] + ([act_note] if act_note else [])
    notes += _storage_notes(facts, blocks)
    if cell.get("bias_copies"):
        notes.append(f"the bias is stored {1 + len(cell['bias_copies'])} times (one copy per use in the quantized "
                     "graph); the blocks are cut from the most precise copy")
    if facts["reversed_input"]:
        notes.append("its input is reversed in time (REVERSE_V2) before the loop: a Keras go_backwards or "
                     "backward layer")
    if facts.get("custom_ops"):
        notes.append(f"custom operators in the loop: {', '.join(facts['custom_ops'])} (Flex ops need the "
                     "TensorFlow Select delegate)")
    return Direction(
        path=path, kind=kind, class_name="WHILE" if facts["form"] == "while-loop" else "unrolled",
        units=cell["units"], input_dim=cell["input_size"],
        blocks=tuple(sorted(blocks, key=lambda b: block_order(b.name))),
        use_bias=any(b.name.startswith("b") for b in blocks),
        reset_after=cell["reset_after"] if kind is CellKind.GRU else None,
        activation=activation, recurrent_activation=recurrent, go_backwards=bool(facts["reversed_input"]),
        notes=tuple(notes), layer_name=layer.name, source_layout=name)


def _form_note(facts: Mapping[str, Any], cell: Mapping[str, Any]) -> str:
    if facts["form"] == "while-loop":
        body = facts["body"]
        form = (f"WHILE loop (operator {facts['op_index']}; body subgraph {body['subgraph']}: "
                f"{body['operators']} operators, {body['constants']} constants)")
    else:
        form = f"unrolled graph ({cell['steps']} steps: the kernel's FULLY_CONNECTED is used {cell['steps']} times)"
    return NOT_FUSED_NOTE.format(form=form)


def _fc_activations(kind: CellKind, ops: list[str]) -> tuple[str | None, str | None, str]:
    """(activation, recurrent activation, note) from the activation operators of the cell."""
    names = sorted({_OP_ACTIVATIONS.get(op, op.lower()) for op in ops})
    if kind is CellKind.SIMPLE_RNN:
        if len(names) == 1:
            return names[0], None, ""
        return None, None, f"activation not determined from the operators ({', '.join(names) or 'none'})"
    gates = "sigmoid" if "sigmoid" in names else None
    others = [n for n in names if n != "sigmoid"]
    if gates and len(others) == 1:
        return others[0], gates, ""
    if gates and not others:  # activation=sigmoid too
        return "sigmoid", gates, ""
    return (others[0] if len(others) == 1 else None), gates, \
        f"activations not determined from the operators ({', '.join(names) or 'none'})"
