"""`explain`: each recurrent direction's equations with the model's real sizes, the parameter count
derived term by term, and what `units`, `return_sequences`, `return_state` and `stateful` mean here.

Produces plain data (`Explanation`) that is rendered as text or Markdown.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from lstm_inspect.cells import GATE_MEANING, CellKind, Direction


@dataclass(frozen=True)
class Explanation:
    title: str
    equations: tuple[str, ...]
    shapes: tuple[str, ...]
    params: tuple[str, ...]
    meaning: tuple[str, ...]


def _dims(shape) -> str:
    return "×".join(str(d) for d in shape)


def _act(name: str | None, default: str) -> str:
    return name or default


def explain(d: Direction) -> Explanation:
    if d.source_layout.startswith("onnx-"):  # the operator's own equations and outputs
        from lstm_inspect.commands.explain_onnx import explain_onnx
        return explain_onnx(d)
    from lstm_inspect.commands import explain_tf
    if explain_tf.is_tf1(d):  # TF1 cells: TensorFlow's own equations (fused [x, h] kernel, forget_bias)
        return Explanation(
            title=f"{d.path} — {d.kind.value} (TF1 {d.class_name}): input_dim {d.input_dim}, num_units {d.units}"
                  + (f", num_proj {d.projection_size}" if d.projection_size else ""),
            equations=tuple(explain_tf.equations(d)), shapes=tuple(f"{b.name}: {_dims(b.shape)}" for b in d.blocks),
            params=tuple(explain_tf.param_lines(d)), meaning=tuple(explain_tf.meaning(d)))
    if d.source_layout.startswith("tflite-"):  # TFLite's own equations (cell_clip, layer norm, loops...)
        from lstm_inspect.commands.explain_tflite import explain_tflite
        return explain_tflite(d)
    return Explanation(
        title=f"{d.path} — {d.kind.value} ({d.class_name}): input_dim {d.input_dim}, units {d.units}",
        equations=tuple(_equations(d)),
        shapes=tuple(f"{b.name}: {_dims(b.shape)}" for b in d.blocks),
        params=tuple(_param_lines(d)),
        meaning=tuple(_meaning(d)),
    )


def _bias(d: Direction, gate: str, recurrent_side: bool = False) -> str:
    if not d.use_bias:
        return ""
    name = f"bU_{gate}" if recurrent_side else f"b_{gate}"
    return f" + {name}"


def _gate_act(d: Direction) -> tuple[str, str]:
    """Symbols for the recurrent (gate) activation and the main activation, as configured."""
    rec = _act(d.recurrent_activation, "sigmoid")
    act = _act(d.activation, "tanh")
    return ("σ" if rec == "sigmoid" else rec), act


def _equations(d: Direction) -> list[str]:
    sig, act = _gate_act(d)
    op = " * " if d.kind is CellKind.CONV_LSTM else " "
    x, h = ("X_t", "H_{t-1}") if d.kind is CellKind.CONV_LSTM else ("x_t", "h_{t-1}")
    two_bias = any(b.name.startswith("bU_") for b in d.blocks)
    if d.kind in (CellKind.LSTM, CellKind.CONV_LSTM):
        lines = []
        for g, fn in (("i", sig), ("f", sig), ("c", act), ("o", sig)):
            lhs = "c̃_t" if g == "c" else f"{g}_t"
            extra = _bias(d, g, True) if two_bias else ""
            lines.append(f"{lhs} = {fn}({x}{op}W_{g} + {h}{op}U_{g}{_bias(d, g)}{extra})"
                         f"   ({GATE_MEANING[g]})")
        c, hh = ("C", "H") if d.kind is CellKind.CONV_LSTM else ("c", "h")
        lines += [f"{c}_t = f_t ⊙ {c}_{{t-1}} + i_t ⊙ c̃_t", f"{hh}_t = o_t ⊙ {act}({c}_t)"]
        if d.kind is CellKind.CONV_LSTM:
            lines.append("where * is the convolution over the spatial axes (padding, strides as configured)")
        return lines
    if d.kind is CellKind.GRU:
        if d.reset_after:
            lines = [f"z_t = {sig}(x_t W_z{_bias(d, 'z')} + h_{{t-1}} U_z{_bias(d, 'z', True)})   (update gate)",
                     f"r_t = {sig}(x_t W_r{_bias(d, 'r')} + h_{{t-1}} U_r{_bias(d, 'r', True)})   (reset gate)",
                     f"h̃_t = {act}(x_t W_h{_bias(d, 'h')} + r_t ⊙ (h_{{t-1}} U_h{_bias(d, 'h', True)}))"
                     "   (candidate; reset applied after the matrix product: reset_after=True)"]
        else:
            lines = [f"z_t = {sig}(x_t W_z + h_{{t-1}} U_z{_bias(d, 'z')})   (update gate)",
                     f"r_t = {sig}(x_t W_r + h_{{t-1}} U_r{_bias(d, 'r')})   (reset gate)",
                     f"h̃_t = {act}(x_t W_h + (r_t ⊙ h_{{t-1}}) U_h{_bias(d, 'h')})"
                     "   (candidate; reset applied before the matrix product: reset_after=False)"]
        lines.append("h_t = z_t ⊙ h_{t-1} + (1 − z_t) ⊙ h̃_t")
        return lines
    b = " + b" if d.use_bias else ""
    return [f"h_t = {act}(x_t W + h_{{t-1}} U{b})"]


def _param_lines(d: Direction) -> list[str]:
    H, I = d.units, d.input_dim
    n = max(1, len(d.gates))
    suffix = f"_{d.gates[0]}" if d.gates else ""
    biases = sum(1 for b in d.blocks if b.name in (f"b{suffix}", f"bU{suffix}"))  # per gate: 0, 1 or 2
    if d.kind is CellKind.CONV_LSTM:
        k = math.prod(d.kernel_size or (1,))
        ks = "×".join(str(v) for v in d.kernel_size or ())
        bias = f" + {H}" if d.use_bias else ""
        expr = f"{n} × ({k}·{I}·{H} + {k}·{H}·{H}{bias})"
        per = k * I * H + k * H * H + (H if d.use_bias else 0)
    else:
        bias_terms = {0: "", 1: f" + {H}", 2: f" + 2·{H}"}[biases]
        expr = f"{H}·({I}+{H}){bias_terms}"
        per = H * (I + H) + biases * H
        expr = f"{n} × ({expr})" if n > 1 else expr
    total = n * per
    lines = [f"{expr} = {total:,}"]
    if d.kind is CellKind.CONV_LSTM:
        lines.append(f"where {k} = the kernel's {ks} positions, {I} input channels, {H} filters")
    if total != d.params:  # cannot happen for a consistent file; say so rather than hide it
        lines.append(f"(the stored blocks hold {d.params:,} values)")
    if d.is_cudnn:
        lines.append("cuDNN keeps two biases per gate (input side b and recurrent side bU); "
                     "a plain Keras layer folds them into one")
    return lines


def _meaning(d: Direction) -> list[str]:
    H = d.units
    state = "h_t and c_t" if d.kind in (CellKind.LSTM, CellKind.CONV_LSTM) else "h_t"
    unit_word = "filters (channels of the hidden state)" if d.kind is CellKind.CONV_LSTM else "units"
    input_word = "input channels" if d.kind is CellKind.CONV_LSTM else "the last axis of x_t"
    lines = [
        f"units = {H}: the size of the hidden state {state} ({unit_word}) — every timestep's output has "
        f"{H} features. It is not the number of timesteps (any sequence length works) and not the "
        f"input size (input_dim = {d.input_dim}, {input_word}).",
    ]
    one = "(batch, ..., " + f"{H})" if d.kind is CellKind.CONV_LSTM else f"(batch, {H})"
    seq = "(batch, timesteps, ..., " + f"{H})" if d.kind is CellKind.CONV_LSTM else f"(batch, timesteps, {H})"
    rs = d.return_sequences
    lines.append(f"Output: return_sequences=False gives the last h_t only, {one}; "
                 f"return_sequences=True gives h_t for every timestep, {seq}."
                 + (f" This layer has return_sequences={rs}." if rs is not None else ""))
    states = f"[output, h_T {one}, c_T {one}]" if d.kind in (CellKind.LSTM, CellKind.CONV_LSTM) \
        else f"[output, h_T {one}]"
    lines.append(f"return_state=True returns {states}."
                 + (f" This layer has return_state={d.return_state}." if d.return_state is not None else ""))
    lines.append("stateful=True keeps the final " + state + " of each sample in a batch as the initial state "
                 "of the same sample in the next batch (until reset_states()); the batch size must be fixed."
                 + (f" This layer has stateful={d.stateful}." if d.stateful is not None else ""))
    if d.go_backwards:
        lines.append("go_backwards=True: the sequence is read from the last timestep to the first.")
    sig, act = d.recurrent_activation, d.activation
    if act or sig:
        lines.append(f"Activations configured: activation={act or '?'}"
                     + (f", recurrent_activation={sig}" if d.kind is not CellKind.SIMPLE_RNN else ""))
    if sig == "hard_sigmoid":
        lines.append("recurrent_activation is hard_sigmoid: Keras 2 computes clip(0.2·x + 0.5, 0, 1), "
                     "Keras 3 computes relu6(x + 3) / 6 — the same weights give different outputs.")
    for note in d.corrections:
        lines.append(f"Stored layout: {note}.")
    return lines
