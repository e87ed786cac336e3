"""`explain` for a direction of an ONNX LSTM, GRU or RNN node: the operator's own equations where they
differ from Keras's (two biases per gate, peepholes, `clip` on every gate's pre-activation, coupled
input and forget gates, GRU `linear_before_reset=0` with its recurrent bias outside the reset), written
with the split blocks' names, and what the node's outputs Y, Y_h, Y_c hold."""
from __future__ import annotations

from lstm_inspect.cells import GATE_MEANING, CellKind, Direction
from lstm_inspect.commands.explain import Explanation, _dims


def explain_onnx(d: Direction) -> Explanation:
    return Explanation(
        title=f"{d.path} — {d.kind.value} (ONNX {d.class_name}): input_dim {d.input_dim}, units {d.units}",
        equations=tuple(_equations(d)),
        shapes=tuple(f"{b.name}: {_dims(b.shape)}" for b in d.blocks),
        params=tuple(_param_lines(d)),
        meaning=tuple(_meaning(d)),
    )


def _has(d: Direction, name: str) -> bool:
    return d.has_block(name)


def _pre(d: Direction, terms: str) -> str:
    """A pre-activation, clipped when the node says so."""
    return f"clip({terms}, ±{d.gate_clip:g})" if d.gate_clip is not None else terms


def _biases(d: Direction, gate: str) -> str:
    suffix = f"_{gate}" if gate else ""
    return "".join(f" + {k}{suffix}" for k in ("b", "bU") if _has(d, f"{k}{suffix}"))


def _symbols(d: Direction) -> tuple[str, str, str]:
    """The gate activation, the candidate's and the output's (ONNX f, g, h), as configured."""
    rec = d.recurrent_activation
    gate = "σ" if rec == "sigmoid" else (rec or "f")
    act = d.activation or "g"
    out = d.activation or "h"
    return gate, act, out


def _equations(d: Direction) -> list[str]:
    gate, act, out = _symbols(d)
    if d.kind is CellKind.LSTM:
        def line(g: str, fn: str, peephole: str = "") -> str:
            lhs = "c̃_t" if g == "c" else f"{g}_t"
            p = f" + p_{g} ⊙ {peephole}" if peephole and _has(d, f"p_{g}") else ""
            terms = _pre(d, f"x_t W_{g} + h_{{t-1}} U_{g}{p}{_biases(d, g)}")
            return f"{lhs} = {fn}({terms})   ({GATE_MEANING[g]})"
        lines = [line("i", gate, "c_{t-1}")]
        lines.append("f_t = 1 − i_t   (forget gate: input_forget=1 couples it to the input gate)"
                     if _coupled(d) else line("f", gate, "c_{t-1}"))
        lines += [line("c", act), "c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t", line("o", gate, "c_t"),
                  f"h_t = o_t ⊙ {out}(c_t)"]
        return lines
    if d.kind is CellKind.GRU:
        z_terms = _pre(d, "x_t W_z + h_{t-1} U_z" + _biases(d, "z"))
        r_terms = _pre(d, "x_t W_r + h_{t-1} U_r" + _biases(d, "r"))
        lines = [f"z_t = {gate}({z_terms})   (update gate)", f"r_t = {gate}({r_terms})   (reset gate)"]
        b = " + b_h" if _has(d, "b_h") else ""
        bu = " + bU_h" if _has(d, "bU_h") else ""
        if d.reset_after:
            h_terms = _pre(d, f"x_t W_h{b} + r_t ⊙ (h_{{t-1}} U_h{bu})")
            lines.append(f"h̃_t = {act}({h_terms})   (candidate; linear_before_reset=1: reset applied after the "
                         "matrix product)")
        else:
            h_terms = _pre(d, f"x_t W_h{b} + (r_t ⊙ h_{{t-1}}) U_h{bu}")
            lines.append(f"h̃_t = {act}({h_terms})   (candidate; linear_before_reset=0: reset applied before the "
                         "matrix product, bU_h outside it)")
        lines.append("h_t = z_t ⊙ h_{t-1} + (1 − z_t) ⊙ h̃_t")
        return lines
    fn = d.activation or "f"
    terms = _pre(d, "x_t W + h_{t-1} U" + _biases(d, ""))
    return [f"h_t = {fn}({terms})"]


def _coupled(d: Direction) -> bool:
    return any(note.startswith("input_forget=1") for note in d.notes)


def _param_lines(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    n = max(1, len(d.gates))
    suffix = f"_{d.gates[0]}" if d.gates else ""
    biases = sum(1 for k in ("b", "bU") if _has(d, f"{k}{suffix}"))
    per = f"{H}·({I}+{H})" + {0: "", 1: f" + {H}", 2: f" + 2·{H}"}[biases]
    expr = f"{n} × ({per})" if n > 1 else per
    total = n * (H * (I + H) + biases * H)
    peepholes = sum(1 for g in "ifo" if _has(d, f"p_{g}"))
    if peepholes:
        expr += f" + {peepholes}·{H} (peepholes)"
        total += peepholes * H
    lines = [f"{expr} = {total:,}"]
    if biases == 2:
        lines.append("ONNX keeps two biases per gate, Wb (b) and Rb (bU); they are added, so a framework with "
                     "one bias (Keras) stores b + bU")
    if total != d.params:
        lines.append(f"(the stored blocks hold {d.params:,} values)")
    return lines


def _meaning(d: Direction) -> list[str]:
    H = d.units
    state = "h_t and c_t" if d.kind is CellKind.LSTM else "h_t"
    batch_first = any(note.startswith("layout=1") for note in d.notes)
    y = "[batch, seq_length, num_directions, " if batch_first else "[seq_length, num_directions, batch, "
    finals = "Y_h [num_directions, batch, {0}] the last h_t" + (", Y_c the last c_t" if d.kind is CellKind.LSTM
                                                                else "")
    if batch_first:
        finals = finals.replace("[num_directions, batch,", "[batch, num_directions,")
    lines = [
        f"units = {H} (hidden_size): the size of the hidden state {state} — every step's output has {H} "
        f"features. It is not the number of steps and not the input size (input_dim = {d.input_dim}).",
        f"Outputs of the node: Y {y}{H}] holds h_t of every step; " + finals.format(H) + ".",
    ]
    if d.go_backwards:
        lines.append("This direction reads the sequence from the last step to the first; Y[t] is its state after "
                     "reading x_T … x_t (aligned with the input, not in reading order), and Y_h its state after x_1.")
    if d.activation or d.recurrent_activation:
        lines.append(f"Activations as Keras names: activation={d.activation or '?'}"
                     + (f", recurrent_activation={d.recurrent_activation or '?'}"
                        if d.kind is not CellKind.SIMPLE_RNN else ""))
    for note in d.corrections:
        lines.append(f"Stored layout: {note}.")
    lines += [f"{note}." if not note.endswith(".") else note for note in d.notes]
    return lines
