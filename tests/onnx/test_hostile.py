"""Hostile ONNX files: whatever the bytes, reading, finding recurrent nodes, folding and reading values end
in a result or a typed error (`InspectError`), within bounded time and memory."""
from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from lstm_inspect.errors import CorruptModelError, InspectError, UnsafeModelError
from lstm_inspect.formats.onnx.fold import ConstantFolder, Folded, Scope
from lstm_inspect.formats.onnx.proto import (DEFAULT_BOUNDS, Graph, OnnxBounds, OnnxModel, OnnxTensor, parse_onnx,
                                             read_onnx)
from lstm_inspect.formats.onnx.recurrent import find_recurrent
from lstm_inspect.safety import Limits

from .helpers import model, out, pb_field, save, varint
from ..timing import cpu_budget

SMALL = Limits(max_dataset_bytes=64 << 20)
MiB = 1 << 20


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _seed_model() -> bytes:
    """Small but varied: an LSTM in the main graph with W through Slice/Concat/Unsqueeze, an If whose
    branches hold a GRU with typed-field and float16 weights, Constant nodes, value_info shapes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")
    r = helper.make_tensor("r", onnx.TensorProto.FLOAT, [1, 8, 2], rng.standard_normal(16).tolist())
    gw = numpy_helper.from_array(rng.standard_normal((1, 3, 3)).astype(np.float16), "gw")
    gr = helper.make_tensor("gr", onnx.TensorProto.INT64, [2], [-1, 3])

    def branch(tag: str) -> onnx.GraphProto:
        return helper.make_graph([
            helper.make_node("Cast", ["gw"], [f"gw32_{tag}"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Constant", [], [f"gr_{tag}"], value_floats=[0.5] * 3),
            helper.make_node("Reshape", [f"gr_{tag}", "shape"], [f"gr3_{tag}"]),
            helper.make_node("GRU", ["x", f"gw32_{tag}", f"gr3_{tag}"], [f"y_{tag}"], hidden_size=1,
                             linear_before_reset=1)], tag, [], [out(f"y_{tag}", shape=[None, 1, 1, 1])])

    nodes = [
        helper.make_node("Slice", ["w", "s", "e"], ["w_a"]),
        helper.make_node("Slice", ["w", "e", "big"], ["w_b"]),
        helper.make_node("Concat", ["w_b", "w_a"], ["w_c"], axis=0),
        helper.make_node("Unsqueeze", ["w_c", "zero"], ["W"]),
        helper.make_node("LSTM", ["x", "W", "r", "", "", "", "", ""], ["y", "y_h"], hidden_size=2, name="lstm"),
        helper.make_node("Gather", ["gr", "zero"], ["picked"]),
        helper.make_node("If", ["flag"], ["z"], then_branch=branch("then"), else_branch=branch("else")),
    ]
    m = model(nodes, [w, r, gw, gr, _ints("s", [0]), _ints("e", [4]), _ints("big", [2**62]), _ints("zero", [0]),
                      _ints("shape", [1, 3, 1])],
              [out("x", shape=["T", 1, 3]), out("flag", onnx.TensorProto.BOOL, [])], [out("y"), out("z")],
              value_info=[out("W", shape=[1, 8, 3])])
    return m.SerializeToString()


SEED = _seed_model()


def _tensors(graph: Graph):
    yield from graph.initializers
    for node in graph.nodes:
        for attribute in node.attributes:
            items = attribute.value if isinstance(attribute.value, tuple) else (attribute.value,)
            for item in items:
                if isinstance(item, OnnxTensor):
                    yield item
                elif isinstance(item, Graph):
                    yield from _tensors(item)


def _fold_everything(folder: ConstantFolder, scope: Scope) -> None:
    for node in scope.graph.nodes:
        for name in node.outputs:
            if name:
                value = folder.value(scope, name)
                if isinstance(value, Folded):
                    value.read()
        for attribute in node.attributes:
            if attribute.type == "graph":
                _fold_everything(folder, scope.child(attribute.value, attribute.name))


def exercise(data: bytes, path=None, bounds: OnnxBounds = DEFAULT_BOUNDS) -> list[str]:
    """Every stage, each on its own; returns the typed errors met (anything else fails the test)."""
    errors = []
    try:
        m: OnnxModel = parse_onnx(data, path=path, limits=SMALL, bounds=bounds)
    except InspectError as err:
        return [type(err).__name__]
    folder = ConstantFolder(m, SMALL)
    stages = (lambda: [t.read() for t in _tensors(m.graph)],
              lambda: find_recurrent(m, SMALL),
              lambda: _fold_everything(folder, folder.root))
    for stage in stages:
        try:
            stage()
        except InspectError as err:
            errors.append(type(err).__name__)
    return errors


def test_seed_model_reads_cleanly():
    assert exercise(SEED) == []
    scan = find_recurrent(parse_onnx(SEED))
    assert [n.path for n in scan.nodes] == ["lstm", "If_0/else_branch/GRU_0", "If_0/then_branch/GRU_0"]


def test_truncation_at_every_offset():
    with cpu_budget(60, "every truncation"):
        for length in range(len(SEED)):
            exercise(SEED[:length])


def _fields(data: bytes) -> list | None:
    """The message as a tree [(number, wire, value)], value a nested tree when the bytes parse as a
    message (a string that happens to parse re-serialises identically), else an int or bytes."""
    from lstm_inspect.formats import protowire as pw

    try:
        items = list(pw.iter_fields(data))
    except pw.ProtoError:
        return None
    tree = []
    for number, wire, value in items:
        if wire == pw.LENGTH:
            raw = bytes(value)
            value = (_fields(raw) or raw) if raw else raw
        tree.append((number, wire, value))
    return tree


def _serialise(tree: list) -> bytes:
    out = bytearray()
    for number, wire, value in tree:
        if wire == 2:
            out += pb_field(number, _serialise(value) if isinstance(value, list) else value)
        elif wire == 1:
            out += varint(number << 3 | 1) + value.to_bytes(8, "little")
        else:
            out += pb_field(number, value, wire=wire)
    return bytes(out)


def _inner_truncations(tree: list, cuts_per_field: int = 48):
    """Every length-delimited field at any depth cut short (enclosing lengths kept consistent)."""
    for index, (number, wire, value) in enumerate(tree):
        if wire != 2:
            continue
        payload = _serialise(value) if isinstance(value, list) else value
        step = max(1, len(payload) // cuts_per_field)
        for cut in range(0, len(payload), step):
            yield tree[:index] + [(number, wire, payload[:cut])] + tree[index + 1:]
        if isinstance(value, list):
            for inner in _inner_truncations(value, cuts_per_field):
                yield tree[:index] + [(number, wire, inner)] + tree[index + 1:]


def test_truncation_of_every_inner_message():
    """Whole-file truncation mostly stops at the first length prefix; cutting each nested message
    (graph, node, attribute, tensor, shape...) with consistent lengths reaches every reader path."""
    tree = _fields(SEED)
    assert _serialise(tree) == SEED
    outcomes: dict = {}
    with cpu_budget(120, "every inner truncation"):
        for variant in _inner_truncations(tree):
            result = tuple(exercise(_serialise(variant)))
            outcomes[result] = outcomes.get(result, 0) + 1
    assert sum(outcomes.values()) > 2000 and () in outcomes and len(outcomes) > 3


@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 7)), min_size=1, max_size=8),
       st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=3))
def test_random_bit_flips_and_byte_overwrites(flips, overwrites):
    data = bytearray(SEED)
    for position, bit in flips:
        data[position] ^= 1 << bit
    for position, byte in overwrites:
        data[position] = byte
    with cpu_budget(5, "one damaged model"):
        exercise(bytes(data))


def _lstm_model(nodes, initializers=(), opset=17) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    r = numpy_helper.from_array(rng.standard_normal((1, 4, 1)).astype(np.float32), "R")
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=1)
    return model([*nodes, lstm], [r, *initializers], [out("x", shape=[1, 1, 2])], [out("y")], opset=opset)


def test_cyclic_graph_is_corrupt():
    cycle = [helper.make_node("Identity", ["b"], ["a"]), helper.make_node("Identity", ["a"], ["W"]),
             helper.make_node("Identity", ["W"], ["b"])]
    with pytest.raises(CorruptModelError, match="cycle"):
        find_recurrent(parse_onnx(_lstm_model(cycle).SerializeToString()))
    self_loop = [helper.make_node("Concat", ["W", "W"], ["W"], axis=0)]
    with pytest.raises(CorruptModelError, match="cycle"):
        find_recurrent(parse_onnx(_lstm_model(self_loop).SerializeToString()))


def test_undefined_and_doubly_defined_values_are_corrupt():
    with pytest.raises(CorruptModelError, match="defined nowhere"):
        find_recurrent(parse_onnx(_lstm_model([]).SerializeToString()))
    twice = [helper.make_node("Constant", [], ["W"], value_floats=[1.0] * 8),
             helper.make_node("Constant", [], ["W"], value_floats=[2.0] * 8)]
    with pytest.raises(CorruptModelError, match="produced by two nodes"):
        find_recurrent(parse_onnx(_lstm_model(twice).SerializeToString()))


def test_long_chains_and_diamonds_fold_without_recursion():
    chain = [helper.make_node("Identity", [f"v{k}"], [f"v{k + 1}"]) for k in range(30_000)]
    chain.append(helper.make_node("Identity", ["v30000"], ["W"]))
    w = numpy_helper.from_array(np.ones((1, 4, 2), np.float32), "v0")
    with cpu_budget(30, "a long chain and a deep diamond"):
        (node,) = find_recurrent(parse_onnx(_lstm_model(chain, [w]).SerializeToString())).nodes
        assert node.input("W").value.lazy and node.input("W").value.read().shape == (1, 4, 2)
        diamond = []
        for k in range(300):  # each level reads the previous one twice: 2**300 paths without memoisation
            diamond += [helper.make_node("Slice", [f"d{k}", "s0", "e1", "ax"], [f"lo{k}"]),
                        helper.make_node("Slice", [f"d{k}", "e1", "e4", "ax"], [f"hi{k}"]),
                        helper.make_node("Concat", [f"hi{k}", f"lo{k}"], [f"d{k + 1}"], axis=1)]
        diamond.append(helper.make_node("Identity", ["d300"], ["W"]))
        m = _lstm_model(diamond, [numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(1, 4, 2), "d0"),
                                  _ints("s0", [0]), _ints("e1", [1]), _ints("e4", [4]), _ints("ax", [1])])
        (node,) = find_recurrent(parse_onnx(m.SerializeToString())).nodes
        expected = np.roll(np.arange(8, dtype=np.float32).reshape(1, 4, 2), -300, axis=1)
        assert np.array_equal(node.input("W").value.read(), expected)


def _claimed(name: str, code: int, dims: list[int], **fields) -> onnx.TensorProto:
    """A TensorProto whose dims say more than its data holds (onnx.helper refuses to write one)."""
    tensor = onnx.TensorProto(name=name, data_type=code, dims=dims)
    for field, values in fields.items():
        if field == "raw_data":
            tensor.raw_data = values
        else:
            getattr(tensor, field).extend(values)
    return tensor


def test_claimed_huge_tensors_are_refused_before_allocation():
    cases = [
        _claimed("raw", onnx.TensorProto.FLOAT, [2**29], raw_data=b"0123456789"),  # 2 GiB claimed
        _claimed("typed", onnx.TensorProto.INT8, [2**31], int32_data=[1, 2, 3]),
        _claimed("floats", onnx.TensorProto.FLOAT, [2**29], float_data=[1.0, 2.0]),
        _claimed("empty", onnx.TensorProto.FLOAT, [2**29]),
    ]
    for tensor in cases:
        data = model([helper.make_node("Identity", [tensor.name], ["y"])], [tensor], [], [out("y")]).SerializeToString()
        tracemalloc.start()
        with pytest.raises(CorruptModelError, match="declares"):
            parse_onnx(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 * MiB, tensor.name
    huge = _claimed("huge", onnx.TensorProto.FLOAT, [2**40, 2**20], raw_data=b"")
    data = model([helper.make_node("Identity", ["huge"], ["y"])], [huge], [], [out("y")]).SerializeToString()
    with pytest.raises(UnsafeModelError, match="over the"):
        parse_onnx(data)


def test_claimed_huge_external_range(tmp_path):
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    m = model([helper.make_node("Identity", ["w"], ["y"])], [tensor], [], [out("y")])
    onnx.save_model(m, str(tmp_path / "m.onnx"), save_as_external_data=True, location="d.bin", size_threshold=0)
    saved = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    saved.graph.initializer[0].dims[0] = 2**29
    for entry in saved.graph.initializer[0].external_data:
        if entry.key == "length":
            entry.value = str(2**31)
    save(saved, tmp_path / "m.onnx")
    with pytest.raises(CorruptModelError, match="beyond the end"):
        read_onnx(tmp_path / "m.onnx")


def test_folding_that_would_amplify_is_refused_before_allocation():
    block = numpy_helper.from_array(np.zeros((1 << 18,), np.float32), "block")  # 1 MiB stored
    concat = [helper.make_node("Concat", ["block"] * 100, ["W"], axis=0)]  # would be 100 MiB
    indices = numpy_helper.from_array(np.zeros(1 << 16, np.int64), "idx")  # 512 KiB stored
    rows = numpy_helper.from_array(np.zeros((2, 4096), np.float32), "rows")
    gather = [helper.make_node("Gather", ["rows", "idx"], ["W"], axis=0)]  # would be 1 GiB
    for nodes, inits in ((concat, [block]), (gather, [indices, rows])):
        data = _lstm_model(nodes, inits).SerializeToString()
        tracemalloc.start()
        with pytest.raises(UnsafeModelError, match="folding budget"):
            find_recurrent(parse_onnx(data))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 * MiB


def _nested_if_bytes(depth: int) -> bytes:
    """A model whose graph holds an If whose then_branch holds an If ... `depth` levels, written by hand
    (onnx's own serializer stops at protobuf's recursion limit of 100)."""
    graph = pb_field(2, b"leaf")
    for _ in range(depth):
        attribute = pb_field(1, b"then_branch") + pb_field(20, 5, wire=0) + pb_field(6, graph)
        node = pb_field(1, b"c") + pb_field(2, b"o") + pb_field(4, b"If") + pb_field(5, attribute)
        graph = pb_field(1, node) + pb_field(2, b"g")
    opset = pb_field(1, b"") + pb_field(2, 17, wire=0)
    return pb_field(1, 8, wire=0) + pb_field(8, opset) + pb_field(7, graph)


def test_deep_subgraph_nesting():
    assert exercise(_nested_if_bytes(30)) == []
    with cpu_budget(5, "2,000 nested subgraphs"), pytest.raises(UnsafeModelError, match="nested more than 32"):
        parse_onnx(_nested_if_bytes(2000))


def test_deeply_nested_types_are_not_walked():
    elem = pb_field(1, pb_field(1, 1, wire=0))  # tensor_type { elem_type: FLOAT }
    for _ in range(3000):
        elem = pb_field(4, pb_field(1, elem))  # sequence_type { elem_type: ... }
    graph = pb_field(2, b"g") + pb_field(11, pb_field(1, b"deep") + pb_field(2, elem))
    data = pb_field(1, 8, wire=0) + pb_field(7, graph)
    assert parse_onnx(data).graph.inputs[0].kind == "sequence"


def test_node_count_and_name_length_bounds():
    data = _lstm_model([helper.make_node("Identity", ["R"], ["W"])]).SerializeToString()
    with pytest.raises(UnsafeModelError, match="more than 1 nodes"):
        parse_onnx(data, bounds=OnnxBounds(max_nodes=1))
    with pytest.raises(CorruptModelError, match="over the 4096 limit"):
        parse_onnx(model([helper.make_node("Identity", ["a" * 5000], ["y"])], [], [], []).SerializeToString())


@pytest.mark.parametrize("data, words", [
    (pb_field(1, 8, wire=0) + varint(7 << 3 | 2) + varint(2**62) + b"xx", "claims"),
    (pb_field(1, 8, wire=0) + varint(1 << 3) + b"\xff" * 11, "varint"),
    (pb_field(1, 8, wire=0) + varint(7 << 3 | 3), "wire type"),
    (pb_field(1, 8, wire=0) + pb_field(7, b"\x0a\x05abc"), "claims"),
])
def test_malformed_wire_format(data, words):
    with pytest.raises(CorruptModelError, match=words):
        parse_onnx(data)


def test_bad_packed_varints_fail_when_read():
    for payload, words in ((b"\x01\x82", "truncated varint"), (b"\xff" * 10 + b"\x01", "overlong varint")):
        tensor = pb_field(1, 2, wire=0) + pb_field(2, 6, wire=0) + pb_field(5, payload) + pb_field(8, b"t")
        graph = pb_field(2, b"g") + pb_field(5, tensor)
        parsed = parse_onnx(pb_field(1, 8, wire=0) + pb_field(7, graph)).graph.initializers[0]
        with pytest.raises(CorruptModelError, match=words):
            parsed.read()


def test_wrong_wire_types_in_attributes_and_values():
    float_as_bytes = pb_field(1, b"alpha") + pb_field(20, 1, wire=0) + pb_field(2, b"1234")
    node = pb_field(4, b"Relu") + pb_field(5, float_as_bytes)
    with pytest.raises(CorruptModelError):
        parse_onnx(pb_field(1, 8, wire=0) + pb_field(7, pb_field(1, node)))
    float_as_varint = pb_field(1, 1, wire=0) + pb_field(2, 1, wire=0) + pb_field(4, 2**40, wire=0) + pb_field(8, b"t")
    tensor = parse_onnx(pb_field(1, 8, wire=0) + pb_field(7, pb_field(5, float_as_varint))).graph.initializers[0]
    with pytest.raises(CorruptModelError, match="wrong wire type"):
        tensor.read()
