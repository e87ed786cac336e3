"""NumPy reference cells, built only from the per-gate blocks of `split-gates`.

Each function mirrors the Keras cell arithmetic exactly (Keras 2, tf.keras and Keras 3 agree on it),
in float64, so that `verify` can compare it with Keras itself and the split is proven by numbers:

    LSTM       i = σ(x W_i + h U_i + b_i)   f, o likewise; c' = f c + i act(x W_c + h U_c + b_c);
               h' = o act(c')        (CuDNN: the bias of each gate is b + bU)
    GRU        z = σ(x W_z + h U_z + b_z [+ bU_z])   r likewise
               reset_after=False: h~ = act(x W_h + b_h + (r h) U_h)
               reset_after=True:  h~ = act(x W_h + b_h + r (h U_h + bU_h))
               h' = z h + (1 - z) h~
    SimpleRNN  h' = act(x W + h U + b)
    ConvLSTM   the LSTM with `x W` a convolution (the layer's strides, padding, dilation) and `h U`
               a stride-1 'same' convolution.

    LSTM extras (TF1, ONNX, TFLite, PyTorch): peepholes p_i, p_f (on c_{t-1}) and p_o (on c_t),
               a run-time forget_bias added to f, cell_clip, projection h = (o act(c')) P + bP
               with proj_clip; then h has the projection's size and U its rows.
    ONNX extras: gate_clip clips every gate's pre-activation (LSTM i f c o, GRU z r h, RNN) to
               [-gate_clip, gate_clip]; LSTM input_forget couples f = 1 - i; a GRU with
               reset_after=False adds a second bias bU_h outside the reset (ONNX Rbh; Keras has none).
    TFLite extras: CIFG (no W_i: i = 1 - f) and layer norm (ln_<g>: LN(x W + h U) ln + b).

σ is the recurrent activation. `hard_sigmoid` has two definitions: Keras 1/2 and tf.keras
`clip(0.2 x + 0.5, 0, 1)`, Keras 3 `relu6(x + 3) / 6`; callers choose by the producing version.
go_backwards reads the input from the last step to the first and returns the outputs in that
(processing) order, as Keras does. Every call returns the whole output sequence and final states.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

HARD_SIGMOID = {
    "keras2": "clip(0.2x + 0.5, 0, 1) (Keras 1/2, tf.keras)",
    "keras3": "relu6(x + 3) / 6 (Keras 3)",
}


class ReferenceUnsupported(ValueError):
    """The reference cannot compute this direction (unknown activation, unsupported config)."""


def hard_sigmoid_flavor(producer: str | None) -> str:
    """"keras2" for files written by Keras 1, Keras 2 or tf.keras; "keras3" otherwise."""
    return "keras2" if producer in ("keras1", "keras2") else "keras3"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "softplus": _softplus,
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "exponential": np.exp,
    "swish": lambda x: x * _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0))),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "log_sigmoid": lambda x: -_softplus(-x),
    "tanh_shrink": lambda x: x - np.tanh(x),
}
_ALIASES = {None: "linear", "None": "linear", "none": "linear", "hard_swish": "hard_silu"}


def activation(name: str | None, hard_sigmoid: str) -> Callable[[np.ndarray], np.ndarray]:
    """The NumPy function of a Keras activation name; `hard_sigmoid` is "keras2" or "keras3"."""
    key = _ALIASES.get(name, name)  # type: ignore[arg-type]
    if key == "hard_sigmoid":
        if hard_sigmoid == "keras2":
            return lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0)
        return lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if key == "hard_silu":
        return lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    fn = _ACTIVATIONS.get(key) if isinstance(key, str) else None
    if fn is None:
        raise ReferenceUnsupported(f"activation {name!r} has no NumPy reference")
    return fn


def known_activation(name: Any) -> bool:
    key = _ALIASES.get(name, name) if name is None or isinstance(name, str) else object()
    return key in _ACTIVATIONS or key in ("hard_sigmoid", "hard_silu")


# --- blocks -------------------------------------------------------------------------------------

def gate(blocks: Mapping[str, np.ndarray], prefix: str, g: str) -> np.ndarray | None:
    """Block `<prefix>_<g>` (or `<prefix>` for SimpleRNN), as float64; None when absent."""
    name = f"{prefix}_{g}" if g else prefix
    value = blocks.get(name)
    if value is None or is_lazy_matrix(value):
        return value
    return np.asarray(value, dtype=np.float64)


def is_lazy_matrix(value: Any) -> bool:
    """A matrix that computes `x @ M` itself (reading its rows as it goes), passed through unread.

    Such objects set `__array_ufunc__ = None`, so NumPy hands `x @ M` to their `__rmatmul__`; the
    statistics probe uses them to run the reference cell on blocks larger than memory."""
    return not isinstance(value, np.ndarray) and getattr(type(value), "__array_ufunc__", 0) is None


def _need(blocks: Mapping[str, np.ndarray], prefix: str, g: str) -> np.ndarray:
    value = gate(blocks, prefix, g)
    if value is None:
        raise ReferenceUnsupported(f"block {prefix}_{g} is missing" if g else f"block {prefix} is missing")
    return value


def _bias(blocks: Mapping[str, np.ndarray], prefix: str, g: str, units: int) -> np.ndarray:
    value = gate(blocks, prefix, g)
    return np.zeros(units) if value is None else value


# --- convolution ------------------------------------------------------------------------------

def conv_nd(x: np.ndarray, w: np.ndarray, strides: Sequence[int], padding: str,
            dilation: Sequence[int]) -> np.ndarray:
    """TensorFlow/Keras convolution, channels_last: x (B, *spatial, C), w (*k, C, F) -> (B, *out, F)."""
    rank = w.ndim - 2
    kernel = w.shape[:rank]
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    pads = []
    for n, e, s in zip(x.shape[1:1 + rank], effective, strides):
        if padding == "same":
            out = -(-n // s)
            total = max((out - 1) * s + e - n, 0)
            pads.append((total // 2, total - total // 2))
        elif padding == "valid":
            pads.append((0, 0))
        else:
            raise ReferenceUnsupported(f"padding {padding!r} is not supported")
    xp = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    windows = sliding_window_view(xp, effective, axis=tuple(range(1, rank + 1)))
    # windows: (B, *positions, C, *effective); keep every stride-th position and dilation-th tap
    index = (slice(None),) + tuple(slice(None, None, s) for s in strides) + (slice(None),) + \
        tuple(slice(None, None, d) for d in dilation)
    windows = windows[index]
    return np.tensordot(windows, w, axes=(list(range(rank + 2, 2 * rank + 2)) + [rank + 1],
                                          list(range(rank)) + [rank]))


# --- cells ------------------------------------------------------------------------------------

def run(spec: Mapping[str, Any], blocks: Mapping[str, np.ndarray], x: np.ndarray,
        hard_sigmoid: str, record: Callable[[dict[str, np.ndarray]], None] | None = None
        ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run one direction over x (batch, time, ...) from zero states; returns (outputs, states).

    outputs has one entry per step in processing order (batch, time, ...); states are the final
    [h, c] (LSTM, ConvLSTM) or [h] (GRU, SimpleRNN). `record`, when given, is called after each
    step with that step's gate activations: LSTM/ConvLSTM {i, f, c (the candidate act(...)), o},
    GRU {z, r, h (the candidate)}, SimpleRNN {h (the new state)}.
    """
    kind = spec["kind"]
    units = int(spec["units"])
    act = activation(spec.get("activation") or "tanh", hard_sigmoid)
    rec = activation(spec.get("recurrent_activation") or "sigmoid", hard_sigmoid) \
        if kind != "SimpleRNN" else None
    x = np.asarray(x, dtype=np.float64)
    channels_first = kind == "ConvLSTM" and (spec.get("conv") or {}).get("data_format") == "channels_first"
    if channels_first:  # (B, T, C, *s) -> (B, T, *s, C); outputs moved back at the end
        x = np.moveaxis(x, 2, -1)
    steps = range(x.shape[1] - 1, -1, -1) if spec.get("go_backwards") else range(x.shape[1])
    if kind == "LSTM":
        step = _lstm(blocks, units, act, rec, spec, record)
        out_size = blocks["P"].shape[1] if "P" in blocks else units
        states = [np.zeros((x.shape[0], out_size)), np.zeros((x.shape[0], units))]
    elif kind == "GRU":
        step, states = _gru(blocks, units, act, rec, bool(spec.get("reset_after")), _clipper(spec), record), \
            [np.zeros((x.shape[0], units))]
    elif kind == "SimpleRNN":
        step, states = _simple(blocks, units, act, _clipper(spec), record), [np.zeros((x.shape[0], units))]
    elif kind == "ConvLSTM":
        step, shape = _conv_lstm(blocks, units, act, rec, spec.get("conv") or {}, x.shape[2:-1], record)
        states = [np.zeros((x.shape[0],) + shape + (units,))] * 2
    else:
        raise ReferenceUnsupported(f"no reference cell for {kind}")
    outputs = []
    for t in steps:
        states = step(x[:, t], states)
        outputs.append(states[0])
    seq = np.stack(outputs, axis=1)
    if channels_first:
        seq = np.moveaxis(seq, -1, 2)
        states = [np.moveaxis(s, -1, 1) for s in states]
    return seq, list(states)


def gate_activations(spec: Mapping[str, Any], blocks: Mapping[str, np.ndarray], x: np.ndarray,
                     hard_sigmoid: str) -> list[dict[str, np.ndarray]]:
    """The gate activations of each step of `run` (processing order), one dict per step."""
    steps: list[dict[str, np.ndarray]] = []
    run(spec, blocks, x, hard_sigmoid, record=steps.append)
    return steps


def _lstm(blocks, units, act, rec, spec: Mapping[str, Any], record=None):
    """The LSTM of Keras, and with the extras other frameworks store or apply: peepholes p_i, p_f,
    p_o (on c_{t-1} for i and f, on c_t for o), a run-time forget_bias added to f, cell_clip on c,
    a projection h = (o ⊙ act(c)) P (+ bP) clipped by proj_clip; ONNX's gate_clip and input_forget
    (f = 1 - i); TFLite's CIFG (no input-gate blocks: i = 1 - f) and layer normalisation (ln_<g>: a
    gate's pre-activation x W + h U [+ peephole] is normalised over the units, (v - mean) /
    sqrt(var + 1e-8), scaled by ln_<g>, and only then is its bias added: lstm_eval.cc)."""
    cifg = gate(blocks, "W", "i") is None
    gates = "fco" if cifg else "ifco"
    W = {g: _need(blocks, "W", g) for g in gates}
    U = {g: _need(blocks, "U", g) for g in gates}
    b = {g: _bias(blocks, "b", g, units) + _bias(blocks, "bU", g, units) for g in gates}
    b["f"] = b["f"] + float(spec.get("forget_bias") or 0.0)
    ln = {g: gate(blocks, "ln", g) for g in gates}
    peep = {g: _bias(blocks, "p", g, units) for g in "ifo"}
    projection, projection_bias = gate(blocks, "P", ""), gate(blocks, "bP", "")
    cell_clip, proj_clip = spec.get("cell_clip") or 0.0, spec.get("proj_clip") or 0.0
    clip, coupled = _clipper(spec), bool(spec.get("input_forget"))

    def pre(g, x, h, extra=0.0):
        if ln[g] is None:
            return clip(x @ W[g] + h @ U[g] + b[g] + extra)
        v = x @ W[g] + h @ U[g] + extra
        mean = v.mean(axis=-1, keepdims=True)
        var = np.square(v - mean).mean(axis=-1, keepdims=True)
        return clip((v - mean) / np.sqrt(var + 1e-8) * ln[g] + b[g])

    def step(x, states):
        h, c = states
        if cifg:
            f = rec(pre("f", x, h, peep["f"] * c))
            i = 1.0 - f
        else:
            i = rec(pre("i", x, h, peep["i"] * c))
            f = 1.0 - i if coupled else rec(pre("f", x, h, peep["f"] * c))
        candidate = act(pre("c", x, h))
        c = f * c + i * candidate
        if cell_clip > 0:
            c = np.clip(c, -cell_clip, cell_clip)
        o = rec(pre("o", x, h, peep["o"] * c))
        if record is not None:
            record({"i": i, "f": f, "c": candidate, "o": o})
        h = o * act(c)
        if projection is not None:
            h = h @ projection + (projection_bias if projection_bias is not None else 0.0)
            if proj_clip > 0:
                h = np.clip(h, -proj_clip, proj_clip)
        return [h, c]
    return step


def _gru(blocks, units, act, rec, reset_after, clip=lambda v: v, record=None):
    W = {g: _need(blocks, "W", g) for g in "zrh"}
    U = {g: _need(blocks, "U", g) for g in "zrh"}
    b = {g: _bias(blocks, "b", g, units) for g in "zrh"}
    bU = {g: _bias(blocks, "bU", g, units) for g in "zrh"}

    def step(x, states):
        h, = states
        z = rec(clip(x @ W["z"] + b["z"] + h @ U["z"] + bU["z"]))
        r = rec(clip(x @ W["r"] + b["r"] + h @ U["r"] + bU["r"]))
        if reset_after:
            candidate = act(clip(x @ W["h"] + b["h"] + r * (h @ U["h"] + bU["h"])))
        else:  # bU_h (ONNX's Rbh) is added outside the reset; Keras stores no bU here
            candidate = act(clip(x @ W["h"] + b["h"] + (r * h) @ U["h"] + bU["h"]))
        if record is not None:
            record({"z": z, "r": r, "h": candidate})
        return [z * h + (1.0 - z) * candidate]
    return step


def _simple(blocks, units, act, clip=lambda v: v, record=None):
    W, U, b = _need(blocks, "W", ""), _need(blocks, "U", ""), _bias(blocks, "b", "", units)
    bU = _bias(blocks, "bU", "", units)

    def step(x, states):
        h = act(clip(x @ W + states[0] @ U + b + bU))
        if record is not None:
            record({"h": h})
        return [h]
    return step


def _clipper(spec: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """ONNX `clip` (gate_clip): a gate's pre-activation clipped to [-clip, clip]; identity without it."""
    bound = spec.get("gate_clip")
    if bound is None:
        return lambda v: v
    return lambda v: np.clip(v, -float(bound), float(bound))


def conv_params(conv: Mapping[str, Any], rank: int) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
    def tup(value, name):
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,) * rank
        if not isinstance(value, (list, tuple)) or len(value) != rank or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ReferenceUnsupported(f"{name} {value!r} is not {rank} positive integers")
        return tuple(value)
    strides = tup(conv.get("strides", 1), "strides")
    dilation = tup(conv.get("dilation_rate", 1), "dilation_rate")
    padding = str(conv.get("padding", "valid")).lower()
    if padding not in ("same", "valid"):
        raise ReferenceUnsupported(f"padding {padding!r} is not supported")
    return strides, padding, dilation


def conv_output_spatial(spatial: Sequence[int], kernel: Sequence[int], conv: Mapping[str, Any]) -> tuple[int, ...]:
    strides, padding, dilation = conv_params(conv, len(kernel))
    out = []
    for n, k, s, d in zip(spatial, kernel, strides, dilation):
        effective = (k - 1) * d + 1
        out.append(-(-n // s) if padding == "same" else (n - effective) // s + 1)
    return tuple(out)


def _conv_lstm(blocks, units, act, rec, conv, spatial, record=None):
    W = [_need(blocks, "W", g) for g in "ifco"]
    U = [_need(blocks, "U", g) for g in "ifco"]
    b = [_bias(blocks, "b", g, units) for g in "ifco"]
    rank = W[0].ndim - 2
    strides, padding, dilation = conv_params(conv, rank)
    shape = conv_output_spatial(spatial, W[0].shape[:rank], conv)
    ones = (1,) * rank

    def step(x, states):
        h, c = states
        z = [conv_nd(x, W[k], strides, padding, dilation) + b[k] + conv_nd(h, U[k], ones, "same", ones)
             for k in range(4)]
        i, f, o = rec(z[0]), rec(z[1]), rec(z[3])
        candidate = act(z[2])
        c = f * c + i * candidate
        if record is not None:
            record({"i": i, "f": f, "c": candidate, "o": o})
        return [o * act(c), c]
    return step, shape
