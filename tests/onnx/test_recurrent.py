"""Recurrent nodes: found everywhere (main graph, If/Loop bodies, local functions), attributes as onnx
reports them (ONNX defaults when absent), inputs by role with values equal to onnx's and torch's."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lstm_inspect.errors import CorruptModelError, UnsupportedDialectError
from lstm_inspect.formats.onnx.fold import ConstantFolder, Folded, Scope, Unknown
from lstm_inspect.formats.onnx.proto import Graph, read_onnx
from lstm_inspect.formats.onnx.recurrent import DEFAULT_ACTIVATIONS, ROLES, find_recurrent

from .conftest import CORPUS_ONNX, HIDDEN, SEQ
from .helpers import F32, assert_same_model, model, ort_run, out, save, walk_onnx_nodes

DEFAULTS = {"direction": "forward", "layout": 0, "input_forget": 0, "linear_before_reset": 0,
            "activation_alpha": (), "activation_beta": (), "clip": None, "hidden_size": None}


def _corpus(word):
    return next(p for p in CORPUS_ONNX if word in p.name)


def _onnx_initializers(graph: onnx.GraphProto, base_dir: str, found=None) -> dict[str, np.ndarray]:
    """Every initializer of every graph, by name (names are unique across a valid model)."""
    found = {} if found is None else found
    for tensor in graph.initializer:
        found[tensor.name] = numpy_helper.to_array(tensor, base_dir)
    for node in graph.node:
        for attribute in node.attribute:
            for g in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs):
                _onnx_initializers(g, base_dir, found)
    return found


def assert_nodes_match_onnx(path) -> list:
    """Each recurrent NodeProto onnx sees has one RecurrentNode with the same inputs, outputs and
    attributes (defaults filled in), and every input that is an initializer reads as onnx reads it."""
    assert_same_model(read_onnx(path), path)  # every tensor, node and attribute first
    theirs = onnx.load(str(path))
    ours = find_recurrent(read_onnx(path)).nodes
    expected = [n for n in walk_onnx_nodes(theirs.graph) if n.op_type in ("LSTM", "GRU", "RNN")]
    assert len(ours) == len(expected)
    initializers = _onnx_initializers(theirs.graph, str(path.parent))
    by_outputs = {n.outputs: n for n in ours}
    for node in expected:
        mine = by_outputs[tuple(node.output)]
        assert (mine.name, mine.op_type) == (node.name, node.op_type)
        roles = ROLES[node.op_type]
        names = list(node.input) + [""] * (len(roles) - len(node.input))
        assert [(i.role, i.name) for i in mine.inputs] == list(zip(roles, names))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        direction = attrs.get("direction", b"forward").decode()
        assert mine.direction == direction and mine.num_directions == (2 if direction == "bidirectional" else 1)
        assert mine.hidden_size == attrs.get("hidden_size")
        assert mine.layout == attrs.get("layout", 0)
        default_activations = DEFAULT_ACTIVATIONS[node.op_type] * mine.num_directions
        assert mine.activations == tuple(a.decode() for a in attrs.get("activations", [])) or (
            "activations" not in attrs and mine.activations == default_activations)
        assert mine.activation_alpha == tuple(np.float32(attrs.get("activation_alpha", [])).tolist())
        assert mine.clip == (float(np.float32(attrs["clip"])) if "clip" in attrs else None)
        assert mine.input_forget == (attrs.get("input_forget", 0) if node.op_type == "LSTM" else None)
        assert mine.linear_before_reset == (attrs.get("linear_before_reset", 0) if node.op_type == "GRU" else None)
        for item in mine.inputs:
            if item.name in initializers:
                assert isinstance(item.value, Folded) and item.value.kind == "initializer"
                expected_value = initializers[item.name]
                got = item.value.read()
                if item.value.dtype == "bfloat16":
                    expected_value = expected_value.astype(np.float32)
                assert got.dtype == expected_value.dtype and got.tobytes() == expected_value.tobytes()
    return ours


@pytest.mark.parametrize("path", CORPUS_ONNX, ids=lambda p: p.name)
def test_corpus_nodes_match_onnx(path):
    assert_nodes_match_onnx(path)


def test_dtln_two_lstms_from_initializers():
    nodes = assert_nodes_match_onnx(_corpus("DTLN"))
    assert [n.path for n in nodes] == ["lstm_4", "lstm_5"]
    first = nodes[0]
    assert first.graph == "" and first.hidden_size == 128 and first.opset == 11
    assert first.input("W").shape == (1, 512, 257) and nodes[1].input("W").shape == (1, 512, 128)
    assert first.input("W").value.describe() == "initializer 'lstm_4_W'"
    assert isinstance(first.input("X").value, Unknown) and not first.input("P").present


def test_silero_lstms_inside_if_branches_with_folded_weights():
    nodes = assert_nodes_match_onnx(_corpus("silero"))
    assert [n.path for n in nodes] == ["/model/decoder/If_1/then_branch/model/decoder/rnn/LSTM",
                                       "/model/decoder/If_1/else_branch/model/decoder/rnn_1/LSTM"]
    for node in nodes:
        assert node.graph.startswith("/model/decoder/If_1/")
        for role, shape, sources in (("W", (1, 512, 128), ("model.decoder.rnn.weight_ih",)),
                                     ("R", (1, 512, 128), ("model.decoder.rnn.weight_hh",)),
                                     ("B", (1, 1024), ("model.decoder.rnn.bias_ih", "model.decoder.rnn.bias_hh"))):
            value = node.input(role).value
            assert value.kind == "folded" and value.shape == shape and value.sources == sources
        assert isinstance(node.input("initial_h").value, Unknown)


def test_backend_test_models_have_weights_as_graph_inputs():
    for word, op, shape in (("peepholes", "LSTM", (1, 12, 4)), ("gru", "GRU", (1, 9, 3))):
        path = _corpus(word)
        (node,) = assert_nodes_match_onnx(path)
        assert node.op_type == op and node.path == f"{op}_0"
        w = node.input("W")
        assert isinstance(w.value, Unknown) and w.value.why == "graph input 'W': its value is given at run time"
        declared = next(i for i in onnx.load(str(path)).graph.input if i.name == "W")
        assert w.shape == tuple(d.dim_value for d in declared.type.tensor_type.shape.dim) == shape
        assert w.dtype == "float32"
    (lstm,) = find_recurrent(read_onnx(_corpus("peepholes"))).nodes
    assert lstm.input("P").shape == (1, 9) and lstm.input("sequence_lens").dtype == "int32"


def _torch_gates(weight: np.ndarray, order) -> np.ndarray:
    blocks = np.split(weight, len(order))
    return np.concatenate([blocks[k] for k in order])


def test_torch_exports(torch_exports):
    for key, (path, module) in torch_exports.items():
        kind, exporter = key.split("-")
        if key == "rnn-dynamo":
            continue
        nodes = assert_nodes_match_onnx(path)
        params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
        assert [n.op_type for n in nodes] == {"lstm": ["LSTM", "LSTM"], "gru": ["GRU"], "rnn": ["RNN"]}[kind]
        for layer, node in enumerate(nodes):
            assert node.hidden_size == HIDDEN
            assert node.direction == ("bidirectional" if kind == "lstm" else "forward")
            # Independent truth: torch's own parameters, in ONNX gate order (LSTM i,o,f,c; GRU z,r,h).
            order = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}[kind]
            w = node.input("W").value.read()
            assert np.array_equal(w[0], _torch_gates(params[f"weight_ih_l{layer}"], order))
            if kind == "lstm":
                assert np.array_equal(w[1], _torch_gates(params[f"weight_ih_l{layer}_reverse"], order))
        if kind == "gru":
            assert nodes[0].linear_before_reset == 1
        if kind == "rnn":
            assert nodes[0].activations == ("Relu",)
        if exporter == "dynamo" and kind == "lstm":
            assert nodes[0].input("W").value.tensor.storage == "external"


def test_dynamo_unrolled_rnn_is_reported_with_its_reused_weight(torch_exports):
    path, module = torch_exports["rnn-dynamo"]
    scan = find_recurrent(read_onnx(path))
    assert scan.nodes == () and scan.unrolled
    top = scan.reused_weights[0]
    assert top.uses == SEQ - 1 and top.shape == (HIDDEN, HIDDEN)  # step 0 starts from h = 0
    value = read_onnx(path).graph.initializers
    stored = next(t for t in value if t.name == top.name).read()
    assert np.array_equal(stored, module.weight_hh_l0.detach().numpy().T)
    assert "unrolled" in scan.why_none() and f"feeds {SEQ - 1} MatMul/Gemm" in scan.why_none()


# --- hand-built graphs --------------------------------------------------------------------------

def _weights(op: str, hidden: int, inputs: int, dirs: int, seed: int = 0):
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((dirs, gates * hidden, inputs)).astype(np.float32),
            "R": rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32),
            "B": rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32),
            "P": rng.standard_normal((dirs, 3 * hidden)).astype(np.float32)}


def test_attributes_as_written_and_defaults(tmp_path):
    w = _weights("LSTM", 3, 2, 1)
    g = _weights("GRU", 3, 2, 2)
    inits = [numpy_helper.from_array(v, f"lstm_{k}") for k, v in w.items()] + \
            [numpy_helper.from_array(v, f"gru_{k}") for k, v in g.items() if k != "P"]
    nodes = [
        helper.make_node("LSTM", ["x", "lstm_W", "lstm_R", "lstm_B", "", "", "", "lstm_P"], ["y1"], name="lstm",
                         direction="reverse", hidden_size=3, layout=1, clip=2.5, input_forget=1,
                         activations=["HardSigmoid", "LeakyRelu", "Tanh"], activation_alpha=[0.2, 0.01],
                         activation_beta=[0.5]),
        helper.make_node("GRU", ["x", "gru_W", "gru_R", "gru_B"], ["y2"], direction="bidirectional",
                         hidden_size=3, linear_before_reset=1),
        helper.make_node("GRU", ["x", "gru_W", "gru_R"], ["y3"], direction="bidirectional", hidden_size=3),
        helper.make_node("RNN", ["x", "gru_W", "gru_R"], ["y4"], name="LSTM_0"),
    ]
    path = save(model(nodes, inits, [out("x", shape=[2, 5, 2])], [out("y1"), out("y2"), out("y3"), out("y4")]),
                tmp_path / "attrs.onnx")
    lstm, gru1, gru0, rnn = assert_nodes_match_onnx(path)
    assert (lstm.direction, lstm.layout, lstm.clip, lstm.input_forget) == ("reverse", 1, 2.5, 1)
    assert lstm.activations == ("HardSigmoid", "LeakyRelu", "Tanh")
    assert lstm.activation_alpha == (np.float32(0.2).item(), np.float32(0.01).item())
    assert np.array_equal(lstm.input("P").value.read(), w["P"])
    assert (gru1.linear_before_reset, gru0.linear_before_reset) == (1, 0)
    assert gru0.activations == ("Sigmoid", "Tanh", "Sigmoid", "Tanh") and gru0.num_directions == 2
    assert not gru0.input("B").present and gru0.input("B").value is None
    assert (rnn.activations, rnn.hidden_size, rnn.direction) == (("Tanh",), None, "forward")
    assert [n.path for n in (lstm, gru1, gru0, rnn)] == ["lstm", "GRU_0", "GRU_1", "LSTM_0"]


def test_paths_in_subgraphs_functions_and_clashes(tmp_path):
    w = _weights("LSTM", 2, 3, 1)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()] + [
        numpy_helper.from_array(np.array([0], np.int64), "zero"), numpy_helper.from_array(np.array([8], np.int64), "eight")]

    def lstm(name: str, outputs: list[str], w_name: str = "W") -> onnx.NodeProto:
        return helper.make_node("LSTM", ["x", w_name, "R"], outputs, name=name, hidden_size=2)

    then_graph = helper.make_graph([helper.make_node("Slice", ["W", "zero", "eight", "zero"], ["w_part"]),
                                    lstm("", ["t_y"], "w_part")], "then", [], [out("t_y")])
    else_graph = helper.make_graph([lstm("/inner/lstm", ["e_y"])], "else", [], [out("e_y")])
    body = helper.make_graph([lstm("", ["b_y"])], "body",
                             [out("i", onnx.TensorProto.INT64, []), out("c", onnx.TensorProto.BOOL, [])],
                             [out("c", onnx.TensorProto.BOOL, []), out("b_y")])
    nodes = [lstm("", ["y0"]), lstm("LSTM_0", ["y1"]),
             helper.make_node("If", ["flag"], ["y2"], then_branch=then_graph, else_branch=else_graph),
             helper.make_node("Loop", ["n", ""], ["y3"], body=body, name="/loop"),
             helper.make_node("MyLSTM", ["x", "W"], ["y4"], domain="local")]
    function = helper.make_function("local", "MyLSTM", ["fx", "fw"], ["fy"],
                                    [helper.make_node("LSTM", ["fx", "fw", "fw"], ["fy"], hidden_size=2)],
                                    [helper.make_opsetid("", 17)])
    m = model(nodes, inits, [out("x", shape=[4, 1, 3]), out("flag", onnx.TensorProto.BOOL, []),
                             out("n", onnx.TensorProto.INT64, [])], [out("y0"), out("y2"), out("y3"), out("y4")])
    m.functions.append(function)
    m.opset_import.append(helper.make_opsetid("local", 1))
    path = save(m, tmp_path / "paths.onnx")
    scan = find_recurrent(read_onnx(path))
    # onnx.helper writes attributes sorted by name: else_branch comes before then_branch in the file
    assert [n.path for n in scan.nodes] == [
        "LSTM_0", "LSTM_0#2", "If_0/else_branch/inner/lstm", "If_0/then_branch/LSTM_0", "/loop/body/LSTM_0",
        "local.MyLSTM/LSTM_0"]
    assert [n.graph for n in scan.nodes] == ["", "", "If_0/else_branch", "If_0/then_branch", "/loop/body",
                                             "local.MyLSTM"]
    sliced = scan.nodes[3].input("W").value
    assert sliced.ops == ("Slice",) and np.array_equal(sliced.read(), w["W"][:, :8])
    assert scan.nodes[4].input("W").value.kind == "initializer"  # the outer W, seen from the loop body
    function_w = scan.nodes[5].input("W").value
    assert function_w.why == "parameter 'fw' of function local.MyLSTM: bound at each call site"


def test_weights_through_constant_chains_equal_what_onnxruntime_computes(tmp_path):
    w = _weights("GRU", 4, 3, 1)
    half = numpy_helper.from_array(w["W"].astype(np.float16), "w_half")
    r_flat = numpy_helper.from_array(w["R"].reshape(-1), "r_flat")
    nodes = [
        helper.make_node("Cast", ["w_half"], ["w_f32"], to=F32),
        helper.make_node("Identity", ["w_f32"], ["W"]),
        helper.make_node("Reshape", ["r_flat", "shape"], ["r_3d"]),
        helper.make_node("Transpose", ["r_3d"], ["r_t"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["r_t"], ["R"], perm=[0, 2, 1]),
        helper.make_node("Constant", [], ["B"], value=numpy_helper.from_array(w["B"])),
        helper.make_node("GRU", ["x", "W", "R", "B"], ["y", "y_h"], hidden_size=4, linear_before_reset=1),
    ]
    shape = numpy_helper.from_array(np.array([1, 12, 4], np.int64), "shape")
    m = model(nodes, [half, r_flat, shape], [out("x", shape=[5, 1, 3])], [out("W"), out("R"), out("B"), out("y")])
    path = save(m, tmp_path / "chain.onnx")
    (node,) = find_recurrent(read_onnx(path)).nodes
    truth = ort_run(m, {"x": np.ones((5, 1, 3), np.float32)})
    for role in "WRB":
        assert node.input(role).value.read().tobytes() == truth[role].tobytes(), role
    assert node.input("W").value.describe() == "folded through Cast, Identity from 'w_half'"
    assert node.input("B").value.describe() == "Constant node output 'B'"
    assert node.input("R").value.ops == ("Reshape", "Transpose")


def test_half_precision_weights(tmp_path):
    import ml_dtypes

    w = _weights("RNN", 2, 2, 1)
    inits = [numpy_helper.from_array(w["W"].astype(np.float16), "W"),
             numpy_helper.from_array(w["R"].astype(ml_dtypes.bfloat16), "R")]
    path = save(model([helper.make_node("RNN", ["x", "W", "R"], ["y"], hidden_size=2)], inits,
                      [out("x", shape=[1, 1, 2])], [out("y")]), tmp_path / "half.onnx")
    (node,) = assert_nodes_match_onnx(path)
    assert (node.input("W").dtype, node.input("R").dtype) == ("float16", "bfloat16")
    assert node.input("W").value.extent is not None and node.input("R").value.extent is None


def test_overridable_initializer_and_graph_input_weights(tmp_path):
    w = _weights("LSTM", 2, 2, 1)
    inputs = [out("x", shape=[3, 1, 2]), out("W", shape=[1, 8, 2]), out("R", shape=["d", 8, 2])]
    path = save(model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=2)],
                      [numpy_helper.from_array(w["W"], "W")], inputs, [out("y")], ir_version=3, opset=9),
                tmp_path / "override.onnx")
    (node,) = assert_nodes_match_onnx(path)
    assert node.input("W").value.overridable and node.input("W").constant is not None
    assert node.input("R").constant is None and node.input("R").shape == ("d", 8, 2)


def test_no_recurrent_node_but_a_loop(tmp_path):
    body = helper.make_graph([helper.make_node("MatMul", ["h", "w"], ["h2"])], "body",
                             [out("i", onnx.TensorProto.INT64, []), out("c", onnx.TensorProto.BOOL, []), out("h")],
                             [out("c", onnx.TensorProto.BOOL, []), out("h2")])
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "w")
    path = save(model([helper.make_node("Loop", ["n", "", "h0"], ["h"], body=body),
                       helper.make_node("MatMul", ["h", "w"], ["once"])], [w],
                      [out("n", onnx.TensorProto.INT64, []), out("h0", shape=[1, 3])], [out("once")]),
                tmp_path / "loop.onnx")
    scan = find_recurrent(read_onnx(path))
    assert scan.nodes == () and not scan.unrolled and scan.loops == ("Loop_0",)
    assert scan.why_none() == "no LSTM, GRU or RNN node; 1 Loop/Scan node(s) (a recurrence written as a loop is not read)"


@pytest.mark.parametrize("attrs, words", [
    ({"direction": "sideways"}, "direction 'sideways'"),
    ({"direction": 1}, "direction is a int"),
    ({"hidden_size": 0}, "hidden_size 0"),
    ({"layout": 2}, "layout is 2"),
    ({"input_forget": -1}, "input_forget is -1"),
])
def test_bad_attributes_are_corrupt(tmp_path, attrs, words):
    w = _weights("LSTM", 2, 2, 1)
    inits = [numpy_helper.from_array(w[k], k) for k in "WR"]
    path = save(model([helper.make_node("LSTM", ["x", "W", "R"], ["y"], **attrs)], inits,
                      [out("x")], [out("y")]), tmp_path / "bad.onnx")
    with pytest.raises(CorruptModelError, match=words):
        find_recurrent(read_onnx(path))


def test_too_many_inputs_are_corrupt(tmp_path):
    path = save(model([helper.make_node("GRU", ["x"] * 7, ["y"], hidden_size=1)], [], [out("x")], [out("y")]),
                tmp_path / "many.onnx")
    with pytest.raises(CorruptModelError, match="7 inputs"):
        find_recurrent(read_onnx(path))


def test_function_attributes_bound_at_the_call_site(tmp_path):
    """Inside a function an attribute may name the caller's attribute: its value is not in the body."""
    constant = helper.make_node("Constant", [], ["c"], value_floats=[1.0] * 16)
    transpose = helper.make_node("Transpose", ["c"], ["fw_t"])
    transpose.attribute.append(helper.make_attribute_ref("perm", onnx.AttributeProto.INTS, ref_attr_name="order"))
    lstm = helper.make_node("LSTM", ["fx", "fw_t", "fw_t"], ["fy"])
    lstm.attribute.append(helper.make_attribute_ref("hidden_size", onnx.AttributeProto.INT, ref_attr_name="units"))
    function = helper.make_function("local", "Cell", ["fx"], ["fy"], [constant, transpose, lstm],
                                    [helper.make_opsetid("", 17)], attributes=["order", "units"])
    call = helper.make_node("Cell", ["x"], ["y"], domain="local", order=[0], units=2)
    m = model([call], [], [out("x")], [out("y")])
    m.functions.append(function)
    m.opset_import.append(helper.make_opsetid("local", 1))
    path = save(m, tmp_path / "function.onnx")
    ours = read_onnx(path)
    assert_same_model(ours, path)
    body = ours.functions[0]
    assert body.nodes[2].attribute("hidden_size").ref_attr_name == "units"
    with pytest.raises(UnsupportedDialectError, match="bound at each call of its function"):
        find_recurrent(ours)
    folder = ConstantFolder(ours)
    scope = Scope(Graph(body.name, body.nodes, (), (), (), (), ()), 17, None, "local.Cell", "function")
    assert folder.value(scope, "fw_t").why == "attribute perm of Transpose node '' is bound at each call of its function"
