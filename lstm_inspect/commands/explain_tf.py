"""`explain` for TF1 cells: the equations as TensorFlow computes them (one fused kernel on [x, h],
gate columns i, j, f, o, the run-time forget_bias, peepholes, the projection), the parameter count
term by term, and the answers to the questions TF1 users ask: what `num_units` is, what the output
and the state hold with `num_proj`, what the initial state is, how `dynamic_rnn` and `static_rnn` use
the cell.
"""
from __future__ import annotations

from lstm_inspect.cells.core import CellKind, Direction


def is_tf1(d: Direction) -> bool:
    return d.source_layout.startswith("tf1-")


def _fb(value: float | None) -> str:
    return f"{value:g}" if value is not None else "?"


def equations(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    if d.kind is CellKind.LSTM:
        return _lstm_equations(d)
    if d.kind is CellKind.GRU:
        return [f"[r, u] = σ([x_t, h_{{t-1}}] · gates/kernel + gates/bias)   "
                f"gates/kernel ({I}+{H})×{2 * H}: rows x_t then h_{{t-1}}; columns r, u",
                "r_t = σ(x_t W_r + h_{t-1} U_r + b_r)   (reset gate)",
                "z_t = σ(x_t W_z + h_{t-1} U_z + b_z)   (update gate: TF's u)",
                "h̃_t = tanh(x_t W_h + (r_t ⊙ h_{t-1}) U_h + b_h)   "
                "(candidate: [x_t, r_t ⊙ h_{t-1}] · candidate/kernel + candidate/bias)",
                "h_t = z_t ⊙ h_{t-1} + (1 − z_t) ⊙ h̃_t   (TF: u·h + (1 − u)·c; Keras GRU with reset_after=False)"]
    return [f"h_t = tanh([x_t, h_{{t-1}}] · kernel + bias) = tanh(x_t W + h_{{t-1}} U + b)   "
            f"kernel ({I}+{H})×{H}: rows x_t then h_{{t-1}}",
            "output_t = h_t"]


def _lstm_equations(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    R = d.projection_size or H
    peep = d.has_block("p_i")
    cudnn = d.source_layout == "tf1-cudnn-compatible-lstm"
    order = "i, c, f, o" if cudnn else "i, j, f, o (j = the cell candidate)"
    lines = [f"[i, j, f, o] = [x_t, h_{{t-1}}] · kernel + bias   kernel ({I}+{R})×{4 * H}: rows x_t ({I}) then "
             f"h_{{t-1}} ({R}); columns {order}"]
    bias_f = " + b_f" if d.use_bias else ""
    fb = "" if cudnn else " + forget_bias"
    lines += [
        f"i_t = σ(x_t W_i + h_{{t-1}} U_i + b_i{' + p_i ⊙ c_{t-1}' if peep else ''})   (input gate)",
        f"f_t = σ(x_t W_f + h_{{t-1}} U_f{bias_f}{fb}{' + p_f ⊙ c_{t-1}' if peep else ''})   (forget gate"
        + (f"; forget_bias = {_fb(d.forget_bias)}, added at run time, not stored)" if not cudnn
           else "; a cuDNN-compatible cell adds no forget bias)"),
        "c̃_t = tanh(x_t W_c + h_{t-1} U_c + b_c)   (cell candidate: TF's j)",
        "c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t" + (f", clipped to ±{d.cell_clip:g}" if d.cell_clip else ""),
        f"o_t = σ(x_t W_o + h_{{t-1}} U_o + b_o{' + p_o ⊙ c_t' if peep else ''})   (output gate)",
    ]
    if d.projection_size:
        lines += ["m_t = o_t ⊙ tanh(c_t)",
                  f"h_t = m_t P   (projection P {H}×{R}: h_t and the output have num_proj = {R} features)"
                  + (f", clipped to ±{d.proj_clip:g}" if d.proj_clip else "")]
    else:
        lines.append("h_t = o_t ⊙ tanh(c_t)")
    lines.append("output_t = h_t; state = LSTMStateTuple(c_t, h_t)")
    return lines


def param_lines(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    if d.kind is CellKind.LSTM:
        R = d.projection_size or H
        terms = [f"({I}+{R})·{4 * H}"] + ([f"{4 * H}"] if d.use_bias else [])
        values = (I + R) * 4 * H + (4 * H if d.use_bias else 0)
        if d.has_block("p_i"):
            terms.append(f"3·{H}")
            values += 3 * H
        if d.projection_size:
            terms.append(f"{H}·{R}")
            values += H * R
        names = "kernel + bias" + (" + peepholes" if d.has_block("p_i") else "") + \
            (" + projection" if d.projection_size else "")
    elif d.kind is CellKind.GRU:
        terms = [f"({I}+{H})·{2 * H}", f"{2 * H}", f"({I}+{H})·{H}", f"{H}"]
        values = (I + H) * 3 * H + 3 * H
        names = "gates/kernel + gates/bias + candidate/kernel + candidate/bias"
        if not d.use_bias:
            terms, values = [terms[0], terms[2]], (I + H) * 3 * H
            names = "gates/kernel + candidate/kernel"
    else:
        terms = [f"({I}+{H})·{H}"] + ([f"{H}"] if d.use_bias else [])
        values = (I + H) * H + (H if d.use_bias else 0)
        names = "kernel + bias"
    lines = [f"{' + '.join(terms)} = {values:,}   ({names})"]
    if values != d.params:
        lines.append(f"(the stored blocks hold {d.params:,} values)")
    return lines


def meaning(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    lines = []
    if d.kind is CellKind.LSTM and d.projection_size:
        P = d.projection_size
        lines += [f"num_units = {H}: the size of the cell state c_t. With num_proj = {P} the output and h_t have "
                  f"{P} features, not num_units: the projection P maps o ⊙ tanh(c) from {H} to {P}, and the "
                  f"kernel's recurrent rows take h_{{t-1}} of size {P} (hence {I} + {P} rows).",
                  f"State: LSTMStateTuple(c, h), c first: c (batch, {H}), h (batch, {P})."]
    elif d.kind is CellKind.LSTM:
        lines += [f"num_units = {H}: the size of the state c_t and h_t, so every step's output has {H} features. "
                  f"It is not the number of time steps (any sequence length works) and not the input size "
                  f"(input_dim = {I}, the last axis of x_t).",
                  f"State: LSTMStateTuple(c, h), c first: both (batch, {H})."]
    else:
        lines += [f"num_units = {H}: the size of the state h_t, which is also each step's output. Not the number "
                  f"of time steps and not the input size (input_dim = {I})."]
    out = d.projection_size or H
    lines += [
        "Initial state: dynamic_rnn and static_rnn start from zeros (cell.zero_state(batch_size, dtype), what "
        "passing dtype= asks for); pass initial_state= (an LSTMStateTuple for LSTM cells) to carry a state in, "
        "e.g. the final state of the previous batch.",
        f"dynamic_rnn runs this one cell in a tf.while_loop, the same variables at every step; static_rnn "
        f"unrolls the graph into one copy of the cell per step, all sharing these variables. Both return the "
        f"outputs (batch, time, {out}) (time_major=False) and the final state.",
    ]
    parts = d.path.split("/")
    if any(p.startswith("cell_") or p.startswith("Cell") for p in parts) and \
            any(p in ("multi_rnn_cell", "MultiRNNCell") for p in parts):
        lines.append("MultiRNNCell: cell_0 reads the input, each later cell reads the previous cell's output; the "
                     "state is a tuple with one entry per cell.")
    if d.go_backwards is not None:
        lines.append("bidirectional_dynamic_rnn: outputs is the pair (output_fw, output_bw), usually concatenated "
                     "on the last axis; " + ("this bw cell reads the sequence reversed in time and its outputs are "
                                             "reversed back." if d.go_backwards else "this fw cell reads it forward."))
    if d.kind is CellKind.LSTM:
        if d.source_layout == "tf1-cudnn-compatible-lstm":
            lines.append("Gate order in the kernel's columns: i, c, f, o (cuDNN's canonical order), not Keras's "
                         "i, f, c, o. No forget bias is added at run time (forget_bias 0).")
        else:
            lines.append("Gate order in the kernel's columns: i, j, f, o (j = the cell candidate), not Keras's "
                         "i, f, c, o or PyTorch's i, f, g, o; the kernel stacks the input rows and the h rows.")
            lines.append(f"forget_bias = {_fb(d.forget_bias)} is added to f at run time and is not in the "
                         "checkpoint (1.0 is the BasicLSTMCell/LSTMCell default; give --forget-bias if the model "
                         "set another). Keras, PyTorch and ONNX have no such term: it is added to b_f when "
                         "converting (convert does this).")
    if d.kind is CellKind.GRU:
        lines.append("Gate order: gates/kernel holds r then u; TF's update gate u is z, h_t = u ⊙ h_{t-1} + "
                     "(1 − u) ⊙ h̃_t, as Keras's GRU with reset_after=False.")
    lines.append("Activation (tanh) is not stored: the default is assumed.")
    for note in d.corrections:
        lines.append(f"Stored layout: {note}.")
    return lines
