"""`stats` and `diff --stats`: every number equals an independent NumPy computation on the split blocks.

The truth (tests/stats_oracle.py) is computed from `split-gates` output with NumPy alone: block
moments, `np.linalg.norm(U, 2)`, the effective forget bias, and the probe's gate activations from
its own cell loop. Files: the Keras zoo (every kind, both GRU variants, ConvLSTM 1-3D, CuDNN,
Bidirectional, stacked, nested; built by Keras at test time), the real corpus, h5py-written files
with chosen values (NaN, Inf, all-zero gates, dead units), and Directions built in memory for the
blocks other frameworks add (peepholes, projection, forget_bias, quantized weights, layer norm).
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_inspect.cells import Block, CellKind, Direction, directions
from lstm_inspect.cli import app
from lstm_inspect.commands import blockmath, lockfile
from lstm_inspect.commands import stats as stats_mod
from lstm_inspect.commands.split import split_gates
from lstm_inspect.formats import open_model
from lstm_inspect.model import Quantization, Weight

from . import stats_oracle as oracle
from .conftest import CORPUS, SAMPLES

runner = CliRunner()
PROBE = stats_mod.Probe()


def run(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def close(got, want, *, rtol=1e-12, scale=1.0) -> bool:
    if want is None or got is None:
        return got is want
    return math.isclose(got, want, rel_tol=rtol, abs_tol=1e-13 * max(scale, 1e-300))


# ------------------------------------------------------------------------------------------------
# The comparison with the oracle

def probe_input(kind: str, input_dim: int, probe: stats_mod.Probe, rank: int = 0) -> np.ndarray:
    """The probe's stated input, rebuilt from its documentation."""
    grid = (stats_mod.CONV_PROBE_GRID[rank],) * rank if kind == "ConvLSTM" else ()
    shape = (probe.samples, probe.steps) + grid + (input_dim,)
    if probe.kind is stats_mod.ProbeKind.ZEROS:
        return np.zeros(shape)
    return np.random.default_rng(probe.seed).standard_normal(shape)


def check_direction(d: dict, blocks: dict[str, np.ndarray], flavor: str, probe=PROBE, *,
                    spectral_rtol=1e-12, forget_bias=0.0, reset_after=None) -> None:
    """Every number of one direction of `stats --format json` against NumPy on its split blocks."""
    assert set(d["blocks"]) == set(blocks), d["path"]
    for name, values in blocks.items():
        want, got = oracle.block_stats(values), d["blocks"][name]
        scale = float(np.max(np.abs(values[np.isfinite(values)]), initial=0.0))
        for key in ("shape", "min", "max", "nan", "inf", "zero_fraction"):
            assert got[key] == want[key], (d["path"], name, key, got[key], want[key])
        for key in ("mean", "std", "norm"):
            assert close(got[key], want[key], scale=scale), (d["path"], name, key, got[key], want[key])
    for name, want in oracle.spectral_norms(blocks).items():
        assert close(d["spectral_norm"][name], want, rtol=spectral_rtol), (d["path"], name)
    kind = d["kind"]
    act = oracle.activation(d["activation"], flavor)
    rec = oracle.activation(d["recurrent_activation"], flavor) if d["recurrent_activation"] else None
    keep = {"LSTM": "f", "ConvLSTM": "f", "GRU": "z"}.get(kind)
    if keep is None:
        assert d["forget_bias"] is None
    else:
        units = d["units"]
        effective = blocks.get(f"b_{keep}", np.zeros(units)) + blocks.get(f"bU_{keep}", np.zeros(units)) + \
            (forget_bias if keep == "f" else 0.0)
        f = d["forget_bias"]
        assert f["gate"] == keep and close(f["mean"], float(effective.mean()), scale=1.0)
        assert (f["min"], f["max"]) == (float(effective.min()), float(effective.max()))
        start = rec(effective)
        assert f["open_fraction"] == {"0.5": np.count_nonzero(start > 0.5) / units,
                                      "0.9": np.count_nonzero(start > 0.9) / units}
    if d["probe_note"]:
        return
    rank = blocks["W_i"].ndim - 2 if kind == "ConvLSTM" else 0
    x = probe_input(kind, d["input_dim"], probe, rank)
    reset = d.get("reset_after") if reset_after is None else reset_after
    steps = oracle.gate_steps(kind, blocks, x, act, rec, reset_after=bool(reset), forget_bias=forget_bias,
                              conv=kind == "ConvLSTM")
    bounds = {g: oracle.BOUNDS.get(d["activation"] if g in "ch" else d["recurrent_activation"])
              for g in (steps[0].keys())}
    fraction, dead, low, high = oracle.saturation(steps, bounds)
    assert d["saturation"] == fraction, d["path"]
    for g, units in dead.items():
        if units is None:
            assert d["dead_units"][g] is None
            continue
        got = d["dead_units"][g]
        assert got["units"] == units[:stats_mod.MAX_LISTED_UNITS] and got["count"] == len(units), (d["path"], g)
        assert (got["stuck_low"], got["stuck_high"]) == (low[g], high[g])


def check_file(model: Path, tmp_path: Path, flavor: str, probe=PROBE) -> dict:
    data = stats_mod.stats_data(str(model), probe=probe)
    out = tmp_path / "split.npz"
    split_gates(model, out, force=True)
    meta, blocks = oracle.load_split(out)
    assert [d["path"] for d in data["directions"]] == list(meta["directions"])
    for d in data["directions"]:
        check_direction(d, blocks[d["path"]], flavor, probe, reset_after=meta["directions"][d["path"]]["reset_after"])
    return data


# ------------------------------------------------------------------------------------------------
# Keras files: the zoo and the corpus

def one_per_model(entries: list[dict]) -> list[dict]:
    """One file with a config per zoo model (activations are config facts)."""
    chosen = {}
    for e in entries:
        if e["dialect"] in ("hdf5-legacy", "keras-zip") and e["model"] not in chosen:
            chosen[e["model"]] = e
    return list(chosen.values())


@pytest.mark.parametrize("framework", ["keras3", "tf_keras"])
def test_zoo_stats_equal_numpy_on_the_split_blocks(framework, zoo_keras3, zoo_tf_keras, tmp_path):
    entries = one_per_model(zoo_keras3 if framework == "keras3" else zoo_tf_keras)
    flavor = "keras3" if framework == "keras3" else "keras2"
    kinds, probed = set(), 0
    for entry in entries:
        data = check_file(Path(entry["_abs"]), tmp_path, flavor)
        truth = {r["path"]: r for r in entry["recurrent"]}
        for d in data["directions"]:
            t = truth[d["path"]]
            assert (d["kind"], d["units"], d["input_dim"]) == (t["kind"], t["units"], t["input_dim"])
            assert d["activation"] == t["activation"] and d["recurrent_activation"] == t["recurrent_activation"]
            kinds.add((d["kind"], d["class"], t.get("reset_after")))
            probed += d["probe_note"] is None
    got_kinds = {k for k, _, _ in kinds}
    assert got_kinds == {"LSTM", "GRU", "SimpleRNN", "ConvLSTM"}
    assert {r for k, _, r in kinds if k == "GRU"} == {True, False}  # both GRU variants
    if framework == "tf_keras":
        assert {"CuDNNLSTM", "CuDNNGRU"} <= {c for _, c, _ in kinds}
    assert probed >= len(entries)


def corpus_files() -> list[tuple[str, str]]:
    with open(CORPUS / "MANIFEST.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [(r["file"], r["keras_version"]) for r in rows]


@pytest.mark.parametrize("name, version", corpus_files())
def test_corpus_stats_equal_numpy_on_the_split_blocks(name, version, tmp_path):
    flavor = "keras2" if version[:2] in ("1.", "2.") else "keras3"
    data = check_file(CORPUS / name, tmp_path, flavor)
    assert data["directions"]
    if name.startswith("textgenrnn"):  # the CuDNN file: bias b + bU on every gate
        assert all(d["class"] == "CuDNNLSTM" and "bU_f" in d["blocks"] for d in data["directions"])


# ------------------------------------------------------------------------------------------------
# Hand-built files: chosen biases, NaN and Inf, all-zero gates, dead units

def write_lstm(path: Path, kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray, name: str = "lstm") -> None:
    """A tf.keras weights-only LSTM file written with h5py (no Keras)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode()])
        f.attrs["keras_version"] = "2.3.0-tf"
        g = f.create_group(name)
        names = [f"{name}/lstm_cell/{k}:0" for k in ("kernel", "recurrent_kernel", "bias")]
        g.attrs["weight_names"] = np.array([n.encode() for n in names])
        for n, a in zip(names, (kernel, recurrent, bias)):
            g.create_dataset(n, data=a)


def chosen_lstm(units=6, input_dim=3, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    kernel = rng.uniform(-0.3, 0.3, (input_dim, 4 * units)).astype(np.float32)
    recurrent = rng.uniform(-0.3, 0.3, (units, 4 * units)).astype(np.float32)
    bias = np.zeros(4 * units, np.float32)
    bias[units:2 * units] = [-3.0, 0.0, 0.5, 1.0, 2.5, 3.0][:units]  # b_f
    return kernel, recurrent, bias


def test_forget_bias_and_open_fractions_by_hand(tmp_path):
    """sigmoid(b_f) for b_f = -3, 0, 0.5, 1, 2.5, 3 is 0.047, 0.5, 0.62, 0.73, 0.92, 0.95: 4 of 6 units
    start above 0.5 (0 itself is not above), 2 above 0.9."""
    path = tmp_path / "m.h5"
    write_lstm(path, *chosen_lstm())
    f = stats_mod.stats_data(str(path))["directions"][0]["forget_bias"]
    assert f["gate"] == "f" and f["runtime"] == 0.0 and f["second_bias_mean"] is None
    assert f["open_fraction"] == {"0.5": 4 / 6, "0.9": 2 / 6}
    assert math.isclose(f["mean"], 4.0 / 6) and (f["min"], f["max"]) == (-3.0, 3.0)
    check_file(path, tmp_path, "keras2")


def test_nan_inf_and_all_zero_gates(tmp_path):
    kernel, recurrent, bias = chosen_lstm()
    u = 6
    kernel[0, 0] = np.nan                  # W_i
    kernel[1, 2 * u + 1] = np.inf          # W_c
    recurrent[2, u + 3] = -np.inf          # U_f
    kernel[:, 3 * u:] = 0.0                # W_o, U_o, b_o all zero
    recurrent[:, 3 * u:] = 0.0
    path = tmp_path / "m.h5"
    write_lstm(path, kernel, recurrent, bias)
    d = check_file(path, tmp_path, "keras2")["directions"][0]
    b = d["blocks"]
    assert (b["W_i"]["nan"], b["W_c"]["inf"], b["U_f"]["inf"]) == (1, 1, 1)
    assert b["W_o"]["zero_fraction"] == b["U_o"]["zero_fraction"] == 1.0 and b["U_o"]["norm"] == 0.0
    assert d["spectral_norm"]["U_o"] == 0.0
    assert d["spectral_norm"]["U_f"] is None and d["spectral_norm"]["U"] is None  # undefined with Inf
    assert d["probe_note"] == "not probed: NaN or Inf in W_i, W_c, U_f"
    assert d["saturation"] is None and d["dead_units"] is None
    table = run("stats", path)
    assert table.exit_code == 0 and "n/a (non-finite)" in table.stdout and "not probed" in table.stdout
    json.loads(run("stats", "-f", "json", path).stdout)  # valid JSON: no NaN leaks out


def test_dead_units_are_found(tmp_path):
    """Unit 0's input gate has bias -50 (i = σ(-50 + small) ≈ 0 always: stuck low); unit 1's output
    gate has bias +50 (stuck high); the candidate of unit 2 has bias +50 (tanh ≈ 1: stuck high)."""
    kernel, recurrent, bias = chosen_lstm()
    u = 6
    bias[0], bias[3 * u + 1], bias[2 * u + 2] = -50.0, 50.0, 50.0
    path = tmp_path / "m.h5"
    write_lstm(path, kernel, recurrent, bias)
    d = check_file(path, tmp_path, "keras2")["directions"][0]
    dead = d["dead_units"]
    assert dead["i"] == {"count": 1, "fraction": 1 / 6, "stuck_low": 1, "stuck_high": 0, "units": [0]}
    assert dead["o"] == {"count": 1, "fraction": 1 / 6, "stuck_low": 0, "stuck_high": 1, "units": [1]}
    assert dead["c"]["units"] == [2] and dead["f"]["count"] == 0
    assert d["saturation"]["i"] >= 1 / 6


def test_zeros_probe(tmp_path):
    """With zero input and zero state every gate is act(bias) at step 1; the forget-gate bias picks
    which units saturate."""
    kernel, recurrent, bias = chosen_lstm()
    path = tmp_path / "m.h5"
    write_lstm(path, kernel, recurrent, bias)
    probe = stats_mod.Probe(stats_mod.ProbeKind.ZEROS, samples=2, steps=3)
    data = check_file(path, tmp_path, "keras2", probe)
    assert data["probe"]["kind"] == "zeros" and data["probe"]["input"] == "zeros"
    result = run("stats", "-f", "json", "--probe", "zeros", "--samples", 2, "--steps", 3, path)
    assert json.loads(result.stdout)["directions"][0]["saturation"] == data["directions"][0]["saturation"]


# ------------------------------------------------------------------------------------------------
# The blocks other frameworks add, on a Direction built in memory

def memory_weight(name: str, values: np.ndarray, quantization: Quantization | None = None) -> Weight:
    return Weight(name, values.shape, str(values.dtype), location=name,
                  _read=lambda sel, a=values: np.asarray(a[sel]), quantization=quantization)


def peephole_projection_direction(units=5, input_dim=3, proj=2, seed=3, forget_bias=1.0, extra=()):
    rng = np.random.default_rng(seed)
    arrays = {}
    for g in "ifco":
        arrays[f"W_{g}"] = rng.uniform(-0.6, 0.6, (input_dim, units)).astype(np.float32)
        arrays[f"U_{g}"] = rng.uniform(-0.6, 0.6, (proj, units)).astype(np.float32)
        arrays[f"b_{g}"] = rng.uniform(-1, 1, units).astype(np.float32)
    for g in "ifo":
        arrays[f"p_{g}"] = rng.uniform(-0.5, 0.5, units).astype(np.float32)
    arrays["P"] = rng.uniform(-0.8, 0.8, (units, proj)).astype(np.float32)
    arrays["bP"] = rng.uniform(-0.1, 0.1, proj).astype(np.float32)
    for name in extra:
        arrays[name] = rng.uniform(0.5, 1.5, units).astype(np.float32)
    blocks = tuple(Block(n, a.shape, memory_weight(n, a)) for n, a in arrays.items())
    d = Direction(path="rnn/cell_0", kind=CellKind.LSTM, class_name="LSTMCell", units=units, input_dim=input_dim,
                  blocks=blocks, use_bias=True, activation="tanh", recurrent_activation="sigmoid",
                  projection_size=proj, forget_bias=forget_bias, source_layout="test")
    return d, {n: a.astype(np.float64) for n, a in arrays.items()}


def test_peepholes_projection_and_runtime_forget_bias():
    d, arrays = peephole_projection_direction()
    got = stats_mod.direction_stats(d, PROBE, "keras3")
    assert {"P", "bP", "p_i", "p_f", "p_o"} <= set(got["blocks"])
    assert got["blocks"]["P"]["shape"] == [5, 2] and got["spectral_norm"].keys() == {"U_i", "U_f", "U_c", "U_o", "U"}
    check_direction(got, arrays, "keras3", forget_bias=1.0)
    assert got["forget_bias"]["runtime"] == 1.0
    assert math.isclose(got["forget_bias"]["mean"], float(arrays["b_f"].mean()) + 1.0, rel_tol=1e-12)


def test_layer_norm_is_reported_not_probed():
    d, arrays = peephole_projection_direction(extra=("ln_i", "ln_f", "ln_c", "ln_o"))
    got = stats_mod.direction_stats(d, PROBE, "keras3")
    assert got["probe_note"] == "not probed: the reference cell does not model layer normalisation"
    assert {"ln_i", "ln_f", "ln_c", "ln_o"} <= set(got["blocks"])
    check_direction(got, arrays, "keras3", forget_bias=1.0)  # block statistics, spectral norms, forget bias


@pytest.mark.parametrize("axis", [None, 1])
def test_quantized_blocks_are_read_dequantized(axis, monkeypatch):
    """int8 storage, real value = (q - zero_point) * scale per tensor or per output column; the
    statistics are of the real values, also when read in row slices."""
    rng = np.random.default_rng(5)
    units, input_dim = 4, 7
    q = rng.integers(-128, 128, (input_dim, 4 * units), dtype=np.int8)
    if axis is None:
        quant = Quantization((0.02,), (3,))
        real = (q.astype(np.float64) - 3) * 0.02
    else:
        scales = tuple(float(s) for s in rng.uniform(0.01, 0.05, 4 * units))
        zeros = tuple(int(z) for z in rng.integers(-5, 5, 4 * units))
        quant = Quantization(scales, zeros, axis=1)
        real = (q.astype(np.float64) - np.array(zeros)) * np.array(scales)
    weight = memory_weight("kernel", q, quant)
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 2 * 4 * units)  # two rows per slice
    for g, gate in enumerate("ifco"):
        cols = slice(g * units, (g + 1) * units)
        block = Block(f"W_{gate}", (input_dim, units), weight, (slice(None), cols))
        got = blockmath.block_moments(block).to_dict()
        want = oracle.block_stats(real[:, cols].astype(np.float32).astype(np.float64))
        for key in ("min", "max", "zero_fraction", "nan", "inf"):
            assert got[key] == want[key]
        for key in ("mean", "std", "norm"):
            assert close(got[key], want[key], rtol=1e-12, scale=1.0)
        want_sigma = np.linalg.norm(real[:, cols].astype(np.float32).astype(np.float64), 2)
        assert close(blockmath.spectral_norm(blockmath.MatrixView((block,)), exact_max=0).value, want_sigma,
                     rtol=blockmath.SPECTRAL_RTOL)


# ------------------------------------------------------------------------------------------------
# Spectral norms: exact, and iterative within the stated tolerance

def matrices_with_hard_spectra(n=120, m=90):
    rng = np.random.default_rng(11)
    q1, _ = np.linalg.qr(rng.standard_normal((n, n)))
    q2, _ = np.linalg.qr(rng.standard_normal((m, m)))
    k = min(n, m)
    cases = {
        "gaussian": rng.standard_normal((n, m)),
        "clustered top": (q1[:, :k] * (1.0 - 1e-4 * np.arange(k))) @ q2[:, :k].T,  # gaps of 1e-4
        "orthogonal": q1[:, :m],  # every singular value 1: Lanczos stops at once
        "rank one": np.outer(rng.standard_normal(n), rng.standard_normal(m)),
        "zero": np.zeros((n, m)),
        "wide": rng.standard_normal((30, 400)),
        "uniform glorot": rng.uniform(-0.1, 0.1, (n, n)),
    }
    return cases


@pytest.mark.parametrize("path", ["gram-lanczos", "lanczos"])
def test_iterative_spectral_norm_within_stated_tolerance(path, monkeypatch):
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 1024)  # slices of a few rows / columns
    worst = 0.0
    for label, matrix in matrices_with_hard_spectra().items():
        values = matrix.astype(np.float32)
        block = Block("U_i", values.shape, memory_weight("u", values))
        exact = float(np.linalg.norm(values.astype(np.float64), 2))
        got = blockmath.spectral_norm(blockmath.MatrixView((block,)), exact_max=0,
                                      gram_max_bytes=(1 << 40) if path == "gram-lanczos" else 0)
        assert got.method == path and got.converged, label
        error = abs(got.value - exact) / exact if exact else got.value
        assert error <= blockmath.SPECTRAL_RTOL, (label, error)
        worst = max(worst, error)
    print(f"\n{path}: worst relative error {worst:.2e} (stated tolerance {blockmath.SPECTRAL_RTOL:g})")


def test_whole_recurrent_kernel_norm_from_slices_of_several_blocks(monkeypatch):
    """U = [U_i U_f U_c U_o] (both Gram sides: tall ConvLSTM-like and wide LSTM-like)."""
    rng = np.random.default_rng(2)
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 4096)
    for rows, units in ((40, 30), (90, 10)):
        fused = rng.standard_normal((rows, 4 * units)).astype(np.float32)
        weight = memory_weight("recurrent", fused)
        blocks = tuple(Block(f"U_{g}", (rows, units), weight, (slice(None), slice(k * units, (k + 1) * units)))
                       for k, g in enumerate("ifco"))
        exact = np.linalg.norm(fused.astype(np.float64), 2)
        for gram_max in (1 << 40, 0):
            got = blockmath.spectral_norm(blockmath.MatrixView(blocks), exact_max=0, gram_max_bytes=gram_max)
            assert abs(got.value - exact) <= blockmath.SPECTRAL_RTOL * exact


def test_large_blocks_are_streamed_never_read_whole(tmp_path, monkeypatch):
    """With small thresholds every W and U block goes through row/column slices: the moments, the
    iterative spectral norms and the probe (StreamedMatrix) never call Block.read on them, and
    the numbers still equal NumPy's."""
    units, input_dim = 40, 24
    rng = np.random.default_rng(9)
    kernel = rng.uniform(-0.4, 0.4, (input_dim, 4 * units)).astype(np.float32)
    recurrent = rng.uniform(-0.4, 0.4, (units, 4 * units)).astype(np.float32)
    bias = rng.uniform(-1, 1, 4 * units).astype(np.float32)
    path = tmp_path / "m.h5"
    write_lstm(path, kernel, recurrent, bias)
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 400)
    monkeypatch.setattr(blockmath, "EXACT_MAX_ELEMENTS", 100)
    monkeypatch.setattr(stats_mod, "PROBE_DENSE_MAX_BYTES", 1000)
    original = Block.read

    def guarded_read(self):
        assert self.size <= units, f"{self.name} was read whole"
        return original(self)
    monkeypatch.setattr(Block, "read", guarded_read)
    data = stats_mod.stats_data(str(path))
    monkeypatch.setattr(Block, "read", original)
    d = data["directions"][0]
    assert {m["method"] for m in d["spectral_method"].values()} == {"gram-lanczos"}
    out = tmp_path / "split.npz"
    split_gates(path, out, force=True)
    _, blocks = oracle.load_split(out)
    check_direction(d, blocks["lstm"], "keras2", spectral_rtol=blockmath.SPECTRAL_RTOL)


def test_streamed_moments_equal_whole_reads(monkeypatch):
    path = SAMPLES / "bidi_stack.h5"
    whole = stats_mod.stats_data(str(path))
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 24)
    sliced = stats_mod.stats_data(str(path))
    for a, b in zip(whole["directions"], sliced["directions"]):
        for name in a["blocks"]:
            for key, value in a["blocks"][name].items():
                if isinstance(value, float):
                    assert math.isclose(value, b["blocks"][name][key], rel_tol=1e-12, abs_tol=1e-15), (name, key)
                else:
                    assert value == b["blocks"][name][key]
        assert a["saturation"] == b["saturation"] and a["spectral_norm"] == b["spectral_norm"]


# ------------------------------------------------------------------------------------------------
# The probe is deterministic for a seed

def test_probe_is_deterministic_for_a_seed():
    path = SAMPLES / "bidi_stack.h5"  # its GRU candidate saturates ~12%: seeds make a difference
    first = run("stats", "-f", "json", "--seed", 7, path).stdout
    assert first == run("stats", "-f", "json", "--seed", 7, path).stdout
    other = json.loads(run("stats", "-f", "json", "--seed", 8, path).stdout)
    a = json.loads(first)
    assert a["probe"]["seed"] == 7 and other["probe"]["seed"] == 8
    assert [d["saturation"] for d in a["directions"]] != [d["saturation"] for d in other["directions"]]
    assert [d["blocks"] for d in a["directions"]] == [d["blocks"] for d in other["directions"]]


# ------------------------------------------------------------------------------------------------
# The command line

def test_cli_formats_and_contract(tmp_path):
    lstm, gru = SAMPLES / "lstm_classifier.h5", SAMPLES / "gru_forecaster.keras"
    one = json.loads(run("stats", "-f", "json", lstm).stdout)
    assert set(one) >= {"file", "framework", "probe", "directions"} and one["framework"] == "keras"
    d = one["directions"][0]
    assert set(d) >= {"path", "kind", "units", "input_dim", "blocks", "spectral_norm", "forget_bias",
                      "saturation", "dead_units"}
    assert set(d["blocks"]["W_i"]) >= {"shape", "mean", "std", "min", "max", "norm", "zero_fraction", "nan", "inf"}
    summary = json.loads(run("summary", "-f", "json", lstm).stdout)
    assert d["path"] == summary["recurrent"][0]["path"]
    assert list(d["blocks"]) == list(summary["recurrent"][0]["blocks"])  # names exactly as in summary
    both = json.loads(run("stats", "-f", "json", lstm, gru).stdout)
    assert isinstance(both, list) and [x["directions"][0]["kind"] for x in both] == ["LSTM", "GRU"]
    table = run("stats", lstm)
    assert table.exit_code == 0
    for text in ("U (whole)", "σ₁", "forget gate f: effective bias", "Saturated", "Dead units"):
        assert text in table.stdout
    md = run("stats", "-f", "markdown", gru).stdout
    assert md.startswith("## `") and "| Block | Shape |" in md and "update gate z" in md
    bidi = json.loads(run("stats", "-f", "json", "--layer", "bigru", SAMPLES / "bidi_stack.h5").stdout)
    assert [x["path"] for x in bidi["directions"]] == ["bigru/forward", "bigru/backward"]


def test_cli_bad_input_is_exit_2(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes((SAMPLES / "lstm_classifier.h5").read_bytes()[:3000])
    result = run("stats", bad)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    result = run("stats", "--layer", "nope", SAMPLES / "lstm_classifier.h5")
    assert result.exit_code == 2 and "no recurrent layer matches nope" in result.stderr
    result = run("stats", "--samples", 0, SAMPLES / "lstm_classifier.h5")
    assert result.exit_code == 2
    mixed = run("stats", "-f", "json", SAMPLES / "lstm_classifier.h5", bad)
    assert mixed.exit_code == 2 and json.loads(mixed.stdout)[0]["directions"]


# ------------------------------------------------------------------------------------------------
# diff --stats

def test_diff_stats_side_by_side(tmp_path):
    kernel, recurrent, bias = chosen_lstm(seed=1)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_lstm(a, kernel, recurrent, bias)
    moved_bias = bias.copy()
    moved_bias[6:12] += 1.0         # b_f: +1 on every unit
    moved_rec = recurrent.copy()
    moved_rec[:, 18:24] *= 1.5      # U_o: ×1.5 (norm and spectral norm +50%)
    write_lstm(b, kernel, moved_rec, moved_bias)
    result = run("diff", "--stats", "-f", "json", a, b)
    assert result.exit_code == 0
    stats = json.loads(result.stdout)["changes"][0]["stats"]
    out_a, out_b = tmp_path / "a.npz", tmp_path / "b.npz"
    split_gates(a, out_a, force=True)
    split_gates(b, out_b, force=True)
    blocks_a, blocks_b = oracle.load_split(out_a)[1]["lstm"], oracle.load_split(out_b)[1]["lstm"]
    for gate in "ifco":
        got = stats["gates"][gate]
        for side, blocks in ((0, blocks_a), (1, blocks_b)):
            assert close(got["bias_mean"][side], float(blocks[f"b_{gate}"].mean()), scale=3.0)
            assert close(got["U_norm"][side], float(np.linalg.norm(blocks[f"U_{gate}"])))
            assert close(got["spectral_norm"][side], float(np.linalg.norm(blocks[f"U_{gate}"], 2)))
            w, u = blocks[f"W_{gate}"], blocks[f"U_{gate}"]
            assert close(got["norm"][side], float(np.sqrt(np.sum(w * w) + np.sum(u * u))))
    moved = stats["moved_most"]
    assert moved["bias_mean"]["gate"] == "f" and math.isclose(moved["bias_mean"]["change"], 1.0, rel_tol=1e-6)
    assert moved["spectral_norm"]["gate"] == "o" and math.isclose(moved["spectral_norm"]["change"], 0.5, rel_tol=1e-6)
    assert moved["norm"]["gate"] == "o"
    assert stats["b"]["forget_bias"]["open_fraction"]["0.5"] > stats["a"]["forget_bias"]["open_fraction"]["0.5"]
    table = run("diff", "--stats", a, b).stdout
    assert "statistics, A → B" in table and "bias moved most: f (forget gate)" in table
    assert "spectral norm of U moved most: o (output gate)" in table and "+50.00%" in table
    md = run("diff", "--stats", "-f", "markdown", a, b).stdout
    assert "Statistics, A → B:" in md and "| Gate | bias mean |" in md
    plain = json.loads(run("diff", "-f", "json", a, b).stdout)
    assert "stats" not in plain["changes"][0]  # additive: only with --stats


def test_diff_stats_of_identical_files_moves_nothing(tmp_path):
    path = SAMPLES / "lstm_classifier.h5"
    copy = tmp_path / "copy.h5"
    shutil.copy(path, copy)
    stats = json.loads(run("diff", "--stats", "-f", "json", path, copy).stdout)["changes"][0]["stats"]
    assert stats["moved_most"] == {"bias_mean": None, "norm": None, "spectral_norm": None}
    assert stats["a"]["blocks"] == stats["b"]["blocks"]


def test_stats_reads_every_direction_of_the_model_once_per_block():
    """The library entry point works from an open model (no file format knowledge needed)."""
    with open_model(SAMPLES / "bidi_stack.h5") as model:
        dirs = directions(model)
        data = stats_mod.model_stats(model, dirs)
    assert [d["path"] for d in data["directions"]] == [d.path for d in dirs]


def test_whole_kernel_from_the_sum_of_the_gates_row_grams(monkeypatch):
    """Large gates no taller than wide: σ₁(U) from Σ_g U_g U_gᵀ equals the norm of [U_i U_f U_c U_o]."""
    rng = np.random.default_rng(8)
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(blockmath, "EXACT_MAX_ELEMENTS", 100)
    for rows, units in ((30, 30), (12, 40)):  # square gates; projected LSTM gates (p × u)
        fused = rng.standard_normal((rows, 4 * units)).astype(np.float32)
        weight = memory_weight("recurrent", fused)
        blocks = tuple(Block(f"U_{g}", (rows, units), weight, (slice(None), slice(k * units, (k + 1) * units)))
                       for k, g in enumerate("ifco"))
        assert all(blockmath.uses_row_gram(blockmath.MatrixView((b,))) for b in blocks)
        got = stats_mod._norms_from_row_grams(blocks)
        for k, b in enumerate(blocks):
            exact = np.linalg.norm(fused[:, k * units:(k + 1) * units].astype(np.float64), 2)
            assert abs(got[b.name].value - exact) <= blockmath.SPECTRAL_RTOL * exact
        exact = np.linalg.norm(fused.astype(np.float64), 2)
        assert got["U"].method == "gram-lanczos" and abs(got["U"].value - exact) <= blockmath.SPECTRAL_RTOL * exact


# ------------------------------------------------------------------------------------------------
# Hostile input: every broken file ends in exit 2 with one line (the reads run in the guarded child)

def hostile_cases(tmp_path: Path) -> list[Path]:
    from .conftest import CRASHERS
    original = (SAMPLES / "bidi_stack.h5").read_bytes()
    cases = sorted(CRASHERS.glob("*.h5"))
    rng = np.random.default_rng(21)
    for k, cut in enumerate(rng.integers(1, len(original), 6)):
        path = tmp_path / f"cut{k}.h5"
        path.write_bytes(original[:cut])
        cases.append(path)
    for k in range(6):  # bit flips in the data region (past the superblock)
        data = bytearray(original)
        for at in rng.integers(len(original) // 2, len(original), 4):
            data[at] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"flip{k}.h5"
        path.write_bytes(bytes(data))
        cases.append(path)
    return cases


def test_hostile_files_end_in_exit_0_or_2_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LSTM_INSPECT_TIMEOUT", "20")
    codes = []
    for k, path in enumerate(hostile_cases(tmp_path)):
        commands = [["stats", path], ["diff", "--stats", path, SAMPLES / "bidi_stack.h5"]]
        if k % 3 == 0:
            commands.append(["plot", path, "-o", tmp_path / f"pictures-{path.stem}"])
        for args in commands:
            result = run(*args)
            codes.append(result.exit_code)
            assert result.exit_code in ((0, 1, 2) if args[0] == "diff" else (0, 2)), \
                (args, result.exit_code, result.stderr)
            if result.exit_code == 2:
                assert len(result.stderr.strip().splitlines()) == 1 and "internal error" not in result.stderr
                assert args[0] != "plot" or not args[-1].exists()
    assert codes.count(2) >= len(codes) // 2, codes


def test_reference_records_gate_activations_without_changing_run():
    """reference.run(record=...) reports each step's gates; its outputs are the same as without."""
    from lstm_inspect import reference as ref
    d, arrays = peephole_projection_direction()
    spec = stats_mod.probe_spec(d, "tanh", "sigmoid")
    x = np.random.default_rng(1).standard_normal((3, 4, d.input_dim))
    plain = ref.run(spec, arrays, x, "keras3")
    steps = ref.gate_activations(spec, arrays, x, "keras3")
    recorded = ref.run(spec, arrays, x, "keras3", record=lambda gates: None)
    np.testing.assert_array_equal(plain[0], recorded[0])
    assert len(steps) == 4 and all(set(s) == {"i", "f", "c", "o"} for s in steps)
    want = oracle.gate_steps("LSTM", arrays, x, np.tanh, oracle.sigmoid, forget_bias=1.0)
    for got, exp in zip(steps, want):
        for g in "ifco":
            np.testing.assert_allclose(got[g], exp[g], rtol=1e-12, atol=1e-15)
    lazy = {**arrays, "U_f": blockmath.StreamedMatrix(d.block("U_f")), "W_c": blockmath.StreamedMatrix(d.block("W_c"))}
    streamed = ref.run(spec, lazy, x, "keras3")
    np.testing.assert_allclose(streamed[0], plain[0], rtol=1e-12, atol=1e-14)
