"""TF1 cells cut into canonical blocks: every block bit-exact against the tensor TensorFlow's reader
returns (sliced by TF's documented layout), and the NumPy cell built from the blocks reproducing
TensorFlow's own forward pass (≤ 1e-5 with the cell's forget bias, ≥ 0.01 off with a wrong one)."""
from __future__ import annotations

import numpy as np
import pytest

from lstm_inspect.formats import open_model
from lstm_inspect.cells import directions

from .helpers import case_path, chain_output, runs_of

ALIASES = {  # TF's names of each tensor, 0.x / 1.0 / 1.2+ (beyond-keras.md §2)
    "kernel": ("kernel", "weights", "Linear/Matrix", "W_0"), "bias": ("bias", "biases", "Linear/Bias", "B"),
    "w_i_diag": ("w_i_diag", "W_I_diag"), "w_f_diag": ("w_f_diag", "W_F_diag"), "w_o_diag": ("w_o_diag", "W_O_diag"),
    "projection": ("projection/kernel", "W_P_0"),
    "gates/kernel": ("gates/kernel", "gates/weights", "Gates/Linear/Matrix"),
    "gates/bias": ("gates/bias", "gates/biases", "Gates/Linear/Bias"),
    "candidate/kernel": ("candidate/kernel", "candidate/weights", "Candidate/Linear/Matrix"),
    "candidate/bias": ("candidate/bias", "candidate/biases", "Candidate/Linear/Bias"),
}


def tf_values(tfzoo, case: str) -> dict[str, np.ndarray]:
    truth = tfzoo.case(case)
    if "values" in truth:  # V1 written by hand: the values given to TF
        return {name: np.load(tfzoo.path(p)) for name, p in truth["values"].items()}
    return {v["name"]: np.load(tfzoo.path(v["npy"])) for v in truth["variables"] if "npy" in v}


def find(values: dict, scope: str, role: str):
    for alias in ALIASES[role]:
        if f"{scope}/{alias}" in values:
            return values[f"{scope}/{alias}"]
    return None


def expected_blocks(d, values: dict) -> dict[str, np.ndarray]:
    """TF's tensors sliced by hand: rows [x; h], LSTM columns i, j, f, o (j is c), GRU gates r, u (u is z)."""
    scope, u, n = d.path, d.units, d.input_dim
    out = {}
    if d.kind.value == "LSTM":
        kernel, bias = find(values, scope, "kernel"), find(values, scope, "bias")
        for k, gate in enumerate("icfo"):  # TF's i, j, f, o: the second column block is the candidate
            out[f"W_{gate}"], out[f"U_{gate}"] = kernel[:n, k * u:(k + 1) * u], kernel[n:, k * u:(k + 1) * u]
            out[f"b_{gate}"] = bias[k * u:(k + 1) * u]
        for gate in "ifo":
            peep = find(values, scope, f"w_{gate}_diag")
            if peep is not None:
                out[f"p_{gate}"] = peep
        projection = find(values, scope, "projection")
        if projection is not None:
            out["P"] = projection
    elif d.kind.value == "GRU":
        gates, candidate = find(values, scope, "gates/kernel"), find(values, scope, "candidate/kernel")
        gate_bias, candidate_bias = find(values, scope, "gates/bias"), find(values, scope, "candidate/bias")
        if gates is None:  # GRUBlockCell: by shape
            blocks = [values[f"{scope}/{name}"] for name in ("w_ru", "w_c")]
            gates, candidate = sorted(blocks, key=lambda a: -a.shape[1])
            gate_bias, candidate_bias = values[f"{scope}/b_ru"], values[f"{scope}/b_c"]
        for k, gate in enumerate("rz"):
            out[f"W_{gate}"], out[f"U_{gate}"] = gates[:n, k * u:(k + 1) * u], gates[n:, k * u:(k + 1) * u]
            out[f"b_{gate}"] = gate_bias[k * u:(k + 1) * u]
        out["W_h"], out["U_h"], out["b_h"] = candidate[:n], candidate[n:], candidate_bias
    else:
        kernel = find(values, scope, "kernel")
        out["W"], out["U"], out["b"] = kernel[:n], kernel[n:], find(values, scope, "bias")
    return out


@pytest.mark.parametrize("case", ["tf1_cells", "tf1_more", "tf1_handmade", "tf1_v0"])
def test_every_block_is_bit_exact(tfzoo, case):
    values = tf_values(tfzoo, case)
    with open_model(case_path(tfzoo, case)) as model:
        tf1 = [d for d in directions(model) if d.source_layout.startswith("tf1-")]
        assert tf1
        for d in tf1:
            expected = expected_blocks(d, values)
            assert {b.name for b in d.blocks} == set(expected), d.path
            for b in d.blocks:
                got = b.read()
                assert got.dtype == expected[b.name].dtype and got.shape == expected[b.name].shape, (d.path, b.name)
                assert got.tobytes() == np.ascontiguousarray(expected[b.name]).tobytes(), (d.path, b.name)


def test_corpus_blocks_are_bit_exact(tfzoo):
    case = "corpus/char-rnn-tensorflow-laurajul__model.ckpt-248399"
    if case not in tfzoo.cases:
        pytest.skip("the corpus checkpoint is not present")
    values = {v["name"]: np.load(tfzoo.path(v["npy"])) for v in tfzoo.case(case)["variables"]}
    with open_model(tfzoo.case(case)["prefix"]) as model:
        for d in directions(model):
            expected = expected_blocks(d, values)
            assert {b.name: b.read().tobytes() for b in d.blocks} == {k: np.ascontiguousarray(v).tobytes()
                                                                       for k, v in expected.items()}


def all_runs(tfzoo):
    return [(case, run) for case in ("tf1_cells", "tf1_more", "tf1_handmade", "tf1_v0") for run in runs_of(tfzoo, case)]


def test_numpy_cells_reproduce_tensorflows_forward_pass(tfzoo):
    """Every cell and wrapper: BasicLSTMCell (forget_bias 0.5), LSTMCell with peepholes and/or num_proj,
    static_rnn, GRUCell, BasicRNNCell, MultiRNNCell, bidirectional and stacked bidirectional RNNs, a Keras
    LSTM saved by a TF1 Saver, LSTMBlockCell / LSTMBlockFusedCell / CudnnCompatibleLSTMCell / CudnnLSTM
    (canonical copies) / GRUBlockCell (both namings) through TF's raw ops, TF 0.x and 1.0 names."""
    checked = 0
    for case, run in all_runs(tfzoo):
        with open_model(case_path(tfzoo, case)) as model:
            dirs = {d.path: d for d in directions(model)}
            got = chain_output(dirs, run)
        expected = np.load(run["_y"]).astype(np.float64)
        if run["chain"] == ["klstm"]:
            got = got if expected.ndim == 3 else got[:, -1]
        assert got.shape == expected.shape, (case, run["name"])
        assert np.max(np.abs(got - expected)) <= 1e-5, (case, run["name"], np.max(np.abs(got - expected)))
        checked += 1
    assert checked >= 25


def test_a_wrong_forget_bias_is_visible(tfzoo):
    """The same NumPy cells with the forget bias off by 0.5 (e.g. the 1.0 default for a 0.5 cell) miss
    TF's output by at least 0.01: a loose tolerance would not hide it."""
    lstm_runs = [(c, r) for c, r in all_runs(tfzoo) if r.get("forget_bias") is not None]
    assert len(lstm_runs) >= 12
    for case, run in lstm_runs:
        with open_model(case_path(tfzoo, case)) as model:
            dirs = {d.path: d for d in directions(model)}
            wrong = chain_output(dirs, run, forget_bias_shift=0.5)
        expected = np.load(run["_y"]).astype(np.float64)
        assert np.max(np.abs(wrong - expected)) >= 0.01, (case, run["name"])


def test_default_forget_bias_is_the_class_default(tfzoo):
    with open_model(case_path(tfzoo, "tf1_handmade")) as model:
        bias = {d.path: d.forget_bias for d in directions(model)}
    assert bias["block/rnn/lstm_cell"] == 1.0 and bias["fused/lstm_fused_cell"] == 1.0
    assert bias["cudnn/cudnn_compatible_lstm_cell"] == 0.0
    assert bias["gblock/rnn/gru_cell"] is None


def test_grublockcell_names_told_apart_by_shape(tfzoo):
    with open_model(case_path(tfzoo, "tf1_handmade")) as model:
        dirs = {d.path: d for d in directions(model)}
    swapped = dirs["gswap/rnn/gru_cell"]
    assert any("told apart by shape" in n for n in swapped.notes)
    assert not any("told apart by shape" in n for n in dirs["gblock/rnn/gru_cell"].notes)
    assert swapped.block("W_h").source.name == "gswap/rnn/gru_cell/w_ru"  # the candidate kernel, by its shape
