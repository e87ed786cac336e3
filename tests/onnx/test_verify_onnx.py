"""`verify` for ONNX: onnxruntime running each node (its attributes, its own W/R/B/P) against the NumPy cell
built from the split blocks, for every variant the operators have; a mislabelled split is caught; weights
that are not in the file, and activations the reference does not compute, are reported per direction."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import helper, numpy_helper

from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import CellKind
from lstm_inspect.commands import verify, verify_onnx

from .conftest import CORPUS_ONNX
from .helpers import model, out, save
from .recurrent_models import recurrent_model, save_model

TOLERANCE = 1e-5  # these small models stay far below it in float32; the default for ONNX is 1e-4


def _corpus(word):
    return next(p for p in CORPUS_ONNX if word in p.name)


def run(path, **options) -> dict:
    data = verify.collect(str(path))
    return verify_onnx.check(data, **({"tolerance": TOLERANCE} | options))


VARIANTS = {
    "lstm": ("LSTM", 1, "WRB", {}),
    "lstm_peepholes_clip": ("LSTM", 1, "WRBP", {"clip": 0.7}),
    "lstm_bidirectional_peepholes": ("LSTM", 2, "WRBP", {"direction": "bidirectional"}),
    "lstm_reverse": ("LSTM", 1, "WRB", {"direction": "reverse"}),
    "lstm_input_forget": ("LSTM", 1, "WRBP", {"input_forget": 1}),
    "lstm_layout1": ("LSTM", 1, "WRB", {"layout": 1}),
    "lstm_no_bias": ("LSTM", 1, "WR", {}),
    "lstm_hard_sigmoid_keras2": ("LSTM", 1, "WRB", {"activations": ["HardSigmoid", "Tanh", "Tanh"]}),
    "lstm_hard_sigmoid_keras3": ("LSTM", 1, "WRB", {"activations": ["HardSigmoid", "Relu", "Relu"],
                                                     "activation_alpha": [1 / 6], "activation_beta": [0.5]}),
    "gru_linear_before_reset_0": ("GRU", 1, "WRB", {}),
    "gru_linear_before_reset_1_bidirectional": ("GRU", 2, "WRB", {"linear_before_reset": 1,
                                                                   "direction": "bidirectional"}),
    "gru_clip": ("GRU", 1, "WRB", {"clip": 0.5}),
    "gru_clip_reverse_lbr1": ("GRU", 1, "WRB", {"clip": 0.5, "linear_before_reset": 1, "direction": "reverse"}),
    "rnn_tanh": ("RNN", 1, "WRB", {}),
    "rnn_bidirectional_relu_tanh_clip": ("RNN", 2, "WRB", {"activations": ["Relu", "Tanh"],
                                                            "direction": "bidirectional", "clip": 1.5}),
    "lstm_float16": ("LSTM", 1, "WRB", {"dtype": np.float16}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_matches_onnxruntime(tmp_path, variant):
    op, dirs, roles, attrs = VARIANTS[variant]
    m, _ = recurrent_model(op, dirs=dirs, roles=roles, **attrs)
    report = run(save_model(m, tmp_path / f"{variant}.onnx"))
    assert report["status"] == "pass", report["directions"]
    assert len(report["directions"]) == dirs
    for row in report["directions"]:
        assert row["max_abs_file_numpy"] < TOLERANCE
        assert row["input_shape"] == [3, 7, 4]
    notes = report["directions"][0]["notes"]
    assert any(n.startswith("layout=1") for n in notes) == (attrs.get("layout") == 1)
    assert any("float16 weights run in float32" in n for n in notes) == ("dtype" in attrs)


def test_the_comparison_sees_every_output_and_state(tmp_path):
    """A changed clip in the node itself (the reference keeps the file's) makes `file − numpy` large."""
    m, _ = recurrent_model("LSTM", clip=0.7)
    path = save_model(m, tmp_path / "clip.onnx")
    data = verify.collect(str(path))
    data["nodes"]["rnn"]["attributes"]["clip"] = 0.3
    row = verify_onnx.check(data, tolerance=TOLERANCE)["directions"][0]
    assert row["status"] == "fail" and row["max_abs_file_numpy"] > 1e-3


def _swap_i_f(layout: layouts.GateLayout) -> layouts.GateLayout:
    swap = {"i": "f", "f": "i"}
    parts = tuple(dataclasses.replace(p, gates=tuple(swap.get(g, g) for g in p.gates)) for p in layout.parts)
    return dataclasses.replace(layout, parts=parts)


def test_a_mislabelled_split_fails(tmp_path, monkeypatch):
    """Gates i and f swapped in the ONNX layout table: the split no longer matches the file."""
    m, _ = recurrent_model("LSTM", roles="WRBP")
    path = save_model(m, tmp_path / "lstm.onnx")
    monkeypatch.setitem(layouts.ONNX, CellKind.LSTM, _swap_i_f(layouts.ONNX[CellKind.LSTM]))
    row = run(path)["directions"][0]
    assert row["status"] == "fail" and row["max_abs_file_numpy"] > 1e-2
    assert "the split blocks do not match the file" in row["reason"]


def test_corpus_files():
    for word in ("DTLN", "silero"):
        report = run(_corpus(word), tolerance=verify_onnx.DEFAULT_TOLERANCE)
        assert report["status"] == "pass" and len(report["directions"]) == 2
        assert report["producer"] == {"DTLN": "OnnxMLTools 1.7.0", "silero": "pytorch 2.3.1"}[word]
    for word in ("peepholes", "gru"):
        (row,) = run(_corpus(word))["directions"]
        assert row["status"] == "error"
        assert row["reason"].startswith(("W: the values are not in the file (graph input 'W'",))


def test_torch_exports(torch_exports):
    for key, (path, _) in torch_exports.items():
        if key == "rnn-dynamo":
            continue
        report = run(path)
        assert report["status"] == "pass", (key, report["directions"])


def test_activations_without_a_reference_are_an_error_row(tmp_path):
    m, _ = recurrent_model("LSTM", activations=["Sigmoid", "LeakyRelu", "Tanh"])
    (row,) = run(save_model(m, tmp_path / "leaky.onnx"))["directions"]
    assert row["status"] == "error" and "no NumPy reference" in row["reason"]


def test_folded_weights_are_run_as_the_node_receives_them(tmp_path):
    """W built by Slice/Concat (reordered torch-style rows): the node's own W is the folded one."""
    m, values = recurrent_model("GRU", roles="WR")
    w = values["W"][0]
    parts = [numpy_helper.from_array(w[k * 3:(k + 1) * 3], f"w{k}") for k in range(3)]
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    nodes = [helper.make_node("Concat", ["w0", "w1", "w2"], ["w_cat"], axis=0),
             helper.make_node("Unsqueeze", ["w_cat", "axes"], ["W"]),
             helper.make_node("GRU", ["X", "W", "R"], ["Y"], hidden_size=3, name="gru")]
    r = numpy_helper.from_array(values["R"], "R")
    path = save(model(nodes, [*parts, axes, r], [out("X", shape=[5, 2, 4])], [out("Y")]), tmp_path / "folded.onnx")
    data = verify.collect(str(path))
    np.testing.assert_array_equal(data["nodes"]["gru"]["tensors"]["W"], values["W"])
    assert verify_onnx.check(data, tolerance=TOLERANCE)["status"] == "pass"


def test_options_are_validated():
    with pytest.raises(Exception, match="--steps and --batch"):
        verify_onnx.check({"nodes": {}, "directions": []}, steps=0)
