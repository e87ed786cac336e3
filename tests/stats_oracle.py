"""An independent NumPy truth for `stats` and `plot`, computed from the split blocks of `split-gates`.

Written from the published cell equations (Keras's documentation and source), not from
lstm_inspect.reference: its own activations, its own convolution (shifted slices, not
sliding_window_view), its own loop. Tests compare the tool's numbers with these.
"""
from __future__ import annotations

import json
import zipfile

import numpy as np


def load_split(npz_path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(meta, {direction path: {block name: float64 array}}) of a split-gates archive."""
    with zipfile.ZipFile(npz_path) as z:
        assert z.testzip() is None
    data = np.load(npz_path, allow_pickle=False)
    meta = json.loads(str(data["__meta__"]))
    blocks = {path: {name: data[info["key"]].astype(np.float64) for name, info in d["blocks"].items()}
              for path, d in meta["directions"].items()}
    return meta, blocks


# --- block statistics -------------------------------------------------------------------------

def block_stats(a: np.ndarray) -> dict:
    finite = a[np.isfinite(a)]
    some = finite.size > 0
    return {"shape": list(a.shape), "mean": float(finite.mean()) if some else None,
            "std": float(finite.std()) if some else None, "min": float(finite.min()) if some else None,
            "max": float(finite.max()) if some else None,
            "norm": float(np.linalg.norm(finite)) if some else None,
            "zero_fraction": float(np.count_nonzero(a == 0) / a.size) if a.size else 0.0,
            "nan": int(np.isnan(a).sum()), "inf": int(np.isinf(a).sum())}


def as_matrix(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])


def spectral_norms(blocks: dict[str, np.ndarray]) -> dict[str, float | None]:
    names = [n for n in blocks if n == "U" or n.startswith("U_")]
    order = "ifcozrh"
    names.sort(key=lambda n: order.index(n[2]) if len(n) > 1 else 0)
    out = {}
    for n in names:
        if n != "U":
            out[n] = float(np.linalg.norm(as_matrix(blocks[n]), 2)) if np.isfinite(blocks[n]).all() else None
    whole = np.hstack([as_matrix(blocks[n]) for n in names])
    out["U"] = float(np.linalg.norm(whole, 2)) if np.isfinite(whole).all() else None
    return out


# --- activations ------------------------------------------------------------------------------

def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def activation(name: str, flavor: str):
    if name == "hard_sigmoid":
        if flavor == "keras2":  # Keras 1/2 and tf.keras
            return lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0)
        return lambda x: np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0  # Keras 3: relu6(x + 3) / 6
    return {"tanh": np.tanh, "sigmoid": sigmoid, "relu": lambda x: np.maximum(x, 0.0),
            "softsign": lambda x: x / (1.0 + np.abs(x)), "linear": lambda x: x}[name]


BOUNDS = {"sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "softsign": (-1.0, 1.0)}


# --- the cells, recording gate activations ----------------------------------------------------

def conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution (TensorFlow's padding split), channels last, by shifted slices."""
    rank = w.ndim - 2
    kernel = w.shape[:rank]
    pads = [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]
    xp = np.pad(x, [(0, 0)] + pads + [(0, 0)])
    spatial = x.shape[1:1 + rank]
    out = np.zeros(x.shape[:1] + spatial + (w.shape[-1],))
    for offset in np.ndindex(*kernel):
        window = xp[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, spatial))]
        out += window @ w[offset]
    return out


def gate_steps(kind: str, blocks: dict[str, np.ndarray], x: np.ndarray, act, rec, *, reset_after=False,
               forget_bias=0.0, conv=False) -> list[dict[str, np.ndarray]]:
    """Each step's gate activations, from zero states, first step first."""
    b = lambda name, units: blocks.get(name, np.zeros(units))  # noqa: E731
    mul = conv_same if conv else (lambda v, w: v @ w)
    steps = []
    if kind in ("LSTM", "ConvLSTM"):
        units = blocks["U_i"].shape[-1]
        h_size = blocks["P"].shape[1] if "P" in blocks else units
        shape_h = x.shape[:1] + (x.shape[2:-1] if conv else ()) + (h_size,)
        h, c = np.zeros(shape_h), np.zeros(shape_h[:-1] + (units,))
        for t in range(x.shape[1]):
            z = {g: mul(x[:, t], blocks[f"W_{g}"]) + mul(h, blocks[f"U_{g}"]) + b(f"b_{g}", units)
                 + b(f"bU_{g}", units) for g in "ifco"}
            i = rec(z["i"] + b("p_i", units) * c)
            f = rec(z["f"] + forget_bias + b("p_f", units) * c)
            g = act(z["c"])
            c = f * c + i * g
            o = rec(z["o"] + b("p_o", units) * c)
            h = o * act(c)
            if "P" in blocks:
                h = h @ blocks["P"] + b("bP", h_size)
            steps.append({"i": i, "f": f, "c": g, "o": o})
    elif kind == "GRU":
        units = blocks["U_z"].shape[-1]
        h = np.zeros((x.shape[0], units))
        for t in range(x.shape[1]):
            xt = x[:, t]
            z = rec(xt @ blocks["W_z"] + b("b_z", units) + h @ blocks["U_z"] + b("bU_z", units))
            r = rec(xt @ blocks["W_r"] + b("b_r", units) + h @ blocks["U_r"] + b("bU_r", units))
            if reset_after:
                cand = act(xt @ blocks["W_h"] + b("b_h", units) + r * (h @ blocks["U_h"] + b("bU_h", units)))
            else:
                cand = act(xt @ blocks["W_h"] + b("b_h", units) + (r * h) @ blocks["U_h"])
            h = z * h + (1 - z) * cand
            steps.append({"z": z, "r": r, "h": cand})
    else:
        units = blocks["U"].shape[-1]
        h = np.zeros((x.shape[0], units))
        for t in range(x.shape[1]):
            h = act(x[:, t] @ blocks["W"] + h @ blocks["U"] + b("b", units))
            steps.append({"h": h})
    return steps


def saturation(steps: list[dict[str, np.ndarray]], bounds: dict[str, tuple | None], margin: float = 0.01):
    """(fraction saturated per gate, dead-unit indices per gate, stuck low, stuck high)."""
    fraction, dead, low_count, high_count = {}, {}, {}, {}
    for g, bd in bounds.items():
        if bd is None:
            fraction[g] = dead[g] = None
            continue
        values = np.stack([s[g] for s in steps])  # (steps, batch, ..., units)
        low, high = values <= bd[0] + margin, values >= bd[1] - margin
        units = values.shape[-1]
        flat_low, flat_high = low.reshape(-1, units), high.reshape(-1, units)
        fraction[g] = float((low | high).sum() / values.size)
        dead[g] = [int(u) for u in np.flatnonzero((flat_low | flat_high).all(axis=0))]
        low_count[g] = int(flat_low.all(axis=0).sum())
        high_count[g] = int(flat_high.all(axis=0).sum())
    return fraction, dead, low_count, high_count
