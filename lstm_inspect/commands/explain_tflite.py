"""`explain` for a TFLite direction: the equations TFLite computes, written with the split blocks' names.

The fused LSTM operator (tensorflow/lite/kernels/lstm_eval.cc) adds to the Keras cell: `cell_clip` (the
converter sets 10 on every Keras LSTM), peepholes, layer normalisation of each gate's pre-activation (the
bias is added after it), CIFG (no input gate: i = 1 − f), a projection with `proj_clip`. WHILE loops and
unrolled graphs compute the Keras cell with FULLY_CONNECTED operators; they are explained as such, with
the fact that the layer did not fuse.
"""
from __future__ import annotations

from lstm_inspect.cells import GATE_MEANING, CellKind, Direction
from lstm_inspect.commands.explain import Explanation, _dims, _meaning
from lstm_inspect.commands.explain import _equations as keras_equations
from lstm_inspect.commands.explain import _param_lines as keras_params

LAYER_NORM = "LN(v) = (v − mean(v)) / √(var(v) + 1e-8), over the units of each sample"


def explain_tflite(d: Direction) -> Explanation:
    fused_lstm = d.kind is CellKind.LSTM and d.source_layout in ("tflite-lstm", "tflite-lstm-basic")
    equations = _lstm_equations(d) if fused_lstm else _loop_equations(d)
    return Explanation(
        title=f"{d.path} — {d.kind.value} (TFLite {d.class_name}): input_dim {d.input_dim}, units {d.units}",
        equations=tuple(equations),
        shapes=tuple(f"{b.name}: {_dims(b.shape)}" for b in d.blocks),
        params=tuple(_params(d) if fused_lstm else keras_params(d)),
        meaning=tuple(_meaning_tflite(d)),
    )


def _meaning_tflite(d: Direction) -> list[str]:
    lines = _meaning(d)[:1]  # what units means, as for Keras
    if d.class_name.startswith(("UNIDIRECTIONAL", "BIDIRECTIONAL")):
        time_major = any(n.startswith("time_major") for n in d.notes)
        shape = f"(time, batch, {d.projection_size or d.units})" if time_major else \
            f"(batch, time, {d.projection_size or d.units})"
        lines.append(f"The operator outputs h_t of every step, {shape}; when the Keras layer returned only the last "
                     "step, a STRIDED_SLICE after the operator takes it. Its states are variable tensors, zero "
                     "before the first invocation.")
    else:
        lines.append("The loop (or the unrolled steps) carries h_t" + (" and c_t" if d.kind is CellKind.LSTM else "")
                     + "; the Keras layer's output is read from them after the last step.")
    if d.go_backwards:
        lines.append("The input reaches this direction reversed in time (REVERSE_V2): it reads the sequence from "
                     "the last step to the first, as a Keras go_backwards or backward layer does.")
    return lines + [n if n.endswith(".") else n + "." for n in d.notes]


def _act(d: Direction) -> str:
    return d.activation or "tanh"


def _lstm_equations(d: Direction) -> list[str]:
    act = _act(d)
    layer_norm = d.has_block("ln_f")
    cifg = not d.has_block("W_i")

    def gate(g: str, fn: str, peephole: str = "") -> str:
        lhs = "c̃_t" if g == "c" else f"{g}_t"
        p = f" + p_{g} ⊙ {peephole}" if peephole and d.has_block(f"p_{g}") else ""
        b = f" + b_{g}" if d.has_block(f"b_{g}") else ""
        if layer_norm:
            ln = f" ⊙ ln_{g}" if d.has_block(f"ln_{g}") else ""
            terms = f"LN(x_t W_{g} + h_{{t-1}} U_{g}{p}){ln}{b}"
        else:
            terms = f"x_t W_{g} + h_{{t-1}} U_{g}{p}{b}"
        return f"{lhs} = {fn}({terms})   ({GATE_MEANING[g]})"

    lines = []
    if d.source_layout == "tflite-lstm-basic":
        lines.append("one FULLY_CONNECTED over concat(x_t, h_{t-1}) gives the four gates, stored i, c, f, o")
    lines.append("i_t = 1 − f_t   (input gate: CIFG couples it to the forget gate)" if cifg
                 else gate("i", "σ", "c_{t-1}"))
    lines += [gate("f", "σ", "c_{t-1}"), gate("c", act)]
    update = "f_t ⊙ c_{t-1} + i_t ⊙ c̃_t"
    if d.cell_clip:
        lines.append(f"c_t = clip({update}, −{d.cell_clip:g}, {d.cell_clip:g})   (cell_clip: TFLite clips the "
                     "cell state; Keras does not, so a cell state beyond it gives other outputs)")
    else:
        lines.append(f"c_t = {update}")
    lines += [gate("o", "σ", "c_t"), f"h_t = o_t ⊙ {act}(c_t)"]
    if d.projection_size:
        bias = " + bP" if d.has_block("bP") else ""
        projected = f"h_t P{bias}"
        if d.proj_clip:
            projected = f"clip({projected}, −{d.proj_clip:g}, {d.proj_clip:g})"
        lines.append(f"h_t ← {projected}   (projection to {d.projection_size} features; this h_t is the output "
                     "and the next step's recurrent input)")
    if layer_norm:
        lines.append("where " + LAYER_NORM)
    return lines


def _loop_equations(d: Direction) -> list[str]:
    lines = keras_equations(d)
    letters = "".join(d.gates) or "-"
    if d.class_name in ("WHILE", "unrolled"):
        where = "each step of the WHILE loop's body" if d.class_name == "WHILE" else "each unrolled step"
        stacked = " | ".join(f"W_{g}" for g in d.gates) or "W"
        if d.kind is CellKind.GRU and not d.reset_after:
            recurrent = "h_{t-1} [U_z | U_r] and (r_t ⊙ h_{t-1}) U_h (two FULLY_CONNECTED weights)"
        else:
            recurrent = f"h_{{t-1}} [{stacked.replace('W', 'U')}]"
        lines.append(f"computed in {where} by FULLY_CONNECTED operators: x_t [{stacked}] and {recurrent}, "
                     f"then split into the gates {', '.join(letters)}")
    if d.kind is CellKind.LSTM and d.cell_clip:
        lines.append(f"c_t is clipped to [−{d.cell_clip:g}, {d.cell_clip:g}] (cell_clip)")
    return lines


def _params(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    R = d.projection_size or H  # rows of U: what the recurrent input holds
    gates = 3 if not d.has_block("W_i") else 4
    bias = f" + {H}" if d.has_block("b_f") else ""
    expr = f"{gates} × ({H}·({I}+{R}){bias})"
    total = gates * (H * (I + R) + (H if bias else 0))
    extras = [(sum(1 for g in "ifo" if d.has_block(f"p_{g}")), H, "peepholes"),
              (sum(1 for g in "ifco" if d.has_block(f"ln_{g}")), H, "layer-norm coefficients")]
    for count, size, what in extras:
        if count:
            expr += f" + {count}·{size} ({what})"
            total += count * size
    if d.projection_size:
        expr += f" + {H}·{R} (projection)"
        total += H * R
        if d.has_block("bP"):
            expr += f" + {R} (projection bias)"
            total += R
    lines = [f"{expr} = {total:,}"]
    if gates == 3:
        lines.append("CIFG: the input gate has no weights (i = 1 − f)")
    if total != d.params:
        lines.append(f"(the stored blocks hold {d.params:,} values)")
    return lines
