"""The ModelProto reader against the `onnx` package: structure, attributes and every tensor's values
(bit for bit with `numpy_helper.to_array`), on the real corpus files, torch exports and hand-built models
(every element type, raw and typed fields, packed and unpacked, external data)."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError, UnsupportedDialectError
from lstm_inspect.formats.onnx.proto import parse_onnx, read_onnx

from .conftest import CORPUS_ONNX
from .helpers import READABLE, assert_same_model, model, out, pb_field, save, varint


@pytest.mark.parametrize("path", CORPUS_ONNX, ids=lambda p: p.name)
def test_corpus_files_read_as_onnx_reads_them(path):
    assert_same_model(read_onnx(path), path)


def test_corpus_storage_forms():
    """DTLN (onnxmltools) stores typed fields, silero-vad (PyTorch) raw_data: both forms are real."""
    dtln = read_onnx(next(p for p in CORPUS_ONNX if "DTLN" in p.name))
    silero = read_onnx(next(p for p in CORPUS_ONNX if "silero" in p.name))
    assert {t.storage for t in dtln.graph.initializers} == {"float_data", "int64_data"}
    assert {t.storage for t in silero.graph.initializers} == {"raw_data"}
    assert all(t.extent is None for t in dtln.graph.initializers)  # typed values are not raw bytes
    assert all(t.extent is not None for t in silero.graph.initializers if t.size)


def test_torch_exports_read_as_onnx_reads_them(torch_exports):
    for key, (path, _module) in torch_exports.items():
        ours = read_onnx(path)
        assert_same_model(ours, path)
        storages = {t.storage for t in ours.graph.initializers}
        if key.endswith("dynamo") and not key.startswith("rnn"):
            assert "external" in storages, key  # torch 2.13 writes <name>.onnx.data by default
            for t in ours.graph.initializers:
                if t.storage == "external":
                    assert t.external.location == path.name + ".data"
                    assert t.extent == (os.path.realpath(str(path) + ".data"), t.external.offset)


def _specials(dtype: str, rng) -> np.ndarray:
    if dtype in ("float32", "float64", "float16"):
        values = rng.standard_normal(7).astype(dtype)
        return np.concatenate([values, np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype=dtype)])
    if dtype.startswith("complex"):
        return (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(dtype)
    if dtype == "bool":
        return np.array([True, False, True, True])
    info = np.iinfo(dtype)
    return np.array([info.min, info.max, 0, 1, -1 if info.min < 0 else 2, 7], dtype=dtype)


def _typed_tensor(name: str, code: int, array: np.ndarray) -> onnx.TensorProto:
    """The typed-field form (raw=False): onnx.helper puts each type in the field the spec names."""
    return helper.make_tensor(name, code, array.shape, array.flatten().tolist(), raw=False)


def test_every_element_type_raw_and_typed(tmp_path):
    import ml_dtypes  # onnx's own dependency: the oracle's bfloat16

    rng = np.random.default_rng(1)
    initializers = []
    for code, dtype in READABLE.items():
        if dtype == "bfloat16":
            array = np.array([1.0, -2.5, 3.140625, np.nan, np.inf, -0.0, 1e-40, 65504.0], dtype=ml_dtypes.bfloat16)
            raw = helper.make_tensor("raw_bf16", code, array.shape, array.view(np.uint16).tobytes(), raw=True)
            typed = helper.make_tensor("typed_bf16", code, array.shape, array.astype(np.float32).tolist())
            initializers += [raw, typed]
            continue
        array = _specials(dtype, rng).reshape(-1, 1)
        initializers.append(numpy_helper.from_array(array, f"raw_{dtype}"))
        initializers.append(_typed_tensor(f"typed_{dtype}", code, array))
    initializers.append(numpy_helper.from_array(np.zeros((0, 3), np.float32), "empty"))
    initializers.append(numpy_helper.from_array(np.float32(2.5), "scalar"))
    path = save(model([helper.make_node("Identity", ["raw_float32"], ["y"])], initializers, [], [out("y")]),
                tmp_path / "types.onnx")
    ours = read_onnx(path)
    assert_same_model(ours, path)
    storage = {t.name: t.storage for t in ours.graph.initializers}
    assert storage["typed_float32"] == "float_data" and storage["typed_float16"] == "int32_data"
    assert storage["typed_bf16"] == "int32_data" and storage["typed_uint32"] == "uint64_data"
    assert storage["typed_int64"] == "int64_data" and storage["typed_float64"] == "double_data"
    assert storage["typed_complex64"] == "float_data" and storage["raw_int8"] == "raw_data"
    assert {t.name for t in ours.graph.initializers if t.extent} == {
        t.name for t in ours.graph.initializers if t.storage == "raw_data" and t.dtype != "bfloat16" and t.size}


def _model_bytes_with_initializer(tensor_bytes: bytes) -> bytes:
    """A ModelProto whose only initializer is `tensor_bytes`, written field by field."""
    graph = pb_field(2, b"g") + pb_field(5, tensor_bytes)
    opset = pb_field(1, b"") + pb_field(2, 17, wire=0)
    return pb_field(1, 8, wire=0) + pb_field(8, opset) + pb_field(7, graph)


def test_unpacked_and_split_repeated_fields():
    """Writers may emit repeated numbers unpacked, or packed in several runs: both are valid protobuf."""
    floats = np.array([1.5, -2.0, np.nan], np.float32)
    ints = [-3, 70000, 5]
    cases = {
        "f_unpacked": pb_field(1, 3, wire=0) + pb_field(2, 1, wire=0) + b"".join(
            pb_field(4, int(v), wire=5) for v in floats.view(np.uint32)),
        "i16_unpacked": pb_field(1, 3, wire=0) + pb_field(2, 5, wire=0) + b"".join(
            pb_field(5, v, wire=0) for v in ints),
        "i64_two_runs": pb_field(1, 3, wire=0) + pb_field(2, 7, wire=0)
        + pb_field(7, b"".join(varint(v) for v in ints[:2])) + pb_field(7, varint(ints[2])),
        "dims_unpacked": pb_field(1, 1, wire=0) + pb_field(1, 3, wire=0) + pb_field(2, 6, wire=0)
        + pb_field(5, b"".join(varint(v) for v in ints)),
    }
    for name, body in cases.items():
        data = _model_bytes_with_initializer(body + pb_field(8, name.encode()))
        theirs = onnx.load_from_string(data).graph.initializer[0]
        ours = parse_onnx(data).graph.initializers[0]
        assert ours.dims == tuple(theirs.dims)
        expected = numpy_helper.to_array(theirs)
        assert ours.read().tobytes() == expected.tobytes() and ours.read().dtype == expected.dtype, name


def test_subgraphs_attributes_shapes_metadata_functions(tmp_path):
    then_graph = helper.make_graph([helper.make_node("Constant", [], ["t"], value_floats=[1.0, 2.0])],
                                   "then", [], [out("t", shape=[2])])
    else_graph = helper.make_graph([helper.make_node("Identity", ["w"], ["e"])], "else", [], [out("e", shape=[2])])
    body = helper.make_graph([helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [out("i", onnx.TensorProto.INT64, []), out("cond", onnx.TensorProto.BOOL, []),
                              out("c_in", shape=[2])],
                             [out("cond", onnx.TensorProto.BOOL, []), out("c_out", shape=[2])])
    nodes = [
        helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph, name="branch"),
        helper.make_node("Loop", ["n", "", "y"], ["z"], body=body, name=""),
        helper.make_node("Custom", ["z"], ["q"], domain="my.domain", f=0.1, i=-7, s="text", floats=[0.5, -1e-3],
                         ints=[1, -2, 3], strings=["a", "ü"], t=numpy_helper.from_array(np.arange(3, dtype=np.int8)),
                         tensors=[numpy_helper.from_array(np.ones(2, np.float16))], graphs=[then_graph, else_graph]),
        helper.make_node("MyFunction", ["q"], ["r"], domain="local"),
    ]
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0], np.float32), "sp"),
                                       numpy_helper.from_array(np.array([1], np.int64), "sp_idx"), [4])
    graph = helper.make_graph(
        nodes, "main", [out("flag", onnx.TensorProto.BOOL, []), out("n", onnx.TensorProto.INT64, ["N"])],
        [out("r", shape=["batch", 2, None])], [numpy_helper.from_array(np.array([3.0, 4.0], np.float32), "w")],
        value_info=[out("y", shape=[2]), helper.make_tensor_sequence_value_info("seq", onnx.TensorProto.FLOAT, None),
                    helper.make_value_info("untyped", onnx.TypeProto())],
        sparse_initializer=[sparse])
    function = helper.make_function("local", "MyFunction", ["a"], ["b"], [helper.make_node("Identity", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                          functions=[function], doc_string="a doc", producer_name="p", producer_version="1.2",
                          model_version=42, domain="test.domain")
    helper.set_model_props(m, {"key": "value", "ключ": "значение"})
    path = save(m, tmp_path / "rich.onnx")
    ours = read_onnx(path)
    assert_same_model(ours, path)
    assert ours.functions[0].inputs == ("a",) and ours.functions[0].nodes[0].op_type == "Identity"
    assert ours.opset("") == 17 and ours.opset("ai.onnx") == 17 and ours.opset("local") == 1
    kinds = {v.name: v.kind for v in ours.graph.value_info}
    assert kinds == {"y": "tensor", "seq": "sequence", "untyped": ""}


def _external_model(tmp_path, name="ext.onnx", location="weights.bin"):
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.arange(6, dtype=np.float16),
              "i": np.array([-1, 2**40], np.int64)}
    m = model([helper.make_node("Identity", ["w"], ["y"])],
              [numpy_helper.from_array(a, k) for k, a in arrays.items()], [], [out("y")])
    onnx.save_model(m, str(tmp_path / name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)
    return tmp_path / name


def test_external_data_is_read_in_place(tmp_path):
    path = _external_model(tmp_path)
    ours = read_onnx(path)
    assert_same_model(ours, path)
    for tensor in ours.graph.initializers:
        assert tensor.storage == "external" and tensor.external.location == "weights.bin"
        assert tensor.extent == (os.path.realpath(tmp_path / "weights.bin"), tensor.external.offset)


def _rewrite_location(path, location: str | None = None, **keys: str):
    m = onnx.load(str(path), load_external_data=False)
    entries = m.graph.initializer[0].external_data
    for entry in entries:
        if entry.key == "location" and location is not None:
            entry.value = location
        if entry.key in keys:
            entry.value = keys.pop(entry.key)
    for key, value in keys.items():
        entries.add(key=key, value=value)
    path.write_bytes(m.SerializeToString())


@pytest.mark.parametrize("location, error, words", [
    ("../weights.bin", UnsafeModelError, "'..'"),
    ("sub/../../weights.bin", UnsafeModelError, "'..'"),
    ("/etc/passwd", UnsafeModelError, "absolute"),
    ("", UnsafeModelError, "empty"),
    ("missing.bin", CorruptModelError, "does not exist"),
    ("sub", UnsafeModelError, "not a regular file"),
])
def test_external_paths_are_confined(tmp_path, location, error, words):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    path = _external_model(folder)
    (tmp_path / "weights.bin").write_bytes((folder / "weights.bin").read_bytes())
    _rewrite_location(path, location)
    with pytest.raises(error, match=words):
        read_onnx(path)


def test_external_symlinks(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    path = _external_model(folder)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((folder / "weights.bin").read_bytes())
    (folder / "escape.bin").symlink_to(outside)
    (folder / "inside.bin").symlink_to(folder / "weights.bin")
    _rewrite_location(path, "inside.bin")
    assert read_onnx(path).graph.initializers[0].read().shape == (3, 4)  # a link within the folder is fine
    _rewrite_location(path, "escape.bin")
    with pytest.raises(UnsafeModelError, match="symbolic link"):
        read_onnx(path)


@pytest.mark.parametrize("keys, words", [
    ({"offset": "1000000"}, "beyond the end"),
    ({"length": "1000000"}, "beyond the end"),
    ({"length": "44"}, "raw_data holds 44 bytes"),
    ({"offset": "-4"}, "not a number"),
    ({"offset": "0x10"}, "not a number"),
])
def test_external_ranges_must_lie_in_the_file(tmp_path, keys, words):
    path = _external_model(tmp_path)
    _rewrite_location(path, **keys)
    with pytest.raises(CorruptModelError, match=words):
        read_onnx(path)


def test_external_file_that_shrinks_after_parsing(tmp_path):
    path = _external_model(tmp_path)
    ours = read_onnx(path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(CorruptModelError, match="changed"):
        ours.graph.initializers[0].read()


def test_bytes_without_a_path(tmp_path):
    path = _external_model(tmp_path)
    with pytest.raises(UnsupportedDialectError, match="external file"):
        parse_onnx(path.read_bytes())
    plain = model([helper.make_node("Identity", ["w"], ["y"])],
                  [numpy_helper.from_array(np.ones(3, np.float32), "w")], [], [out("y")])
    tensor = parse_onnx(plain.SerializeToString()).graph.initializers[0]
    assert tensor.extent is None and tensor.read().tolist() == [1.0, 1.0, 1.0]


def test_raw_values_are_views_of_the_mapped_file(tmp_path):
    path = save(model([helper.make_node("Identity", ["w"], ["y"])],
                      [numpy_helper.from_array(np.arange(1000, dtype=np.float32), "w")], [], [out("y")]),
                tmp_path / "view.onnx")
    array = read_onnx(path).graph.initializers[0].read()
    assert not array.flags.owndata and not array.flags.writeable
    assert array.base is not None


def test_not_models(tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(NotAModelError, match="empty"):
        read_onnx(empty)
    with pytest.raises(NotAModelError, match="no such file"):
        read_onnx(tmp_path / "absent.onnx")
    with pytest.raises(NotAModelError, match="regular file"):
        read_onnx(tmp_path)
    no_graph = tmp_path / "nograph.onnx"
    no_graph.write_bytes(pb_field(1, 8, wire=0))
    with pytest.raises(NotAModelError, match="no graph"):
        read_onnx(no_graph)
    text = tmp_path / "text.onnx"
    text.write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CorruptModelError):
        read_onnx(text)
