"""ONNX files as a neutral Model: framework, format, producer; one layer per recurrent node, the other
initializers grouped; every stored tensor counted once (totals = the initializers' elements, as the onnx
package reads them); weight values equal onnx.numpy_helper's, external data included."""
from __future__ import annotations

import csv

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lstm_inspect import api
from lstm_inspect.errors import UnsupportedDialectError
from lstm_inspect.formats import open_model
from lstm_inspect.formats.onnx.layers import UNUSED, RecurrentLayer
from lstm_inspect.model import Framework

from ..conftest import CORPUS
from .conftest import CORPUS_ONNX
from .helpers import model, out, save
from .recurrent_models import arrays, recurrent_model, save_model


def _corpus(word):
    return next(p for p in CORPUS_ONNX if word in p.name)


def onnx_initializers(graph: onnx.GraphProto, base: str) -> list[tuple[str, np.ndarray]]:
    """Every initializer of every graph (subgraphs included), as onnx reads it."""
    found = [(t.name, numpy_helper.to_array(t, base)) for t in graph.initializer]
    for node in graph.node:
        for attribute in node.attribute:
            graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for g in graphs:
                found += onnx_initializers(g, base)
    return found


def _layer_weights(m) -> list:
    return [w for layer in m.layers for w in layer.weights]


def assert_counted_once(path) -> None:
    """Totals equal the initializers' elements, every initializer in exactly one layer, values as onnx's."""
    truth = onnx_initializers(onnx.load(str(path), load_external_data=False).graph, str(path.parent))
    with open_model(path) as m:
        weights = _layer_weights(m)
        assert m.framework is Framework.ONNX and m.format == "onnx"
        assert sorted(w.name for w in weights) == sorted(name for name, _ in truth)
        assert m.total_params == sum(a.size for _, a in truth)
        by_name = {w.name: w for w in weights}
        for name, expected in truth:
            got = by_name[name].read()
            if expected.dtype.name == "bfloat16":
                expected = expected.astype(np.float32)
            assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), name
            if by_name[name].extent is not None:
                file, offset = by_name[name].extent
                with open(file, "rb") as fh:
                    fh.seek(offset)
                    assert fh.read(got.nbytes) == got.tobytes(), name


@pytest.mark.parametrize("path", CORPUS_ONNX, ids=lambda p: p.name)
def test_corpus_counts_every_initializer_once(path):
    assert_counted_once(path)
    data = api.summary(path)
    assert data["framework"] == "onnx" and data["format"] == "onnx"
    assert sum(layer["params"] for layer in data["layers"]) == data["total_params"]
    theirs = onnx.load(str(path), load_external_data=False)
    assert data["producer"] == f"{theirs.producer_name} {theirs.producer_version}".strip()


def _manifest() -> dict[str, str]:
    with open(CORPUS / "MANIFEST-frameworks.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    return {row[0]: row[3] for row in rows[1:] if row}


def test_corpus_recurrent_nodes_match_the_manifest():
    """The manifest rows (read independently of lstm-inspect) as truth."""
    rows = _manifest()
    dtln = api.summary(_corpus("DTLN"))
    assert "two ONNX LSTM nodes, hidden 128, inputs 257 then 128" in rows["DTLN__model_1.onnx"]
    assert [(d["kind"], d["units"], d["input_dim"]) for d in dtln["recurrent"]] == [("LSTM", 128, 257),
                                                                                    ("LSTM", 128, 128)]
    silero = api.summary(_corpus("silero"))
    assert "ONNX LSTM nodes (hidden 128, input 128) inside If branches" in rows[_corpus("silero").name]
    assert [(d["kind"], d["units"], d["input_dim"]) for d in silero["recurrent"]] == [("LSTM", 128, 128)] * 2
    assert all("/If_1/" in d["path"] for d in silero["recurrent"])
    peep = api.summary(_corpus("peepholes"))
    assert "ONNX LSTM, hidden 3, input 4, peepholes P; W is a graph input" in rows[_corpus("peepholes").name]
    (d,) = peep["recurrent"]
    assert (d["kind"], d["units"], d["input_dim"]) == ("LSTM", 3, 4) and {"p_i", "p_o", "p_f"} <= set(d["blocks"])
    gru = api.summary(_corpus("gru"))
    assert "ONNX GRU, hidden 3, input 3, linear_before_reset absent (= 0, Keras reset_after=False)" \
        in rows[_corpus("gru").name]
    (d,) = gru["recurrent"]
    assert (d["kind"], d["units"], d["input_dim"], d["reset_after"]) == ("GRU", 3, 3, False)


def test_dtln_layers():
    with open_model(_corpus("DTLN")) as m:
        layers = {layer.name: layer for layer in m.layers}
        assert [w.name for w in layers["lstm_4"].weights] == ["lstm_4_W", "lstm_4_R", "lstm_4_B"]
        assert isinstance(layers["lstm_4"], RecurrentLayer) and layers["lstm_4"].class_name == "LSTM"
        assert [w.name for w in layers["dense_2"].weights] == ["dense_2/kernel:0", "dense_2/bias:0"]
        assert layers["dense_2"].class_name == "MatMul"  # grouped by name prefix, class of its first consumer
        slices = [layer for layer in m.layers if layer.class_name == "Slice"]
        assert len(slices) == 4 and all(layer.params == 16 and not any(w.trainable for w in layer.weights)
                                        for layer in slices)  # int64 Slice parameters: not trainable
        assert m.trainable_params == m.total_params - 64


def test_silero_layers_count_the_shared_lstm_weights_once():
    with open_model(_corpus("silero")) as m:
        then, other = [layer for layer in m.layers if isinstance(layer, RecurrentLayer)]
        assert [w.name for w in then.weights] == ["model.decoder.rnn.weight_ih", "model.decoder.rnn.weight_hh",
                                                  "model.decoder.rnn.bias_ih", "model.decoder.rnn.bias_hh"]
        assert other.weights == () and other.counted_in == (then.name,)
        assert {layer.name for layer in m.layers if not isinstance(layer, RecurrentLayer)} == {
            "model.stft", "model.encoder.0.reparam_conv", "model.encoder.1.reparam_conv",
            "model.encoder.2.reparam_conv", "model.encoder.3.reparam_conv", "model.decoder.decoder.2"}
        assert m.producer == "pytorch 2.3.1"


def test_graph_input_weights_are_shown_not_counted():
    with open_model(_corpus("peepholes")) as m:
        assert m.total_params == 0
        (layer,) = m.layers
        assert layer.weights == () and {o.role for o in layer.operands if not o.stored} == {
            "W", "R", "B", "P", "sequence_lens", "initial_h", "initial_c", "X"}
        w = layer.operand("W").weight
        assert w.shape == (1, 12, 4)
        with pytest.raises(UnsupportedDialectError, match="the values are not in the file"):
            w.read()
        assert any("W, R, B, P are not in the file" in note and "not counted in the totals" in note
                   for note in m.notes)


def test_torch_exports_count_their_parameters(torch_exports):
    """Truth: torch's own parameter count (TorchScript exporter); the dynamo exporter adds the initial
    state zeros of the LSTM and shape constants, which are initializers too."""
    for key, (path, module) in torch_exports.items():
        assert_counted_once(path)
        data = api.summary(path)
        if key.endswith("-ts"):
            assert data["total_params"] == sum(p.numel() for p in module.parameters()), key
        if key == "rnn-dynamo":
            assert data["recurrent"] == [] and "unrolled" in data["notes"][0]


def test_external_data_is_mapped_and_sliced(torch_exports):
    path, module = torch_exports["lstm-dynamo"]
    truth = dict(onnx_initializers(onnx.load(str(path)).graph, str(path.parent)))
    with open_model(path) as m:
        external = [w for w in _layer_weights(m) if w.extent is not None and w.extent[0] != str(path)]
        assert external, "the dynamo exporter writes the LSTM weights to <name>.onnx.data"
        for w in external:
            assert w.extent[0].endswith(".onnx.data")
            np.testing.assert_array_equal(w.read(), truth[w.name])
            np.testing.assert_array_equal(w.read((0, slice(1, 3))), truth[w.name][0, 1:3])


def test_constant_node_weights_and_unused_initializers(tmp_path):
    """Weights held by Constant nodes count when a recurrent node is made of them; other Constants
    (axes, shapes) do not; an initializer no node reads is its own group."""
    w = arrays("GRU", 2, 3, 1)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w["W"], "W")),
             helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Constant", [], ["R2"], value=numpy_helper.from_array(w["R"][0], "R2")),
             helper.make_node("Unsqueeze", ["R2", "axes"], ["R"]),
             helper.make_node("GRU", ["x", "W", "R"], ["y"], hidden_size=2, name="gru")]
    spare = numpy_helper.from_array(np.ones(7, np.float32), "spare")
    path = save(model(nodes, [spare], [out("x", shape=[2, 1, 3])], [out("y")]), tmp_path / "constants.onnx")
    with open_model(path) as m:
        layers = {layer.name: layer for layer in m.layers}
        assert [w_.name for w_ in layers["gru"].weights] == ["W", "R2"]
        assert layers["spare"].class_name == UNUSED and layers["spare"].params == 7
        assert m.total_params == w["W"].size + w["R"].size + 7


def test_subgraph_initializers_and_overridable_weights(tmp_path):
    w = arrays("LSTM", 2, 3, 1)
    then = helper.make_graph([helper.make_node("LSTM", ["x", "W", "R"], ["t"], hidden_size=2, name="inner")],
                             "then", [], [out("t")], [numpy_helper.from_array(w["R"], "R")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [out("e")],
                              [numpy_helper.from_array(np.zeros(3, np.float32), "unused_inner")])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other, name="if")]
    m_ = model(nodes, [numpy_helper.from_array(w["W"], "W")],
               [out("x", shape=[2, 1, 3]), out("flag", onnx.TensorProto.BOOL, []), out("W", shape=[1, 8, 3])],
               [out("y")], opset=9, ir_version=3)
    path = save(m_, tmp_path / "sub.onnx")
    with open_model(path) as m:
        (layer,) = [layer for layer in m.layers if isinstance(layer, RecurrentLayer)]
        assert layer.name == "if/then_branch/inner" and [x.name for x in layer.weights] == ["W", "R"]
        assert m.total_params == w["W"].size + w["R"].size + 3
        assert any("W come from initializers that are also graph inputs" in note for note in m.notes)


def test_half_precision_and_typed_fields(tmp_path):
    m_, values = recurrent_model("LSTM", dtype=np.float16)
    path = save_model(m_, tmp_path / "half.onnx")
    with open_model(path) as m:
        (layer,) = m.layers
        assert [w.dtype for w in layer.weights] == ["float16"] * 3
        np.testing.assert_array_equal(layer.weights[0].read(), values["W"].astype(np.float16))
    typed = helper.make_tensor("W", onnx.TensorProto.FLOAT, [1, 4, 1], [1.0, 2.0, 3.0, 4.0])
    r = numpy_helper.from_array(np.ones((1, 4, 1), np.float32), "R")
    path = save(model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=1)], [typed, r],
                      [out("x", shape=[1, 1, 1])], [out("y")]), tmp_path / "typed.onnx")
    with open_model(path) as m:
        w = m.layers[0].weights[0]
        assert w.extent is None and w.read().tolist() == [[[1.0], [2.0], [3.0], [4.0]]]


def test_no_recurrent_node_says_why(tmp_path):
    path = save(model([helper.make_node("Relu", ["x"], ["y"])], [], [out("x", shape=[1])], [out("y")]),
                tmp_path / "relu.onnx")
    data = api.summary(path)
    assert data["recurrent"] == [] and data["notes"] == ["no LSTM, GRU or RNN node"]


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


@pytest.mark.parametrize("external", [False, True])
def test_reading_block_by_block_keeps_memory_at_a_block(tmp_path, external):
    """64 MiB of weights read one gate block at a time: the mapped pages are let go after each block."""
    hidden, inputs = 1024, 2048
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 4 * hidden, inputs), dtype=np.float32)  # 32 MiB
    r = rng.standard_normal((1, 4 * hidden, hidden), dtype=np.float32)  # 16 MiB
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=hidden)
    m = model([node], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R")],
              [out("X", shape=[1, 1, inputs])], [out("Y")])
    path = tmp_path / "big.onnx"
    onnx.save_model(m, str(path), save_as_external_data=external, location="big.bin", size_threshold=0)
    del m
    with open_model(path) as opened:
        (d,) = api.directions(opened)
        before, peak = _rss(), 0
        for block in d.blocks:
            value = block.read()
            peak = max(peak, _rss() - before)
            del value
        block_bytes = 8 << 20  # W_i: 2048 x 1024 float32
    assert peak < 3 * block_bytes, f"{peak / 2**20:.1f} MiB"
