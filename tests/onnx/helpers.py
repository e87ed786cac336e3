"""Shared test helpers: build ONNX models with `onnx.helper`, compare what lstm-inspect reads with what
the `onnx` package reads (the oracle), and run onnxruntime to learn what a graph computes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lstm_inspect.formats.onnx.proto import Graph, OnnxModel, OnnxTensor, ValueInfo

F32 = onnx.TensorProto.FLOAT

# ONNX element types whose values lstm-inspect reads, with the numpy name it reports.
READABLE = {
    onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.INT16: "int16", onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.UINT32: "uint32", onnx.TensorProto.UINT64: "uint64",
    onnx.TensorProto.COMPLEX64: "complex64", onnx.TensorProto.COMPLEX128: "complex128",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}


def model(nodes, initializers=(), inputs=(), outputs=(), opset=17, value_info=(), name="g", ir_version=None):
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers),
                              value_info=list(value_info))
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    made.ir_version = ir_version or min(made.ir_version, 10)  # what onnxruntime 1.32 accepts
    return made


def out(name, elem=F32, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def save(m: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(m.SerializeToString())
    return path


def ort_run(m: onnx.ModelProto, feeds: dict | None = None) -> dict[str, np.ndarray]:
    """Every graph output, as onnxruntime computes it (no graph optimisation: the plain op semantics)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds or {})))


# --- comparing with the onnx package ----------------------------------------------------------

def assert_same_values(got: np.ndarray, expected: np.ndarray, dtype: str, what: str = "") -> None:
    """Bit for bit. bfloat16 comes back widened to float32; onnx gives ml_dtypes.bfloat16."""
    assert got.shape == expected.shape, what
    if dtype == "bfloat16":
        assert got.dtype == np.float32, what
        bits = got.view(np.uint32)
        assert not np.any(bits & 0xFFFF), what
        assert np.array_equal((bits >> 16).astype(np.uint16), expected.view(np.uint16)), what
    else:
        assert got.dtype == expected.dtype, what
        assert got.tobytes() == expected.tobytes(), what


def assert_same_tensor(ours: OnnxTensor, theirs: onnx.TensorProto, base_dir: str) -> None:
    assert ours.name == theirs.name
    assert ours.dims == tuple(theirs.dims), ours.name
    if theirs.data_type not in READABLE:
        return
    assert ours.dtype == READABLE[theirs.data_type], ours.name
    expected = numpy_helper.to_array(theirs, base_dir)
    got = ours.read()
    assert not got.flags.writeable
    assert_same_values(got, expected, ours.dtype, ours.name)
    if ours.extent is not None:
        path, offset = ours.extent
        with open(path, "rb") as fh:
            fh.seek(offset)
            assert fh.read(got.nbytes) == got.tobytes(), ours.name


def assert_same_value_info(ours: ValueInfo, theirs: onnx.ValueInfoProto) -> None:
    assert ours.name == theirs.name
    field = theirs.type.WhichOneof("value")
    if field not in ("tensor_type", "sparse_tensor_type"):
        return
    t = getattr(theirs.type, field)
    assert ours.dtype == (READABLE.get(t.elem_type) or ours.dtype)
    if not t.HasField("shape"):
        assert ours.shape is None
        return
    dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param if d.HasField("dim_param") else None
                 for d in t.shape.dim)
    assert ours.shape == dims, ours.name


def assert_same_attribute_value(ours, theirs: onnx.AttributeProto, base_dir: str) -> None:
    value = helper.get_attribute_value(theirs)
    kind = ours.type
    if kind == "float":
        assert np.float32(ours.value).tobytes() == np.float32(value).tobytes()
    elif kind == "floats":
        assert np.array(ours.value, np.float32).tobytes() == np.array(value, np.float32).tobytes()
    elif kind == "string":
        assert ours.value == value.decode("utf-8")
    elif kind == "strings":
        assert ours.value == tuple(v.decode("utf-8") for v in value)
    elif kind == "ints":
        assert ours.value == tuple(value)
    elif kind == "tensor":
        assert_same_tensor(ours.value, value, base_dir)
    elif kind == "tensors":
        assert len(ours.value) == len(value)
        for a, b in zip(ours.value, value):
            assert_same_tensor(a, b, base_dir)
    elif kind == "graph":
        assert_same_graph(ours.value, value, base_dir)
    elif kind == "graphs":
        assert len(ours.value) == len(value)
        for a, b in zip(ours.value, value):
            assert_same_graph(a, b, base_dir)
    elif kind == "int":
        assert ours.value == value


def assert_same_nodes(ours, theirs, base_dir: str) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert (a.name, a.op_type, a.domain) == (b.name, b.op_type, b.domain)
        assert a.inputs == tuple(b.input) and a.outputs == tuple(b.output), a.name
        assert [x.name for x in a.attributes] == [x.name for x in b.attribute], a.name
        for x, y in zip(a.attributes, b.attribute):
            assert x.type == onnx.AttributeProto.AttributeType.Name(y.type).lower(), (a.name, x.name)
            assert x.ref_attr_name == y.ref_attr_name
            if not y.ref_attr_name:
                assert_same_attribute_value(x, y, base_dir)


def assert_same_graph(ours: Graph, theirs: onnx.GraphProto, base_dir: str) -> None:
    assert ours.name == theirs.name
    assert_same_nodes(ours.nodes, theirs.node, base_dir)
    assert len(ours.initializers) == len(theirs.initializer)
    for a, b in zip(ours.initializers, theirs.initializer):
        assert_same_tensor(a, b, base_dir)
    assert ours.sparse_initializers == tuple(s.values.name for s in theirs.sparse_initializer)
    for mine, other in ((ours.inputs, theirs.input), (ours.outputs, theirs.output),
                        (ours.value_info, theirs.value_info)):
        assert len(mine) == len(other)
        for a, b in zip(mine, other):
            assert_same_value_info(a, b)


def assert_same_model(ours: OnnxModel, path: Path) -> onnx.ModelProto:
    """Everything lstm-inspect read from `path` equals what `onnx.load` reads (values: to_array)."""
    theirs = onnx.load(str(path), load_external_data=False)
    assert ours.ir_version == theirs.ir_version
    assert (ours.producer_name, ours.producer_version) == (theirs.producer_name, theirs.producer_version)
    assert (ours.domain, ours.model_version, ours.doc_string) == (theirs.domain, theirs.model_version,
                                                                    theirs.doc_string)
    assert ours.opset_imports == tuple((o.domain, o.version) for o in theirs.opset_import)
    assert ours.metadata_props == tuple((p.key, p.value) for p in theirs.metadata_props)
    assert [(f.domain, f.name) for f in ours.functions] == [(f.domain, f.name) for f in theirs.functions]
    for a, b in zip(ours.functions, theirs.functions):
        assert (a.inputs, a.outputs) == (tuple(b.input), tuple(b.output))
        assert a.opset_imports == tuple((o.domain, o.version) for o in b.opset_import)
        assert_same_nodes(a.nodes, b.node, str(path.parent))
    assert_same_graph(ours.graph, theirs.graph, str(path.parent))
    return theirs


def walk_onnx_nodes(graph: onnx.GraphProto):
    """Every NodeProto, subgraphs included (each subgraph right after the node holding it)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from walk_onnx_nodes(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for g in attribute.graphs:
                    yield from walk_onnx_nodes(g)


# --- writing protobuf bytes by hand (forms the onnx package never writes) ---------------------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_field(number: int, payload: bytes | int, wire: int = 2) -> bytes:
    key = varint(number << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 5:
        return key + int(payload).to_bytes(4, "little")
    return key + varint(len(payload)) + payload
