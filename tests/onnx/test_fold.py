"""The constant folder against what onnxruntime computes for the same graph: every folded value is also
a graph output (or an If-branch output, for values inside subgraphs) and must be equal bit for bit."""
from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from lstm_inspect.formats.onnx.fold import ConstantFolder, Folded, Unknown
from lstm_inspect.formats.onnx.proto import parse_onnx, read_onnx

from .conftest import CORPUS_ONNX
from .helpers import F32, assert_same_values, model, ort_run, out, save

I64 = onnx.TensorProto.INT64


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _fold_all(m: onnx.ModelProto, tmp_path, names) -> dict[str, Folded]:
    ours = read_onnx(save(m, tmp_path / "fold.onnx"))
    folder = ConstantFolder(ours)
    values = {name: folder.value(folder.root, name) for name in names}
    for name, value in values.items():
        assert isinstance(value, Folded), (name, value)
    return values


def _check_against_ort(m: onnx.ModelProto, tmp_path) -> dict[str, Folded]:
    names = [o.name for o in m.graph.output]
    ours = _fold_all(m, tmp_path, names)
    truth = ort_run(m)
    for name in names:
        assert ours[name].shape == truth[name].shape, name
        assert_same_values(ours[name].read(), truth[name], ours[name].dtype, name)
    return ours


def test_weight_chain_like_pytorch_and_tf2onnx_write_it(tmp_path):
    """Slice (input form, steps, negative bounds) -> Concat -> Unsqueeze -> Transpose -> Reshape -> Cast
    -> Identity -> Squeeze -> Gather, with every intermediate value checked."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w")
    params = [_ints("s0", [0]), _ints("e0", [4]), _ints("s1", [-4]), _ints("e1", [2**62]), _ints("ax", [0]),
              _ints("s2", [11]), _ints("e2", [3]), _ints("st", [-2]), _ints("zero", [0]),
              _ints("shape", [0, -1]), _ints("idx", [[2, -1], [0, 0]]), _ints("sq", [0])]
    nodes = [
        helper.make_node("Slice", ["w", "s0", "e0", "ax"], ["a"]),
        helper.make_node("Slice", ["w", "s1", "e1"], ["b"]),
        helper.make_node("Slice", ["w", "s2", "e2", "ax", "st"], ["c"]),
        helper.make_node("Concat", ["a", "c", "b"], ["cat"], axis=0),
        helper.make_node("Unsqueeze", ["cat", "zero"], ["u"]),
        helper.make_node("Transpose", ["u"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("Cast", ["r"], ["h"], to=onnx.TensorProto.FLOAT16),
        helper.make_node("Identity", ["h"], ["i"]),
        helper.make_node("Squeeze", ["i", "sq"], ["s"]),
        helper.make_node("Gather", ["s", "idx"], ["g"], axis=0),
        helper.make_node("Gather", ["w", "idx"], ["g1"], axis=1),
    ]
    outputs = [out(n) for n in ("a", "b", "c", "cat", "u", "t", "r")] + \
              [out(n, onnx.TensorProto.FLOAT16) for n in ("h", "i", "s", "g")] + [out("g1")]
    ours = _check_against_ort(model(nodes, [w, *params], [], outputs), tmp_path)
    assert ours["r"].ops == ("Slice", "Concat", "Unsqueeze", "Transpose", "Reshape")
    assert ours["r"].sources == ("w",) and ours["r"].kind == "folded"
    assert ours["r"].describe() == "folded through Slice, Concat, Unsqueeze, Transpose, Reshape from 'w'"


def test_attribute_forms_of_older_opsets(tmp_path):
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((1, 8, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Slice", ["w"], ["a"], starts=[2, -1], ends=[100, -4], axes=[1, 2]),
        helper.make_node("Squeeze", ["w"], ["sq"], axes=[0]),
        helper.make_node("Unsqueeze", ["sq"], ["un"], axes=[-1, 0]),
        helper.make_node("Squeeze", ["un"], ["all"]),
        helper.make_node("Reshape", ["w", "shape"], ["re"]),
    ]
    m = model(nodes, [w, _ints("shape", [-1, 4])], [], [out(n) for n in ("a", "sq", "un", "all", "re")], opset=9)
    _check_against_ort(m, tmp_path)


def test_reshape_attribute_form_of_opset_4(tmp_path):
    """onnxruntime starts at opset 7: onnx's version converter turns the attribute into an input."""
    from onnx import version_converter

    w = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4), "w")
    m = model([helper.make_node("Reshape", ["w"], ["y"], shape=[4, 0, -1])], [w], [], [out("y")], opset=4)
    ours = _fold_all(m, tmp_path, ["y"])["y"]
    converted = version_converter.convert_version(m, 13)
    converted.ir_version = 8
    truth = ort_run(converted)["y"]
    assert ours.shape == truth.shape and ours.read().tobytes() == truth.tobytes()


def test_constant_node_forms(tmp_path):
    nodes = [
        helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.arange(6, dtype=np.int32).reshape(2, 3))),
        helper.make_node("Constant", [], ["f"], value_float=2.5),
        helper.make_node("Constant", [], ["fs"], value_floats=[1.0, -0.0, 3.5]),
        helper.make_node("Constant", [], ["i"], value_int=-7),
        helper.make_node("Constant", [], ["is"], value_ints=[1, 2**40]),
        helper.make_node("Concat", ["fs", "fs"], ["cat"], axis=0),
    ]
    outputs = [out("t", onnx.TensorProto.INT32), out("f"), out("fs"), out("i", I64), out("is", I64), out("cat")]
    ours = _check_against_ort(model(nodes, [], [], outputs), tmp_path)
    assert ours["t"].kind == "constant" and ours["t"].describe() == "Constant node output 't'"
    assert ours["cat"].sources == ("fs",)


def test_casts_including_bfloat16(tmp_path):
    import ml_dtypes

    values = np.array([1.0, 1.00390625, 1.01171875, -3.3, 65504.0, 1e30, np.inf, -0.0, 2.5, 1e-20], np.float32)
    bf16 = numpy_helper.from_array(values.astype(ml_dtypes.bfloat16), "bf16")
    f32 = numpy_helper.from_array(values, "f32")
    ints = numpy_helper.from_array(np.array([-3, 0, 2**31 - 1, 7], np.int64), "ints")
    nodes = [
        helper.make_node("Cast", ["bf16"], ["bf16_as_f32"], to=F32),
        helper.make_node("Cast", ["f32"], ["to_bf16"], to=onnx.TensorProto.BFLOAT16),
        helper.make_node("Cast", ["to_bf16"], ["rounded"], to=F32),
        helper.make_node("Cast", ["f32"], ["to_f16"], to=onnx.TensorProto.FLOAT16),
        helper.make_node("Cast", ["f32"], ["to_f64"], to=onnx.TensorProto.DOUBLE),
        helper.make_node("Cast", ["f32"], ["to_bool"], to=onnx.TensorProto.BOOL),
        helper.make_node("Cast", ["ints"], ["ints_f32"], to=F32),
        helper.make_node("Cast", ["ints"], ["ints_i8"], to=onnx.TensorProto.INT8),
    ]
    outputs = [out("bf16_as_f32"), out("rounded"), out("to_f16", onnx.TensorProto.FLOAT16),
               out("to_f64", onnx.TensorProto.DOUBLE), out("to_bool", onnx.TensorProto.BOOL), out("ints_f32"),
               out("ints_i8", onnx.TensorProto.INT8)]
    m = model(nodes, [bf16, f32, ints], [], outputs)
    ours = _check_against_ort(m, tmp_path)
    folder_values = _fold_all(m, tmp_path, ["to_bf16"])
    assert folder_values["to_bf16"].dtype == "bfloat16"
    assert folder_values["to_bf16"].read().tobytes() == ours["rounded"].read().tobytes()


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_slice_clamping_matches_onnxruntime(tmp_path_factory, data):
    shape = data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))
    count = data.draw(st.integers(1, len(shape)))
    axes = data.draw(st.permutations(range(len(shape))))[:count]
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]
    bound = st.one_of(st.integers(-9, 9), st.sampled_from([2**63 - 1, -(2**63), 2**31 - 1, 2**31, -(2**31)]))
    starts = data.draw(st.lists(bound, min_size=count, max_size=count))
    ends = data.draw(st.lists(bound, min_size=count, max_size=count))
    steps = data.draw(st.lists(st.sampled_from([1, 2, 3, -1, -2, -5]), min_size=count, max_size=count))
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    m = model([helper.make_node("Slice", ["x", "s", "e", "a", "p"], ["y"])],
              [numpy_helper.from_array(array, "x"), _ints("s", starts), _ints("e", ends), _ints("a", axes),
               _ints("p", steps)], [], [out("y")])
    truth = ort_run(m)["y"]
    ours = ConstantFolder(parse_onnx(m.SerializeToString()))
    value = ours.value(ours.root, "y")
    assert value.shape == truth.shape and value.read().tobytes() == truth.tobytes()


def test_identity_and_reshapes_stay_lazy(tmp_path):
    w = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(4, 6), "w")
    nodes = [helper.make_node("Identity", ["w"], ["i"]),
             helper.make_node("Reshape", ["i", "shape"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "zero"], ["u"]),
             helper.make_node("Cast", ["u"], ["c"], to=F32),
             helper.make_node("Transpose", ["w"], ["t"])]
    m = model(nodes, [w, _ints("shape", [2, 12]), _ints("zero", [0])], [], [out(n) for n in "iruct"])
    ours = _check_against_ort(m, tmp_path)
    stored = read_onnx(tmp_path / "fold.onnx").graph.initializers[0]
    for name in "iruc":
        assert ours[name].lazy and ours[name].extent == stored.extent, name
        assert ours[name].tensor.name == "w"
    assert ours["c"].shape == (1, 2, 12) and ours["c"].ops == ("Identity", "Reshape", "Unsqueeze", "Cast")
    assert not ours["t"].lazy and ours["t"].extent is None


def test_outer_values_inside_if_branches(tmp_path):
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")
    then_graph = helper.make_graph(
        [helper.make_node("Slice", ["w", "s", "e"], ["inner"])], "then", [], [out("inner")])
    else_graph = helper.make_graph([helper.make_node("Identity", ["w"], ["other"])], "else", [], [out("other")])
    m = model([helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)],
              [w, _ints("s", [1]), _ints("e", [3])], [out("flag", onnx.TensorProto.BOOL, [])], [out("y")])
    ours = read_onnx(save(m, tmp_path / "if.onnx"))
    folder = ConstantFolder(ours)
    if_node = ours.graph.nodes[0]
    then_scope = folder.root.child(if_node.attribute("then_branch").value, "If_0/then_branch")
    inner = folder.value(then_scope, "inner")
    truth = ort_run(m, {"flag": np.array(True)})["y"]
    assert inner.read().tobytes() == truth.tobytes() and inner.sources == ("w",)
    assert isinstance(folder.value(folder.root, "y"), Unknown)


def _expose_silero_weights(m: onnx.ModelProto) -> onnx.ModelProto:
    """Add W, R, B of the LSTM of each branch of /model/decoder/If_1 to the branch's outputs, the If's
    outputs and the graph's outputs, so onnxruntime reports the values it feeds the LSTM node. The If's
    condition becomes a graph input (the file's condition, len(state) == 2, always takes then_branch)."""
    if_node = next(n for n in m.graph.node if n.name == "/model/decoder/If_1")
    if_node.input[0] = "take_then_branch"
    m.graph.input.append(out("take_then_branch", onnx.TensorProto.BOOL, []))
    for attribute in if_node.attribute:
        lstm = next(n for n in attribute.g.node if n.op_type == "LSTM")
        for name in lstm.input[1:4]:
            attribute.g.output.append(out(name))
    for role in ("W", "R", "B"):
        if_node.output.append(f"exposed_{role}")
        m.graph.output.append(out(f"exposed_{role}"))
    return m


def test_silero_weights_fold_to_what_onnxruntime_feeds_the_lstm():
    path = next(p for p in CORPUS_ONNX if "silero" in p.name)
    exposed = _expose_silero_weights(onnx.load(str(path)))
    ours = read_onnx(path)
    folder = ConstantFolder(ours)
    if_node = next(n for n in ours.graph.nodes if n.name == "/model/decoder/If_1")
    for branch in ("then_branch", "else_branch"):
        feeds = {"input": np.zeros((1, 512), np.float32), "state": np.zeros((2, 1, 128), np.float32),
                 "sr": np.array(16000, np.int64), "take_then_branch": np.array(branch == "then_branch")}
        truth = ort_run(exposed, feeds)
        scope = folder.root.child(if_node.attribute(branch).value, branch)
        lstm = next(n for n in scope.graph.nodes if n.op_type == "LSTM")
        for role, name in zip("WRB", lstm.inputs[1:4]):
            value = folder.value(scope, name)
            assert value.kind == "folded" and value.ops == ("Slice", "Concat", "Unsqueeze"), role
            assert value.read().tobytes() == truth[f"exposed_{role}"].tobytes(), (branch, role)


def test_runtime_values_say_why(tmp_path):
    body = helper.make_graph([helper.make_node("Identity", ["carried"], ["next"])], "body",
                             [out("iter", I64, []), out("cond", onnx.TensorProto.BOOL, []), out("carried", shape=[3])],
                             [out("cond", onnx.TensorProto.BOOL, []), out("next", shape=[3])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Reshape", ["w", "shape"], ["reshaped"]),
             helper.make_node("Custom", ["w"], ["custom"], domain="vendor"),
             helper.make_node("Loop", ["n", "", "w"], ["looped"], body=body, name="loop")]
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    m = model(nodes, [w], [out("x", shape=["batch", 3]), out("n", I64, []), out("w", shape=[3])],
              [out("reshaped"), out("custom"), out("looped")], value_info=[out("custom", shape=[7])])
    ours = read_onnx(save(m, tmp_path / "rt.onnx"))
    folder = ConstantFolder(ours)
    x = folder.value(folder.root, "x")
    assert isinstance(x, Unknown) and x.why == "graph input 'x': its value is given at run time"
    assert x.shape == ("batch", 3) and x.dtype == "float32"
    assert folder.value(folder.root, "reshaped").why == "computed at run time by the Shape node ''"
    custom = folder.value(folder.root, "custom")
    assert custom.why == "computed at run time by the vendor.Custom node ''" and custom.shape == (7,)
    weight = folder.value(folder.root, "w")
    assert weight.overridable and "a runtime may replace it" in weight.describe()
    scope = folder.root.child(ours.graph.nodes[3].attribute("body").value, "loop/body")
    carried = folder.value(scope, "next")
    assert carried.why == "input 'carried' of the subgraph loop/body: set at run time" and carried.shape == (3,)
