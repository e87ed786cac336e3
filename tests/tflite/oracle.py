"""Comparisons of `read_tflite` with the two independent views of a file: TF's generated flatbuffer classes
(schema_py_generated, loaded from its file) and the TF interpreter's details recorded by build_tflite.py.
Each function asserts; a mismatch names the subgraph, tensor or operator.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lstm_inspect.formats.tflite.schema import Options, RawOptions, TfliteModel, read_tflite

ENUM_CLASSES = {"fused_activation_function": "ActivationFunctionType", "kernel_type": "LSTMKernelType",
                "weights_format": "FullyConnectedOptionsWeightsFormat"}


def text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "surrogateescape")


def vector(getter_is_none: bool, values) -> tuple | None:
    return None if getter_is_none else tuple(int(v) for v in values)


def buffer_bytes(data: bytes, ref_buffer) -> bytes:
    if ref_buffer.Offset() > 1:
        return data[ref_buffer.Offset():ref_buffer.Offset() + ref_buffer.Size()]
    return ref_buffer.DataAsNumpy().tobytes() if ref_buffer.DataLength() else b""


def check_against_schema(path: Path, spg) -> TfliteModel:
    """Every field read_tflite reports equals the generated classes' reading of the same bytes."""
    data = path.read_bytes()
    ref = spg.Model.GetRootAsModel(data, 0)
    model = read_tflite(path)
    assert model.version == ref.Version()
    assert model.description == text(ref.Description())
    assert len(model.buffers) == ref.BuffersLength()
    for i, buffer in enumerate(model.buffers):
        got = data[buffer.extent.offset:buffer.extent.offset + buffer.extent.nbytes] if buffer.extent else b""
        assert got == buffer_bytes(data, ref.Buffers(i)), f"buffer {i}"
    check_operator_codes(model, ref)
    assert len(model.subgraphs) == ref.SubgraphsLength()
    for graph in model.subgraphs:
        ref_graph = ref.Subgraphs(graph.index)
        assert graph.name == text(ref_graph.Name())
        assert graph.inputs == tuple(int(v) for v in ref_graph.InputsAsNumpy())
        assert graph.outputs == tuple(int(v) for v in ref_graph.OutputsAsNumpy())
        assert len(graph.tensors) == ref_graph.TensorsLength()
        for tensor in graph.tensors:
            check_tensor(tensor, ref_graph.Tensors(tensor.index), ref, data, f"subgraph {graph.index}")
        assert len(graph.operators) == ref_graph.OperatorsLength()
        for op in graph.operators:
            check_operator(op, ref_graph.Operators(op.index), spg, f"subgraph {graph.index} op {op.index}")
    check_signatures_and_metadata(model, ref, data)
    return model


def check_operator_codes(model: TfliteModel, ref) -> None:
    assert len(model.operator_codes) == ref.OperatorCodesLength()
    for i, code in enumerate(model.operator_codes):
        r = ref.OperatorCodes(i)
        assert (code.deprecated_builtin_code, code.builtin_code) == (r.DeprecatedBuiltinCode(), r.BuiltinCode())
        assert code.code == max(r.DeprecatedBuiltinCode(), r.BuiltinCode())
        assert code.custom_code == text(r.CustomCode())
        assert code.version == r.Version()


def check_tensor(tensor, r, ref, data: bytes, where: str) -> None:
    where = f"{where} tensor {tensor.index}"
    assert tensor.name == text(r.Name()), where
    assert tensor.shape == vector(r.ShapeIsNone(), r.ShapeAsNumpy()) or tensor.shape == () and r.ShapeIsNone()
    assert tensor.shape_signature == vector(r.ShapeSignatureIsNone(), r.ShapeSignatureAsNumpy()), where
    assert (tensor.type, tensor.buffer, tensor.is_variable) == (r.Type(), r.Buffer(), r.IsVariable()), where
    assert tensor.sparse == (r.Sparsity() is not None), where
    q = r.Quantization()
    if q is None:
        assert tensor.quantization is None, where
    else:
        mine = tensor.quantization
        assert mine.scale == tuple(float(v) for v in (q.ScaleAsNumpy() if q.ScaleLength() else ())), where
        assert mine.zero_point == tuple(int(v) for v in (q.ZeroPointAsNumpy() if q.ZeroPointLength() else ()))
        assert mine.min == tuple(float(v) for v in (q.MinAsNumpy() if q.MinLength() else ())), where
        assert mine.max == tuple(float(v) for v in (q.MaxAsNumpy() if q.MaxLength() else ())), where
        assert mine.quantized_dimension == q.QuantizedDimension(), where
        assert mine.details_type == q.DetailsType(), where
    stored = buffer_bytes(data, ref.Buffers(r.Buffer()))
    assert tensor.has_data == bool(stored), where
    if stored and tensor.dtype is not None:
        assert tensor.read().tobytes() == stored, where


def check_operator(op, r, spg, where: str) -> None:
    assert op.opcode_index == r.OpcodeIndex(), where
    assert op.inputs == vector(False, r.InputsAsNumpy() if r.InputsLength() else ()), where
    assert op.outputs == vector(False, r.OutputsAsNumpy() if r.OutputsLength() else ()), where
    assert op.intermediates == vector(False, r.IntermediatesAsNumpy() if r.IntermediatesLength() else ()), where
    kind = r.BuiltinOptionsType()
    if kind == 0:
        assert op.options is None, where
    elif isinstance(op.options, RawOptions):
        assert (op.options.type, op.options.table_offset) == (kind, r.BuiltinOptions().Pos), where
    else:
        check_options(op.options, kind, r.BuiltinOptions(), spg, where)
    if r.BuiltinOptions2Type():
        assert (op.options_2.type, op.options_2.table_offset) == (r.BuiltinOptions2Type(), r.BuiltinOptions2().Pos)
    else:
        assert op.options_2 is None, where
    custom = r.CustomOptionsAsNumpy().tobytes() if r.CustomOptionsLength() else b""
    assert (op.custom_options.read() if op.custom_options else b"") == custom, where


def check_options(options: Options, kind: int, table, spg, where: str) -> None:
    names = {v: k for k, v in vars(spg.BuiltinOptions).items() if not k.startswith("_")}
    assert options.table == names[kind], where
    reader = getattr(spg, options.table)()
    reader.Init(table.Bytes, table.Pos)
    for key, value in options.values:
        getter = "".join(part.title() for part in key.split("_"))
        if key == "new_shape":
            expected = None if reader.NewShapeIsNone() else tuple(int(v) for v in reader.NewShapeAsNumpy())
        else:
            expected = getattr(reader, getter)()
            if key in ENUM_CLASSES:
                enum = {v: k for k, v in vars(getattr(spg, ENUM_CLASSES[key])).items() if not k.startswith("_")}
                expected = enum[expected]
        assert value == expected, f"{where} {options.table}.{key}"


def check_signatures_and_metadata(model: TfliteModel, ref, data: bytes) -> None:
    assert len(model.signature_defs) == ref.SignatureDefsLength()
    for i, sig in enumerate(model.signature_defs):
        r = ref.SignatureDefs(i)
        assert (sig.key, sig.subgraph_index) == (text(r.SignatureKey()), r.SubgraphIndex())
        assert sig.inputs == tuple((text(r.Inputs(j).Name()), r.Inputs(j).TensorIndex())
                                   for j in range(r.InputsLength()))
        assert sig.outputs == tuple((text(r.Outputs(j).Name()), r.Outputs(j).TensorIndex())
                                    for j in range(r.OutputsLength()))
    assert [(m.name, m.buffer) for m in model.metadata] == [
        (text(ref.Metadata(i).Name()), ref.Metadata(i).Buffer()) for i in range(ref.MetadataLength())]
    versions = [buffer_bytes(data, ref.Buffers(ref.Metadata(i).Buffer())) for i in range(ref.MetadataLength())
                if ref.Metadata(i).Name() == b"min_runtime_version"]
    assert model.min_runtime_version == (versions[0].rstrip(b"\0").decode() if versions else None)


def check_against_interpreter(model: TfliteModel, record: dict) -> int:
    """The interpreter's tensor details (every subgraph), op details and constant values; returns the number
    of constant tensors compared."""
    view = record["interpreter"]
    assert "error" not in view, view.get("error")
    assert len(view["subgraphs"]) == len(model.subgraphs)
    for graph, details in zip(model.subgraphs, view["subgraphs"]):
        assert len(details) == len(graph.tensors)
        for tensor, d in zip(graph.tensors, details):
            q = tensor.quantization
            assert (tensor.name, list(tensor.shape), list(tensor.shape_signature or tensor.shape)) == (
                d["name"], d["shape"], d["shape_signature"]), (graph.index, tensor.index)
            assert tensor.dtype == d["dtype"] or (tensor.dtype is None and d["dtype"] == "object")
            assert list(q.scale if q else ()) == d["scales"]
            assert list(q.zero_point if q else ()) == d["zero_points"]
            assert (q.quantized_dimension if q else 0) == d["quantized_dimension"]
    ops = model.subgraphs[0].operators
    assert [(o.label, list(o.inputs)) for o in ops] == [(d["op_name"], d["inputs"]) for d in view["ops"]]
    for op, d in zip(ops, view["ops"]):
        # The interpreter shows a WHILE output nothing reads as -1; the file names a tensor there.
        assert all(theirs in (mine, -1) for mine, theirs in zip(op.outputs, d["outputs"])), op.index
        assert len(op.outputs) == len(d["outputs"])
    folder = record["_dir"]
    for key, file in view["constants"].items():
        sg, index = map(int, key.split("/"))
        expected = np.load(folder / file, allow_pickle=False)
        got = model.subgraphs[sg].tensors[index].read()
        assert got.dtype == expected.dtype and got.shape == expected.shape, key
        assert np.array_equal(got, expected), key
    return len(view["constants"])

