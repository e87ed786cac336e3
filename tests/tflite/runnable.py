"""Small fused-operator models the converter never writes from Keras, built with TF's generated object API
(no TensorFlow import) and runnable by tf.lite.Interpreter: an LSTM with peepholes, a projection and layer
normalisation; a CIFG LSTM; a BIDIRECTIONAL_SEQUENCE_LSTM; a time-major UNIDIRECTIONAL_SEQUENCE_RNN.

Each builder returns the file's bytes and the truth: the arrays written per operator role, so the tests
compare the tool's blocks with what was stored (W_g = input_to_g_weights.T ...)."""
from __future__ import annotations

import numpy as np

from .synthetic import ModelWriter

GATE_NAMES = {"i": "input", "f": "forget", "c": "cell", "o": "output"}
TANH = 4  # ActivationFunctionType


def _lstm_inputs(g, rng, prefix: str, units: int, inputs: int, output: int, *, peephole=False, projection=False,
                 cifg=False, layer_norm=False) -> tuple[list[int], dict[str, np.ndarray]]:
    """Positions 1..17 (and the layer-norm coefficients) of an LSTM operator, with the arrays written."""
    truth: dict[str, np.ndarray] = {}

    def const(role: str, shape, scale: float = 0.3) -> int:
        value = (rng.standard_normal(shape) * scale).astype(np.float32)
        truth[role] = value
        return g.const(prefix + role, value)

    pos: list[int] = []
    for g_ in "ifco":
        pos.append(-1 if cifg and g_ == "i" else const(f"input_to_{GATE_NAMES[g_]}_weights", (units, inputs)))
    for g_ in "ifco":
        pos.append(-1 if cifg and g_ == "i" else const(f"recurrent_to_{GATE_NAMES[g_]}_weights", (units, output)))
    for g_ in "ifo":
        pos.append(const(f"cell_to_{GATE_NAMES[g_]}_weights", (units,)) if peephole and not (cifg and g_ == "i")
                   else -1)
    for g_ in "ifco":
        pos.append(-1 if cifg and g_ == "i" else const(f"{GATE_NAMES[g_]}_gate_bias", (units,), 0.1))
    pos.append(const("projection_weights", (output, units)) if projection else -1)
    pos.append(const("projection_bias", (output,), 0.1) if projection else -1)
    norms = [(-1 if cifg and g_ == "i" else const(f"{GATE_NAMES[g_]}_layer_norm_coefficients", (units,), 0.5))
             if layer_norm else -1 for g_ in "ifco"]
    return pos + norms, truth


def fancy_lstm(spg, seed: int = 0, *, batch: int = 2, steps: int = 5, inputs: int = 3, units: int = 4,
               output: int = 3, cifg: bool = False, cell_clip: float = 3.0, proj_clip: float = 0.5):
    """UNIDIRECTIONAL_SEQUENCE_LSTM with peepholes, a projection (units -> output), layer norm; CIFG optional."""
    rng = np.random.default_rng(seed)
    w = ModelWriter(spg)
    g = w.subgraph()
    x = g.tensor("x", (batch, steps, inputs))
    roles, truth = _lstm_inputs(g, rng, "lstm/", units, inputs, output, peephole=True, projection=True,
                                cifg=cifg, layer_norm=True)
    h, c = g.tensor("lstm/h", (batch, output), variable=True), g.tensor("lstm/c", (batch, units), variable=True)
    y = g.tensor("y", (batch, steps, output))
    options = spg.UnidirectionalSequenceLSTMOptionsT()
    options.fusedActivationFunction, options.cellClip, options.projClip, options.timeMajor = TANH, cell_clip, \
        proj_clip, False
    g.op("UNIDIRECTIONAL_SEQUENCE_LSTM", [x] + roles[:17] + [h, c] + roles[17:], [y], options)
    g.io([x], [y])
    return w.bytes(), truth


def bidirectional_lstm(spg, seed: int = 1, *, batch: int = 2, steps: int = 4, inputs: int = 3, units: int = 4,
                       merge: bool = False):
    """BIDIRECTIONAL_SEQUENCE_LSTM: two outputs, batch major (time_major set false explicitly); or merged
    outputs, time major. (TF 2.21's kernel gives run-to-run different results for merged outputs in batch-major
    layout: uninitialised memory; those are not written here.)"""
    rng = np.random.default_rng(seed)
    w = ModelWriter(spg)
    g = w.subgraph()
    shape = (steps, batch) if merge else (batch, steps)
    x = g.tensor("x", shape + (inputs,))
    fw, fw_truth = _lstm_inputs(g, rng, "bi/fw/", units, inputs, units)
    bw, bw_truth = _lstm_inputs(g, rng, "bi/bw/", units, inputs, units)
    states = [g.tensor(f"bi/state{k}", (batch, units), variable=True) for k in range(4)]
    ys = [g.tensor("y", shape + (2 * units,))] if merge else [g.tensor(f"y{k}", shape + (units,)) for k in range(2)]
    options = spg.BidirectionalSequenceLSTMOptionsT()
    options.fusedActivationFunction, options.cellClip, options.mergeOutputs, options.timeMajor = TANH, 10.0, merge, merge
    g.op("BIDIRECTIONAL_SEQUENCE_LSTM", [x] + fw[:17] + bw[:17] + states + [-1] * 9, ys, options)
    g.io([x], ys)
    return w.bytes(), {"forward": fw_truth, "backward": bw_truth}


def time_major_rnn(spg, seed: int = 2, *, batch: int = 2, steps: int = 5, inputs: int = 3, units: int = 4):
    rng = np.random.default_rng(seed)
    w = ModelWriter(spg)
    g = w.subgraph()
    x = g.tensor("x", (steps, batch, inputs))
    truth = {"weights": (rng.standard_normal((units, inputs)) * 0.5).astype(np.float32),
             "recurrent_weights": (rng.standard_normal((units, units)) * 0.5).astype(np.float32),
             "bias": (rng.standard_normal(units) * 0.1).astype(np.float32)}
    ins = [g.const(f"rnn/{k}", v) for k, v in truth.items()] + [g.tensor("rnn/h", (batch, units), variable=True)]
    y = g.tensor("y", (steps, batch, units))
    options = spg.SequenceRNNOptionsT()
    options.timeMajor, options.fusedActivationFunction = True, TANH
    g.op("UNIDIRECTIONAL_SEQUENCE_RNN", [x] + ins, [y], options)
    g.io([x], [y])
    return w.bytes(), truth


def write_all(spg, folder) -> dict[str, tuple]:
    """Every runnable model written into folder: name -> (path, truth)."""
    out = {}
    for name, (data, truth) in {"fancy_lstm": fancy_lstm(spg), "cifg_lstm": fancy_lstm(spg, 3, cifg=True),
                                "bidirectional_lstm": bidirectional_lstm(spg),
                                "bidirectional_lstm_merged": bidirectional_lstm(spg, 4, merge=True),
                                "rnn_time_major": time_major_rnn(spg)}.items():
        path = folder / f"{name}.tflite"
        path.write_bytes(data)
        out[name] = (path, truth)
    return out
