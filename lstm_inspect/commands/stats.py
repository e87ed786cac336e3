"""`stats`: per-gate statistics of every recurrent direction, as plain data (the JSON contract).

Built on the framework-neutral `Direction`/`Block` only, so it works for every format a reader
opens. Everything is float64 and streamed (see `blockmath`): memory does not grow with the model.

Per direction:

* `blocks`: per block (W, U, b, bU, peepholes, layer-norm, projection): shape, mean, std, min, max,
  Frobenius norm (over the finite values), fraction of exact zeros, NaN and Inf counts;
* `spectral_norm`: σ₁ of each U block and of the whole recurrent kernel `U` (the U blocks side by
  side, gates in canonical order), exact or iterative with a stated tolerance (`blockmath`);
* `forget_bias`: the effective forget-gate bias (stored b_f + second bias bU_f + run-time
  forget_bias) and the fraction of units whose forget gate, at zero input and zero state, starts
  above 0.5 / 0.9 under the configured recurrent activation. GRU: the update gate z, which keeps
  the state (h' = z h + (1 − z) h~) as the forget gate does;
* `saturation` and `dead_units`: the probe (`Probe`) runs the NumPy reference cell
  (`lstm_inspect.reference`) and counts, per gate, activations within `margin` of their
  activation's bounds (0/1 sigmoid and hard_sigmoid, −1/1 tanh and softsign), and the units whose
  activations never leave that band (dead for that gate).

The probe input is `numpy.random.default_rng(seed).standard_normal((samples, steps, input_dim))`
(or zeros), fed to the cell from zero states, first step first (go_backwards only changes which
input comes first; the probe's inputs are independent draws). ConvLSTM: the input is a grid of
`CONV_PROBE_GRID[rank]` positions per spatial axis, `(samples, steps, *grid, channels)`, convolved
with stride 1, no dilation and 'same' padding: the Direction does not carry the layer's strides or
dilation, and for independent normal inputs they change which positions exist, not the
distribution of a gate's pre-activation at a position; a unit is a filter over every position.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lstm_inspect import reference as ref
from lstm_inspect.cells import CellKind, Direction, directions, select
from lstm_inspect.commands import blockmath
from lstm_inspect.commands.blockmath import MatrixView, Moments, SpectralNorm, StreamedMatrix
from lstm_inspect.model import Model

CONV_PROBE_GRID = {1: 16, 2: 8, 3: 4}  # probe positions per spatial axis, by kernel rank
PROBE_DENSE_MAX_BYTES = 32 << 20  # larger 2-D blocks are streamed through the probe, never held
MAX_LISTED_UNITS = 64  # dead unit indices listed per gate (the count is always complete)
FORGET_THRESHOLDS = ("0.5", "0.9")

# Activations with two finite bounds, where saturation means something.
ACTIVATION_BOUNDS: dict[str, tuple[float, float]] = {
    "sigmoid": (0.0, 1.0), "hard_sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "softsign": (-1.0, 1.0),
}
_KEEP_GATE = {CellKind.LSTM: "f", CellKind.CONV_LSTM: "f", CellKind.GRU: "z"}
_CANDIDATE_GATES = frozenset({"c", "h"})  # computed with `activation`; the others with the recurrent one


class ProbeKind(str, Enum):
    NORMAL = "normal"
    ZEROS = "zeros"


@dataclass(frozen=True)
class Probe:
    """The stated input of the saturation probe."""

    kind: ProbeKind = ProbeKind.NORMAL
    samples: int = 32
    steps: int = 5
    seed: int = 0
    margin: float = 0.01

    def inputs(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind is ProbeKind.ZEROS:
            return np.zeros(shape)
        return np.random.default_rng(self.seed).standard_normal(shape)

    def to_dict(self) -> dict[str, Any]:
        text = ("zeros" if self.kind is ProbeKind.ZEROS else
                f"numpy.random.default_rng({self.seed}).standard_normal((samples, steps, input_dim))")
        return {"kind": self.kind.value, "samples": self.samples, "steps": self.steps, "seed": self.seed,
                "margin": self.margin, "input": text, "initial_state": "zeros",
                "convlstm_grid": {str(k): v for k, v in CONV_PROBE_GRID.items()},
                "convlstm": "stride 1, no dilation, 'same' padding; a unit is a filter over every position"}


# ------------------------------------------------------------------------------------------------
# Entry points

def stats_data(path: str, patterns: Sequence[str] = (), probe: Probe = Probe()) -> dict[str, Any]:
    """The `stats --format json` object of one file (runs in the guarded child)."""
    from lstm_inspect.formats import open_model
    with open_model(path) as model:
        return model_stats(model, select(directions(model), patterns), probe)


def model_stats(model: Model, dirs: Sequence[Direction], probe: Probe = Probe()) -> dict[str, Any]:
    flavor = hard_sigmoid_flavor(model, dirs)
    return {
        "file": model.file,
        "format": model.format,
        "framework": model.framework.value,
        "probe": {**probe.to_dict(), "hard_sigmoid": ref.HARD_SIGMOID[flavor]},
        "spectral": spectral_method_text(),
        "directions": [direction_stats(d, probe, flavor, model.keras_version) for d in dirs],
    }


def spectral_method_text() -> dict[str, Any]:
    return {"exact_max_elements": blockmath.EXACT_MAX_ELEMENTS, "rtol": blockmath.SPECTRAL_RTOL,
            "method": "np.linalg.norm(U, 2) up to exact_max_elements; else Lanczos (full "
                      "reorthogonalisation) on the Gram matrix of the smaller side, stopped when "
                      "the residual bound is <= 2 rtol theta (sigma within rtol)",
            "matrix": "a block's axes but the last are rows: a ConvLSTM kernel (k..., in, out) is (k...*in, out)"}


def hard_sigmoid_flavor(model: Model, dirs: Sequence[Direction]) -> str:
    """Which hard_sigmoid the producing version computes (the same rule as `verify`)."""
    from lstm_inspect.commands.verify import _producer
    return ref.hard_sigmoid_flavor(_producer(model.keras_version, dirs))


def activations_of(d: Direction, keras_version: str | None) -> tuple[str, str | None, list[str]]:
    """(activation, recurrent activation, notes): the configured ones, or the defaults `verify`
    assumes when the file does not say."""
    from lstm_inspect.commands.verify import _standalone_keras2
    notes = []
    act, rec = d.activation, d.recurrent_activation
    if act is None:
        act = "tanh"
        notes.append("activation not stated: assumed tanh")
    if d.kind is CellKind.SIMPLE_RNN:
        return act, None, notes
    if rec is None:
        rec = "hard_sigmoid" if _standalone_keras2(keras_version) else "sigmoid"
        notes.append(f"recurrent_activation not stated: assumed {rec}")
    return act, rec, notes


def direction_stats(d: Direction, probe: Probe, flavor: str, keras_version: str | None = None) -> dict[str, Any]:
    act, rec, notes = activations_of(d, keras_version)
    moments = {b.name: blockmath.block_moments(b) for b in d.blocks}
    spectral = recurrent_spectral_norms(d, moments)
    probed = run_probe(d, probe, act, rec, flavor, moments)
    return {
        "path": d.path, "kind": d.kind.value, "class": d.class_name, "units": d.units,
        "input_dim": d.input_dim, "gates": list(d.gates), "reset_after": d.reset_after,
        "activation": act, "recurrent_activation": rec,
        "blocks": {name: m.to_dict() for name, m in moments.items()},
        "spectral_norm": {name: s.value for name, s in spectral.items()},
        "spectral_method": {name: s.to_dict() for name, s in spectral.items()},
        "forget_bias": forget_gate_bias(d, rec, flavor),
        "saturation": probed.saturation, "saturation_bounds": probed.bounds,
        "dead_units": probed.dead_units, "probe_note": probed.note,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------------------
# Spectral norms of the recurrent kernel

def recurrent_blocks(d: Direction) -> list:
    """The U blocks in canonical gate order (SimpleRNN: the single `U`)."""
    return [b for b in d.blocks if b.name == "U" or b.name.startswith("U_")]


def recurrent_spectral_norms(d: Direction, moments: Mapping[str, Moments]) -> dict[str, SpectralNorm]:
    blocks = recurrent_blocks(d)
    finite = not any(moments[b.name].nan or moments[b.name].inf for b in blocks)
    if finite and len(blocks) > 1 and all(blockmath.uses_row_gram(MatrixView((b,))) for b in blocks):
        return _norms_from_row_grams(blocks)
    out: dict[str, SpectralNorm] = {}
    for b in blocks:
        if b.name != "U":
            out[b.name] = _norm_or_none(MatrixView((b,)), [moments[b.name]])
    if blocks:
        out["U"] = _norm_or_none(MatrixView(tuple(blocks)), [moments[b.name] for b in blocks])
    return out


def _norms_from_row_grams(blocks: Sequence) -> dict[str, SpectralNorm]:
    """Large gates side by side share their rows: U Uᵀ = Σ_g U_g U_gᵀ, so the whole kernel's Gram
    matrix is the sum of the gates' (one pass over U instead of two; two Gram matrices in memory)."""
    out: dict[str, SpectralNorm] = {}
    total = None
    for b in blocks:
        g = blockmath.gram(MatrixView((b,)), rows=True)
        out[b.name] = blockmath.norm_from_gram(g)
        if total is None:
            total = g
        else:
            total += g
        del g
    out["U"] = blockmath.norm_from_gram(total)
    return out


def _norm_or_none(view: MatrixView, moments: Iterable[Moments]) -> SpectralNorm:
    if any(m.nan or m.inf for m in moments):
        return SpectralNorm(None, "none")  # undefined with NaN or Inf in the matrix
    return blockmath.spectral_norm(view)


# ------------------------------------------------------------------------------------------------
# The effective forget-gate bias

def forget_gate_bias(d: Direction, rec: str | None, flavor: str) -> dict[str, Any] | None:
    gate = _KEEP_GATE.get(d.kind)
    if gate is None:
        return None
    parts = {name: _vector(d, f"{name}_{gate}") for name in ("b", "bU")}
    runtime = float(d.forget_bias or 0.0) if gate == "f" else 0.0
    effective = np.zeros(d.units) + runtime
    for vec in parts.values():
        if vec is not None:
            effective = effective + vec
    out: dict[str, Any] = {
        "gate": gate,
        "stored_mean": _finite_mean(parts["b"]),
        "second_bias_mean": _finite_mean(parts["bU"]),
        "runtime": runtime if gate == "f" else None,
        **_summary(effective),
        "activation": rec,
        "open_fraction": None,
    }
    try:
        start = ref.activation(rec or "sigmoid", flavor)(effective)
    except ref.ReferenceUnsupported:
        return out
    out["open_fraction"] = {t: float(np.count_nonzero(start > float(t))) / d.units if d.units else 0.0
                            for t in FORGET_THRESHOLDS}
    return out


def _vector(d: Direction, name: str) -> np.ndarray | None:
    if not d.has_block(name):
        return None
    return blockmath.as_float64(d.block(name).read(), f"block {name}").reshape(-1)


def _finite_mean(vec: np.ndarray | None) -> float | None:
    if vec is None:
        return None
    good = vec[np.isfinite(vec)]
    return float(good.mean()) if good.size else None


def _summary(vec: np.ndarray) -> dict[str, Any]:
    good = vec[np.isfinite(vec)]
    if not good.size:
        return {"mean": None, "min": None, "max": None, "nonfinite": int(vec.size)}
    return {"mean": float(good.mean()), "min": float(good.min()), "max": float(good.max()),
            "nonfinite": int(vec.size - good.size)}


# ------------------------------------------------------------------------------------------------
# The saturation probe

@dataclass(frozen=True)
class ProbeResult:
    saturation: dict[str, float | None] | None = None
    bounds: dict[str, list[float] | None] | None = None
    dead_units: dict[str, dict[str, Any] | None] | None = None
    note: str | None = None


class SaturationCounter:
    """Per gate: activations within `margin` of the bounds, and units that never leave the band."""

    def __init__(self, bounds: Mapping[str, tuple[float, float] | None], units: int, margin: float) -> None:
        self.bounds, self.margin = dict(bounds), margin
        self.total = {g: 0 for g in bounds}
        self.saturated = {g: 0 for g in bounds}
        self.always = {g: np.ones(units, dtype=bool) for g in bounds}
        self.always_low = {g: np.ones(units, dtype=bool) for g in bounds}
        self.always_high = {g: np.ones(units, dtype=bool) for g in bounds}

    def add(self, gates: Mapping[str, np.ndarray]) -> None:
        for g, values in gates.items():
            bounds = self.bounds.get(g)
            if bounds is None:
                continue
            low = values <= bounds[0] + self.margin
            high = values >= bounds[1] - self.margin
            either = low | high
            axes = tuple(range(values.ndim - 1))  # units are the last axis
            self.total[g] += values.size
            self.saturated[g] += int(np.count_nonzero(either))
            self.always[g] &= either.all(axis=axes)
            self.always_low[g] &= low.all(axis=axes)
            self.always_high[g] &= high.all(axis=axes)

    def result(self) -> ProbeResult:
        saturation: dict[str, float | None] = {}
        dead: dict[str, dict[str, Any] | None] = {}
        for g, bounds in self.bounds.items():
            if bounds is None or not self.total[g]:
                saturation[g], dead[g] = None, None
                continue
            saturation[g] = self.saturated[g] / self.total[g]
            units = np.flatnonzero(self.always[g])
            dead[g] = {"count": int(units.size), "fraction": units.size / self.always[g].size,
                       "stuck_low": int(np.count_nonzero(self.always_low[g])),
                       "stuck_high": int(np.count_nonzero(self.always_high[g])),
                       "units": [int(u) for u in units[:MAX_LISTED_UNITS]]}
        return ProbeResult(saturation, {g: (list(b) if b else None) for g, b in self.bounds.items()}, dead)


def gate_bounds(d: Direction, act: str, rec: str | None) -> dict[str, tuple[float, float] | None]:
    """Each probed gate's activation bounds (None for an activation without two finite bounds)."""
    gates = d.gates or ("h",)
    return {g: ACTIVATION_BOUNDS.get(str(act if g in _CANDIDATE_GATES else rec).lower()) for g in gates}


def probe_input_shape(d: Direction, probe: Probe) -> tuple[int, ...]:
    if d.kind is not CellKind.CONV_LSTM:
        return (probe.samples, probe.steps, d.input_dim)
    rank = len(d.kernel_size) if d.kernel_size else len(d.block(f"W_{d.gates[0]}").shape) - 2
    grid = (CONV_PROBE_GRID.get(rank, 4),) * rank
    return (probe.samples, probe.steps) + grid + (d.input_dim,)


def probe_spec(d: Direction, act: str, rec: str | None) -> dict[str, Any]:
    return {"kind": d.kind.value, "units": d.units, "activation": act, "recurrent_activation": rec,
            "reset_after": d.reset_after, "forget_bias": d.forget_bias, "cell_clip": d.cell_clip,
            "proj_clip": d.proj_clip,
            "conv": {"strides": 1, "padding": "same", "dilation_rate": 1, "data_format": "channels_last"}}


def probe_blocks(d: Direction) -> dict[str, Any]:
    """The blocks for the reference cell: float64 arrays, or StreamedMatrix for large 2-D ones."""
    out: dict[str, Any] = {}
    for b in d.blocks:
        if len(b.shape) == 2 and b.size * 8 > PROBE_DENSE_MAX_BYTES:
            out[b.name] = StreamedMatrix(b)
        else:
            out[b.name] = blockmath.as_float64(b.read(), f"block {b.name}")
    return out


def run_probe(d: Direction, probe: Probe, act: str, rec: str | None, flavor: str,
              moments: Mapping[str, Moments]) -> ProbeResult:
    if any(b.name.startswith("ln_") for b in d.blocks):
        return ProbeResult(note="not probed: the reference cell does not model layer normalisation")
    bad = [name for name, m in moments.items() if m.nan or m.inf]
    if bad:
        return ProbeResult(note=f"not probed: NaN or Inf in {', '.join(bad)}")
    for name in (act, rec):
        if name is not None and not ref.known_activation(name):
            return ProbeResult(note=f"not probed: activation {name!r} has no NumPy reference")
    counter = SaturationCounter(gate_bounds(d, act, rec), d.units, probe.margin)
    x = probe.inputs(probe_input_shape(d, probe))
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            ref.run(probe_spec(d, act, rec), probe_blocks(d), x, flavor, record=counter.add)
    except ref.ReferenceUnsupported as exc:
        return ProbeResult(note=f"not probed: {exc}")
    return counter.result()


# ------------------------------------------------------------------------------------------------
# diff --stats: the same statistics for A and B side by side

def weight_stats(model: Model, d: Direction) -> dict[str, Any]:
    """The statistics of `stats` without the probe: blocks, spectral norms, effective forget bias."""
    act, rec, notes = activations_of(d, model.keras_version)
    moments = {b.name: blockmath.block_moments(b) for b in d.blocks}
    spectral = recurrent_spectral_norms(d, moments)
    return {"blocks": {name: m.to_dict() for name, m in moments.items()},
            "spectral_norm": {name: s.value for name, s in spectral.items()},
            "spectral_method": {name: s.to_dict() for name, s in spectral.items()},
            "forget_bias": forget_gate_bias(d, rec, hard_sigmoid_flavor(model, [d])), "notes": notes}


def diff_stats(model_a: Model, a: Direction, model_b: Model, b: Direction) -> dict[str, Any]:
    """Per gate, A and B: bias mean, W and U norms, U's spectral norm; and which gate moved most.

    The bias of a gate is b_g + bU_g (means); "moved most" compares absolute changes of bias means
    and relative changes of norms and spectral norms."""
    sa, sb = weight_stats(model_a, a), weight_stats(model_b, b)
    gates = {g: _gate_pair(sa, sb, g) for g in (a.gates or ("",))}
    return {"a": sa, "b": sb, "gates": {g or "-": v for g, v in gates.items()},
            "moved_most": _moved_most({g or "-": v for g, v in gates.items()}),
            "whole_spectral_norm": [sa["spectral_norm"].get("U"), sb["spectral_norm"].get("U")]}


def _gate_pair(sa: Mapping[str, Any], sb: Mapping[str, Any], gate: str) -> dict[str, list[float | None]]:
    suffix = f"_{gate}" if gate else ""

    def of(s: Mapping[str, Any]) -> dict[str, float | None]:
        blocks = s["blocks"]
        means = [blocks[k]["mean"] for k in (f"b{suffix}", f"bU{suffix}") if k in blocks]
        norms = [blocks[k]["norm"] for k in (f"W{suffix}", f"U{suffix}") if k in blocks]
        return {"bias_mean": None if not means or None in means else float(sum(means)),
                "W_norm": blocks.get(f"W{suffix}", {}).get("norm"),
                "U_norm": blocks.get(f"U{suffix}", {}).get("norm"),
                "norm": None if None in norms else float(np.sqrt(sum(n * n for n in norms))),
                "spectral_norm": s["spectral_norm"].get(f"U{suffix}")}
    x, y = of(sa), of(sb)
    return {key: [x[key], y[key]] for key in x}


def _moved_most(gates: Mapping[str, Mapping[str, list]]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for key, relative in (("bias_mean", False), ("norm", True), ("spectral_norm", True)):
        best = None
        for gate, values in gates.items():
            x, y = values[key]
            if x is None or y is None:
                continue
            if relative:
                if x == 0:
                    continue
                change = (y - x) / abs(x)
            else:
                change = y - x
            if abs(change) > (abs(best["change"]) if best else 0.0):  # None: nothing moved
                best = {"gate": gate, "a": x, "b": y, "change": change, "relative": relative}
        out[key] = best
    return out
