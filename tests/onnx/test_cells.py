"""ONNX recurrent nodes into directions: every block equal to its truth, which comes from torch's own
parameters (exports), from the arrays written (hand-built graphs, sliced by the ONNX definition in
`recurrent_models`) or from onnx.numpy_helper (corpus); attributes mapped to the Direction."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lstm_inspect import api
from lstm_inspect.cells.core import CellKind
from lstm_inspect.errors import CorruptModelError, UnsupportedDialectError

from .conftest import CORPUS_ONNX, HIDDEN
from .helpers import model, out, save
from .recurrent_models import ROLES, arrays, expected_blocks, node_inputs, recurrent_model, save_model

# torch's gate order on the fused axis, and the canonical gate of each slot (g -> c, n -> h)
TORCH = {"lstm": ("i", "f", "c", "o"), "gru": ("r", "z", "h"), "rnn": ("",)}


def _corpus(word):
    return next(p for p in CORPUS_ONNX if word in p.name)


def _directions(path):
    with api.open_model(path) as m:
        dirs = api.directions(m)
        return dirs, {d.path: {b.name: b.read() for b in d.blocks} for d in dirs}


def assert_blocks(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].tobytes() == np.ascontiguousarray(value).tobytes(), name


def torch_blocks(params: dict[str, np.ndarray], kind: str, layer: int, suffix: str) -> dict[str, np.ndarray]:
    """The canonical blocks of one torch direction, from its state dict."""
    gates = TORCH[kind]
    H = HIDDEN
    out_ = {}
    for k, gate in enumerate(gates):
        s = f"_{gate}" if gate else ""
        rows = slice(k * H, (k + 1) * H)
        out_[f"W{s}"] = params[f"weight_ih_l{layer}{suffix}"][rows].T
        out_[f"U{s}"] = params[f"weight_hh_l{layer}{suffix}"][rows].T
        out_[f"b{s}"] = params[f"bias_ih_l{layer}{suffix}"][rows]
        out_[f"bU{s}"] = params[f"bias_hh_l{layer}{suffix}"][rows]
    return out_


@pytest.mark.parametrize("exporter", ["ts", "dynamo"])
def test_torch_exports_blocks_equal_torch_parameters(torch_exports, exporter):
    for kind in ("lstm", "gru", "rnn"):
        if (kind, exporter) == ("rnn", "dynamo"):
            continue  # unrolled: no RNN node (test_reader)
        path, module = torch_exports[f"{kind}-{exporter}"]
        params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        dirs, blocks = _directions(path)
        layers = 2 if kind == "lstm" else 1
        sides = ("forward", "backward") if kind == "lstm" else (None,)
        assert len(dirs) == layers * len(sides)
        for k, d in enumerate(dirs):
            layer, side = divmod(k, len(sides))
            if sides[side]:
                assert d.path.endswith(f"/{sides[side]}")
            assert_blocks(blocks[d.path], torch_blocks(params, kind, layer, "_reverse" if side else ""))
            assert (d.units, d.go_backwards) == (HIDDEN, bool(side))
        if kind == "gru":
            assert dirs[0].reset_after is True  # torch's GRU is linear_before_reset=1
        if kind == "rnn":
            assert (dirs[0].kind, dirs[0].activation) == (CellKind.SIMPLE_RNN, "relu")
        if exporter == "ts":
            assert [d.path for d in dirs][:1] == [{"lstm": "/rnn/LSTM/forward", "gru": "/rnn/GRU",
                                                   "rnn": "/rnn/RNN"}[kind]]


CASES = {
    "reverse": ("LSTM", 1, "WRB", {"direction": "reverse"}),
    "peepholes": ("LSTM", 1, "WRBP", {}),
    "bidirectional_peepholes": ("LSTM", 2, "WRBP", {"direction": "bidirectional"}),
    "layout1": ("LSTM", 1, "WRB", {"layout": 1}),
    "gru_lbr0": ("GRU", 1, "WRB", {}),
    "gru_lbr1_bidirectional": ("GRU", 2, "WRB", {"linear_before_reset": 1, "direction": "bidirectional"}),
    "rnn": ("RNN", 1, "WRB", {}),
    "no_bias": ("LSTM", 1, "WR", {}),
    "clip_coupled": ("LSTM", 1, "WRBP", {"clip": 2.5, "input_forget": 1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_built_blocks_and_facts(tmp_path, case):
    op, dirs, roles, attrs = CASES[case]
    m, values = recurrent_model(op, dirs=dirs, roles=roles, **attrs)
    path = save_model(m, tmp_path / f"{case}.onnx")
    directions, blocks = _directions(path)
    assert len(directions) == dirs
    for k, d in enumerate(directions):
        assert d.path == ("rnn" if dirs == 1 else f"rnn/{('forward', 'backward')[k]}")
        assert_blocks(blocks[d.path], expected_blocks(op, values, 3, k))
        assert (d.units, d.input_dim, d.class_name, d.use_bias) == (3, 4, op, "B" in roles)
        assert d.go_backwards == (k == 1 or attrs.get("direction") == "reverse")
        assert d.source_layout == f"onnx-{d.kind.value.lower()}"
    d = directions[0]
    if op == "GRU":
        assert d.reset_after is bool(attrs.get("linear_before_reset"))
    if "clip" in attrs:
        assert d.gate_clip == 2.5 and any(n.startswith("clip=2.5") for n in d.notes)
        assert any(n.startswith("input_forget=1") for n in d.notes)
    if attrs.get("layout") == 1:
        assert any(n.startswith("layout=1") for n in d.notes)
    if op == "GRU" and not attrs.get("linear_before_reset"):
        assert any(n.startswith("linear_before_reset=0") for n in d.notes)


def test_weights_in_if_branches_and_external_data(tmp_path):
    w = {k: v for k, v in arrays("LSTM", 3, 4, 1).items() if k in "WRB"}
    inner = helper.make_node("LSTM", ["X", "W", "R", "B"], ["t"], hidden_size=3, name="cell")
    then = helper.make_graph([inner], "then", [], [out("t")])
    other = helper.make_graph([helper.make_node("LSTM", ["X", "W", "R"], ["e"], hidden_size=3)], "else", [],
                              [out("e")])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other, name="branch")]
    inits = [numpy_helper.from_array(w[k], k) for k in "WRB"]
    m = model(nodes, inits, [out("X", shape=[5, 2, 4]), out("flag", onnx.TensorProto.BOOL, [])], [out("y")])
    path = tmp_path / "branches.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, location="branches.bin", size_threshold=0)
    dirs, blocks = _directions(path)
    assert [d.path for d in dirs] == ["branch/else_branch/LSTM_0", "branch/then_branch/cell"]
    assert_blocks(blocks["branch/then_branch/cell"], expected_blocks("LSTM", w, 3, 0))
    assert_blocks(blocks["branch/else_branch/LSTM_0"],
                  expected_blocks("LSTM", {"W": w["W"], "R": w["R"]}, 3, 0))
    assert all(d.blocks[0].source.extent[0].endswith("branches.bin") for d in dirs)


@pytest.mark.parametrize("activations, alpha, beta, keras, notes", [
    (["Sigmoid", "Tanh", "Tanh"], [], [], ("tanh", "sigmoid"), []),
    (["HardSigmoid", "Tanh", "Tanh"], [], [], ("tanh", "hard_sigmoid"), ["Keras 2's hard_sigmoid"]),
    (["HardSigmoid", "Relu", "Relu"], [1 / 6], [0.5], ("relu", "hard_sigmoid"), ["Keras 3's hard_sigmoid"]),
    (["Sigmoid", "Affine", "Affine"], [1.0, 1.0], [0.0, 0.0], ("linear", "sigmoid"), []),
    (["Sigmoid", "Elu", "Elu"], [1.0, 1.0], [], ("elu", "sigmoid"), []),
    (["Sigmoid", "LeakyRelu", "LeakyRelu"], [], [], (None, "sigmoid"), ["LeakyRelu(alpha=0.01) has no Keras"]),
    (["Sigmoid", "Tanh", "Relu"], [], [], (None, "sigmoid"), ["g=Tanh and output activation h=Relu differ"]),
    (["HardSigmoid", "Tanh", "Tanh"], [0.3], [0.5], ("tanh", None), ["HardSigmoid(alpha=0.3, beta=0.5) has no"]),
    (["Sigmoid", "Tanh"], [], [], (None, None), ["activations lists 2 function(s)"]),
])
def test_activations(tmp_path, activations, alpha, beta, keras, notes):
    attrs = {"activations": activations}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    m, _ = recurrent_model("LSTM", **attrs)
    (d,), _ = _directions(save_model(m, tmp_path / "acts.onnx"))
    assert (d.activation, d.recurrent_activation) == keras
    for fragment in notes:
        assert any(fragment in n for n in d.notes), (fragment, d.notes)


def test_bidirectional_activations_per_direction(tmp_path):
    m, _ = recurrent_model("GRU", dirs=2, direction="bidirectional",
                           activations=["Sigmoid", "Tanh", "HardSigmoid", "Relu"])
    (fwd, bwd), _ = _directions(save_model(m, tmp_path / "acts.onnx"))
    assert (fwd.recurrent_activation, fwd.activation) == ("sigmoid", "tanh")
    assert (bwd.recurrent_activation, bwd.activation) == ("hard_sigmoid", "relu")


def test_corpus_blocks_equal_the_stored_tensors():
    dtln = onnx.load(str(_corpus("DTLN")))
    values = {t.name: numpy_helper.to_array(t) for t in dtln.graph.initializer}
    _, blocks = _directions(_corpus("DTLN"))
    for name in ("lstm_4", "lstm_5"):
        truth = {role: values[f"{name}_{role}"] for role in "WRB"}
        assert_blocks(blocks[name], expected_blocks("LSTM", truth, 128, 0))
    # silero: the LSTM's W/R/B are folded from torch's LSTMCell tensors (gates i, f, g, o)
    silero = onnx.load(str(_corpus("silero")))
    torch_params = {t.name.removeprefix("model.decoder.rnn.") + "_l0": numpy_helper.to_array(t)
                    for t in silero.graph.initializer if t.name.startswith("model.decoder.rnn.")}
    dirs, blocks = _directions(_corpus("silero"))
    for d in dirs:
        expected = _torch_cell(torch_params, 128)
        assert_blocks(blocks[d.path], expected)


def _torch_cell(params: dict[str, np.ndarray], hidden: int) -> dict[str, np.ndarray]:
    out_ = {}
    for k, gate in enumerate(("i", "f", "c", "o")):
        rows = slice(k * hidden, (k + 1) * hidden)
        out_[f"W_{gate}"] = params["weight_ih_l0"][rows].T
        out_[f"U_{gate}"] = params["weight_hh_l0"][rows].T
        out_[f"b_{gate}"] = params["bias_ih_l0"][rows]
        out_[f"bU_{gate}"] = params["bias_hh_l0"][rows]
    return out_


def test_backend_test_blocks_have_shapes_but_no_values():
    for word, kind, shapes in (("peepholes", CellKind.LSTM, {"W_i": (4, 3), "U_o": (3, 3), "p_f": (3,)}),
                               ("gru", CellKind.GRU, {"W_z": (3, 3), "bU_h": (3,)})):
        with api.open_model(_corpus(word)) as m:
            (d,) = api.directions(m)
            assert d.kind is kind
            for name, shape in shapes.items():
                assert d.block(name).shape == shape
            with pytest.raises(UnsupportedDialectError, match="W: the values are not in the file"):
                d.block("W_i" if kind is CellKind.LSTM else "W_z").read()


@pytest.mark.parametrize("change, words", [
    ({"W": np.zeros((2, 12, 4), np.float32)}, "W has shape [2, 12, 4], expected [1, 12, 4]"),
    ({"R": np.zeros((1, 12, 4), np.float32)}, "R has shape [1, 12, 4], expected [1, 12, 3]"),
    ({"B": np.zeros((1, 12), np.float32)}, "B has shape [1, 12], expected [1, 24]"),
    ({"P": np.zeros((1, 6), np.float32)}, "P has shape [1, 6], expected [1, 9]"),
    ({"W": np.zeros((12, 4), np.float32)}, "must have 3 axes"),
])
def test_weights_that_do_not_fit_the_node_are_corrupt(tmp_path, change, words):
    values = arrays("LSTM", 3, 4, 1)
    values.update(change)
    inits = [numpy_helper.from_array(values[r], r) for r in ROLES]
    node = helper.make_node("LSTM", node_inputs("WRBP"), ["Y"], hidden_size=3)
    path = save(model([node], inits, [out("X", shape=[5, 2, 4])], [out("Y")]), tmp_path / "bad.onnx")
    with api.open_model(path) as m, pytest.raises(CorruptModelError, match=words.replace("[", r"\[")):
        api.directions(m)


def test_a_weight_without_a_declared_shape_gives_no_direction(tmp_path):
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=3)
    r = numpy_helper.from_array(arrays("GRU", 3, 4, 1)["R"], "R")
    path = save(model([node], [r], [out("X"), out("W", shape=["d", 9, 4])], [out("Y")]), tmp_path / "free.onnx")
    data = api.summary(path)
    assert data["recurrent"] == []
    assert any("no direction: the graph declares no whole shape for W" in n for n in data["notes"])
