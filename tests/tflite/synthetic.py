"""Small TFLite models written with TF's own generated object API (schema_py_generated + flatbuffers), for
layouts the converter does not produce: bidirectional and RNN fused ops, new operator codes, external
buffers, hand-made loops and cells. They need not run; they must be well-formed flatbuffers."""
from __future__ import annotations

import flatbuffers
import numpy as np

TYPES = {"float32": 0, "float16": 1, "int32": 2, "int8": 9, "int16": 7}


class ModelWriter:
    """Subgraphs, tensors, buffers and operators added one by one; `bytes()` packs the model."""

    def __init__(self, spg) -> None:
        self.spg = spg
        self.model = spg.ModelT()
        self.model.version = 3
        self.model.description = "synthetic"
        self.model.buffers = [spg.BufferT()]  # buffer 0: the empty sentinel
        self.model.operatorCodes, self.model.subgraphs = [], []
        self.codes: dict[tuple[int, str | None], int] = {}

    def subgraph(self, name: str = "main") -> "GraphWriter":
        graph = self.spg.SubGraphT()
        graph.name, graph.tensors, graph.operators, graph.inputs, graph.outputs = name, [], [], [], []
        self.model.subgraphs.append(graph)
        return GraphWriter(self, graph, len(self.model.subgraphs) - 1)

    def buffer(self, data: bytes | None) -> int:
        buf = self.spg.BufferT()
        if data:
            buf.data = list(data)
        self.model.buffers.append(buf)
        return len(self.model.buffers) - 1

    def opcode(self, code: int, custom: str | None = None, deprecated: int | None = None) -> int:
        key = (code, custom)
        if key not in self.codes:
            oc = self.spg.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, 127) if deprecated is None else deprecated
            oc.customCode, oc.version = custom, 1
            self.model.operatorCodes.append(oc)
            self.codes[key] = len(self.model.operatorCodes) - 1
        return self.codes[key]

    def bytes(self) -> bytes:
        builder = flatbuffers.Builder(1024)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


class GraphWriter:
    def __init__(self, writer: ModelWriter, graph, index: int) -> None:
        self.w, self.graph, self.index = writer, graph, index
        self.spg = writer.spg

    def tensor(self, name: str, shape, dtype: str = "float32", data: np.ndarray | None = None,
               variable: bool = False, scale=None, zero_point=None) -> int:
        t = self.spg.TensorT()
        t.name, t.shape, t.type, t.isVariable = name, list(shape), TYPES[dtype], variable
        t.buffer = self.w.buffer(None if data is None else np.ascontiguousarray(data).tobytes())
        if scale is not None:
            q = self.spg.QuantizationParametersT()
            q.scale, q.zeroPoint = list(scale), list(zero_point or [0] * len(scale))
            t.quantization = q
        self.graph.tensors.append(t)
        return len(self.graph.tensors) - 1

    def const(self, name: str, values: np.ndarray) -> int:
        values = np.asarray(values, dtype=np.float32)
        return self.tensor(name, values.shape, data=values)

    def op(self, name: str, inputs, outputs, options=None, options_type: int = 0, custom: str | None = None,
           code: int | None = None, deprecated: int | None = None) -> int:
        op = self.spg.OperatorT()
        builtin = code if code is not None else getattr(self.spg.BuiltinOperator, name)
        op.opcodeIndex = self.w.opcode(builtin, custom, deprecated)
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            op.builtinOptionsType = options_type or getattr(self.spg.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        self.graph.operators.append(op)
        return len(self.graph.operators) - 1

    def io(self, inputs, outputs) -> None:
        self.graph.inputs, self.graph.outputs = list(inputs), list(outputs)
