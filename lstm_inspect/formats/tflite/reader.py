"""A `.tflite` file as the neutral Model: one layer per recurrent layer (a fused operator, a WHILE loop, an
unrolled cell; a Keras Bidirectional pair as one layer with a forward and a backward side), and every other
stored constant grouped by the Keras layer scope the converter kept in its name, else by the operator that
reads it.

Each stored buffer is counted once (the converter stores identical constants once: the zero initial states
of a loop, equal zero biases), and each is classified, so the summary can say which stored values are
parameters of the Keras model and which are not:

    parameter   a recurrent block (weights, biases, peepholes, projection, layer norm) or the weight or bias
                of a FULLY_CONNECTED / convolution / embedding operator;
    state       the initial value of a loop-carried state, or a state input of a fused operator;
    shape       integer constants that are shapes, axes, slice bounds, loop bounds (not parameters);
    copy        a second stored copy of a recurrent bias (quantized unrolled graphs: an int32 FC bias at the
                first step and a differently scaled ADD constant after it): not a parameter again;
    cell        other constants inside a recognised loop body (the 1 of GRU's 1 - z): not parameters;
    shared-bias one bias tensor read by operators of different weights (a zero bias the converter shares;
                Keras never shares a bias between layers): not a parameter;
    unknown     float constants in no known role: counted with the parameters, and the Keras parameter
                count is then reported as unknown.

`Weight.trainable` is True for parameters and unknowns, False otherwise (a TFLite file trains nothing:
the flag only carries this classification). Quantized integer weights carry their `Quantization`
(blocks read them dequantized); float16 weights are kept as stored.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lstm_inspect.errors import CorruptModelError
from lstm_inspect.model import Framework, Layer, Quantization, Weight
from lstm_inspect.safety.limits import Limits

from .recurrent import (Cell, ConstantRef, FusedOp, RecurrentReport, UnrolledLayer, WhileLoop, find_recurrent,
                        scope_of)
from .schema import Operator, SubGraph, Tensor, TfliteModel, read_tflite

FORMAT = "tflite"
# Operator inputs that hold a layer's parameters (Keras Dense, Conv, Embedding...): operator -> positions.
PARAMETER_INPUTS = {"FULLY_CONNECTED": (1, 2), "CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "CONV_3D": (1, 2),
                    "TRANSPOSE_CONV": (1, 3), "CONV_3D_TRANSPOSE": (1, 3), "EMBEDDING_LOOKUP": (1,), "PRELU": (1,),
                    "SVDF": (1, 2, 3)}
_STATE_ROLES = frozenset({"output_state", "cell_state", "hidden_state", "prev_activation", "prev_state",
                          "fw_output_state", "fw_cell_state", "bw_output_state", "bw_cell_state", "fw_hidden_state",
                          "bw_hidden_state"})
_INDEX_DTYPES = frozenset({"int32", "int64", "bool", "uint32", "uint64", "int16", "uint16"})
_MERGE_OPS = {"CONCATENATION": "concat", "ADD": "sum", "MUL": "mul", "PACK": "none"}
_SIDE_OPS = frozenset({"STRIDED_SLICE", "REVERSE_V2", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE",
                       "DEQUANTIZE", "QUANTIZE", "SLICE", "GATHER"})


class Kind:
    """How a stored constant counts (see the module docstring)."""

    PARAMETER = "parameter"
    STATE = "state"
    SHAPE = "shape"
    COPY = "copy"
    CELL = "cell"
    SHARED = "shared-bias"
    UNKNOWN = "unknown"


def read_model(path: Path, limits: Limits, closers: list) -> dict:
    """The Model fields of a `.tflite` file (metadata only: values are read when asked)."""
    tfl = read_tflite(path, limits)
    return _Builder(tfl, find_recurrent(tfl)).fields()


def location(subgraph: int, tensor: int) -> str:
    """How a tensor is named in Weight.location and in the layers' configs."""
    return f"subgraph {subgraph} tensor {tensor}"


def tensor_weight(tensor: Tensor, subgraph: int, trainable: bool = True) -> Weight:
    """A lazy Weight reading one stored tensor (quantized integers carry their Quantization)."""
    return Weight(name=tensor.name or f"tensor{tensor.index}", shape=tuple(tensor.shape), dtype=_dtype_name(tensor),
                  trainable=trainable, location=location(subgraph, tensor.index), _read=_reader(tensor),
                  extent=(tensor.extent.path, tensor.extent.offset) if tensor.extent and tensor.dtype else None,
                  quantization=quantization_of(tensor))


def _dtype_name(tensor: Tensor) -> str:
    if tensor.dtype is not None:
        return tensor.dtype
    return "bfloat16" if tensor.type_name == "BFLOAT16" else tensor.type_name.lower()


def _reader(tensor: Tensor):
    """Reads the whole tensor, or only the rows a leading-axis slice selects (gate blocks of FC weights)."""
    def read(selection: Any = Ellipsis) -> np.ndarray:
        if selection is Ellipsis:
            return tensor.read()
        index = selection if isinstance(selection, tuple) else (selection,)
        first = index[0] if index else slice(None)
        if isinstance(first, slice) and first.step in (None, 1) and tensor.shape:
            start, stop, _ = first.indices(tensor.shape[0])
            rows = tensor.read_rows(start, max(start, stop))
            return rows[(slice(None),) + tuple(index[1:])]
        return tensor.read()[selection]
    return read


def quantization_of(tensor: Tensor) -> Quantization | None:
    """The affine quantization of a stored integer tensor (None for floats and unquantized integers)."""
    q = tensor.quantization
    if q is None or not q.scale or tensor.dtype is None or np.dtype(tensor.dtype).kind not in "iu":
        return None
    where = f"tensor '{tensor.name}'"
    zero = q.zero_point or (0,) * len(q.scale)
    if len(zero) == 1 and len(q.scale) > 1:
        zero = zero * len(q.scale)
    if len(zero) != len(q.scale):
        raise CorruptModelError(f"{where} has {len(q.scale)} scales but {len(zero)} zero points")
    if not all(math.isfinite(s) for s in q.scale):
        raise CorruptModelError(f"{where} has a scale that is not a finite number")
    if len(q.scale) == 1:
        return Quantization(tuple(q.scale), tuple(int(z) for z in zero))
    axis = q.quantized_dimension
    if not 0 <= axis < len(tensor.shape) or tensor.shape[axis] != len(q.scale):
        raise CorruptModelError(f"{where} has {len(q.scale)} scales, which do not match dimension {axis} of its "
                                f"shape {list(tensor.shape)}")
    return Quantization(tuple(q.scale), tuple(int(z) for z in zero), axis)


# ----------------------------------------------------------------------------------------------
# who owns which stored constant


@dataclass
class _Claim:
    subgraph: int
    tensor: Tensor
    kind: str
    owner: str  # key of the layer it is grouped into


@dataclass
class _Group:
    key: str
    name: str
    class_name: str
    config: dict[str, Any] | None = None
    claims: list[_Claim] = field(default_factory=list)
    role: str = ""


class _Builder:
    def __init__(self, tfl: TfliteModel, report: RecurrentReport) -> None:
        self.tfl, self.report = tfl, report
        self.graphs = tfl.subgraphs
        self.groups: dict[str, _Group] = {}
        self.claimed: dict[tuple[int, int], _Claim] = {}
        self.consumers = [_consumers(g) for g in self.graphs]
        self.producers = [{t: op for op in g.operators for t in op.outputs if t >= 0} for g in self.graphs]
        self.notes: list[str] = []

    # -- the model ------------------------------------------------------------------------------

    def fields(self) -> dict:
        recurrent = self.recurrent_groups()
        self.other_groups(recurrent)
        layers, buffers = self.layers()
        facts = self.facts(recurrent, buffers)
        return {"format": FORMAT, "layers": tuple(layers), "framework": Framework.TFLITE,
                "name": None, "class_name": None, "has_config": False, "producer": self.producer(),
                "notes": tuple(self.notes), "format_facts": facts}

    def producer(self) -> str | None:
        parts = [self.tfl.description or ""]
        if self.tfl.min_runtime_version:
            parts.append(f"min_runtime_version {self.tfl.min_runtime_version}")
        text = "; ".join(p for p in parts if p)
        return text or None

    # -- recurrent layers -----------------------------------------------------------------------

    def recurrent_groups(self) -> list[dict[str, Any]]:
        """One group per recurrent layer (fused op, loop, unrolled cell), claiming its constants; returns
        their facts in file order."""
        items: list[tuple[tuple[int, int], Any]] = []
        items += [((op.subgraph, op.op_index), lambda op=op: self.fused(op)) for op in self.report.fused_ops]
        items += [((loop.subgraph, loop.op_index), lambda loop=loop: self.loop(loop)) for loop in self.report.loops]
        items += [((u.cell.subgraph, u.cell.kernel_ops[0]), lambda u=u: self.unrolled(u)) for u in self.report.unrolled]
        facts = [make() for _, make in sorted(items, key=lambda item: item[0])]  # file order
        _pair_bidirectional(facts, self)
        return facts

    def add_group(self, key: str, name: str, class_name: str, config: dict | None) -> _Group:
        group = _Group(key, name, class_name, config)
        self.groups[key] = group
        return group

    def claim(self, group: _Group, subgraph: int, t: int | None, kind: str, uses: bool = False) -> None:
        """Group the stored tensor t with `group` (unless an earlier group has it); `uses`: the layer's cell
        reads it, so the layer's config keeps a handle on it (see cells/tflite.py)."""
        if t is None or t < 0:
            return
        tensor = self.graphs[subgraph].tensors[t]
        if uses and tensor.has_data and group.config is not None:
            group.config["tflite"]["tensors"][location(subgraph, t)] = tensor_weight(
                tensor, subgraph, trainable=kind == Kind.PARAMETER)
        if not tensor.has_data or (subgraph, t) in self.claimed:
            return
        c = _Claim(subgraph, tensor, kind, group.key)
        self.claimed[(subgraph, t)] = c
        group.claims.append(c)

    def fused(self, op: FusedOp) -> dict[str, Any]:
        key = f"fused:{op.subgraph}:{op.op_index}"
        graph = self.graphs[op.subgraph]
        options = op.options.as_dict() if op.options is not None else {}
        roles = {r.role: (location(op.subgraph, r.stored) if r.stored is not None else None) for r in op.inputs
                 if r.role != "input"}
        facts = {"form": "fused-op", "fused": True, "operator": op.op_name, "version": op.version,
                 "subgraph": op.subgraph, "op_index": op.op_index, "kind": op.cell, "name": op.layer_name,
                 "path": op.layer_path, "bidirectional_op": op.bidirectional, "reversed_input": op.reversed_input,
                 "units": op.units, "input_size": op.input_size, "output_size": op.output_size,
                 "options": _plain_options(options), "roles": roles,
                 "absent_roles": [r.role for r in op.inputs if r.tensor < 0],
                 "variable_roles": {r.role: _tensor_facts(graph.tensors[r.tensor]) for r in op.inputs
                                    if r.tensor >= 0 and graph.tensors[r.tensor].is_variable},
                 "intermediates": [_tensor_facts(graph.tensors[t]) for t in op.intermediates if t >= 0],
                 "output": _tensor_facts(graph.tensors[op.outputs[0]]) if op.outputs and op.outputs[0] >= 0 else None,
                 "key": key, "tensors": {}}
        group = self.add_group(key, op.layer_name, op.op_name, {"tflite": facts})
        for r in op.inputs:
            if r.stored is None or r.role == "input":
                continue
            base = r.role[3:] if r.role[:3] in ("fw_", "bw_") else r.role
            self.claim(group, op.subgraph, r.stored,
                       Kind.STATE if r.role in _STATE_ROLES or base in _STATE_ROLES else Kind.PARAMETER, uses=True)
        return facts

    def loop(self, loop: WhileLoop) -> dict[str, Any]:
        key = f"loop:{loop.subgraph}:{loop.op_index}"
        cells = [_cell_facts(c, self.graphs[c.subgraph], self) for c in loop.cells]
        facts = {"form": "while-loop", "fused": False, "operator": "WHILE", "subgraph": loop.subgraph,
                 "op_index": loop.op_index, "kind": loop.kind, "name": loop.layer_name, "path": loop.layer_path,
                 "reversed_input": loop.reversed_input, "cond": _size_facts(loop.cond), "body": _size_facts(loop.body),
                 "custom_ops": list(loop.custom_ops), "cells": cells, "key": key, "tensors": {}}
        group = self.add_group(key, loop.layer_name, "WHILE", {"tflite": facts})
        for c, cf in zip(loop.cells, cells):
            self.claim_cell(group, c, cf)
        recognised = len(loop.cells) == 1 and loop.cells[0].kind != "unknown"
        for index in (loop.body.index, loop.cond.index):
            graph = self.graphs[index]
            for t in graph.tensors:
                if t.has_data:
                    kind = Kind.SHAPE if _dtype_name(t) in _INDEX_DTYPES else Kind.CELL if recognised else Kind.UNKNOWN
                    self.claim(group, index, t.index, kind)
        op = self.graphs[loop.subgraph].operators[loop.op_index]
        body = self.graphs[loop.body.index]
        for k, t in enumerate(op.inputs):  # loop inputs stored as constants: initial states, counters
            if t < 0:
                continue
            tensor = self.graphs[loop.subgraph].tensors[t]
            carried = k < len(body.inputs) and k < len(body.outputs) and body.outputs[k] != body.inputs[k]
            kind = Kind.SHAPE if _dtype_name(tensor) in _INDEX_DTYPES else Kind.STATE if carried else Kind.UNKNOWN
            self.claim(group, loop.subgraph, t, kind)
        if not recognised:
            self.notes.append(_unrecognised_note(loop))
        return facts

    def unrolled(self, layer: UnrolledLayer) -> dict[str, Any]:
        cell = layer.cell
        key = f"unrolled:{cell.subgraph}:{cell.kernel_ops[0]}"
        cf = _cell_facts(cell, self.graphs[cell.subgraph], self)
        facts = {"form": "unrolled", "fused": False, "operator": "FULLY_CONNECTED", "subgraph": cell.subgraph,
                 "op_index": cell.kernel_ops[0], "kind": cell.kind, "name": layer.layer_name, "path": layer.layer_path,
                 "reversed_input": False, "steps": cell.steps, "cells": [cf], "key": key, "tensors": {}}
        group = self.add_group(key, layer.layer_name, "unrolled", {"tflite": facts})
        self.claim_cell(group, cell, cf)
        return facts

    def claim_cell(self, group: _Group, cell: Cell, facts: dict[str, Any]) -> None:
        sg = cell.subgraph
        self.claim(group, sg, cell.kernel.stored, Kind.PARAMETER, uses=True)
        for ref in cell.recurrent_kernel:
            self.claim(group, sg, ref.stored, Kind.PARAMETER, uses=True)
        for refs, chosen in ((cell.bias, facts.get("bias_tensor")),
                             (cell.recurrent_bias, facts.get("recurrent_bias_tensor"))):
            for ref in refs:
                is_chosen = location(sg, ref.stored) == chosen
                self.claim(group, sg, ref.stored, Kind.PARAMETER if is_chosen else Kind.COPY, uses=is_chosen)

    # -- everything else -----------------------------------------------------------------------

    def other_groups(self, recurrent: list[dict[str, Any]]) -> None:
        """Unclaimed constants: by the Keras layer scope in their name, else by the operator reading them."""
        by_path = {f["path"]: self.groups[f["key"]] for f in recurrent if f.get("path")}
        scope_names: dict[str, str] = {}
        for graph in self.graphs:
            for t in graph.tensors:
                if not t.has_data or (graph.index, t.index) in self.claimed:
                    continue
                kind = self.role_of(graph, t)
                scopes = layer_scopes(t.name)
                scope = next((s for s in scopes if s in by_path), scopes[0] if scopes else None)
                if scope is not None and scope in by_path:
                    group = by_path[scope]
                elif scope is not None:
                    group = self.groups.get(f"scope:{scope}") or self.add_group(
                        f"scope:{scope}", _unique_name(scope, scope_names), self.readers_label(graph, t), None)
                else:
                    op = self.first_reader(graph, t)
                    name = _op_name(graph.index, op.index) if op is not None else "unreferenced"
                    key = f"op:{graph.index}:{op.index}" if op is not None else "unreferenced"
                    label = op.label if op is not None else "(read by no operator)"
                    group = self.groups.get(key) or self.add_group(key, name, label, None)
                self.claim(group, graph.index, t.index, kind)

    def role_of(self, graph: SubGraph, tensor: Tensor) -> str:
        readers = self.readers(graph, tensor.index)
        positions = [(op, pos) for op, pos in readers if pos in PARAMETER_INPUTS.get(op.name, ())]
        if positions:
            as_bias = [op for op, pos in positions if pos == PARAMETER_INPUTS[op.name][-1] and pos != 1]
            if len({_weight_input(op) for op in as_bias}) > 1:
                return Kind.SHARED  # one bias for operators of different weights: the converter's, not a layer's
            return Kind.PARAMETER
        if _dtype_name(tensor) in _INDEX_DTYPES:
            return Kind.SHAPE
        if tensor.is_variable or any(op.name == "WHILE" for op, _ in readers):
            return Kind.STATE
        if readers and all(op.name == "FILL" and pos == 1 and self.feeds_loop(graph, op) for op, pos in readers):
            return Kind.STATE  # the value a FILL spreads into a loop's initial state (shapes known at run time)
        return Kind.UNKNOWN

    def feeds_loop(self, graph: SubGraph, op: Operator) -> bool:
        return any(c.name == "WHILE" for t in op.outputs if t >= 0 for c in self.consumers[graph.index].get(t, ()))

    def readers(self, graph: SubGraph, t: int) -> list[tuple[Operator, int]]:
        """(operator, input position) of every reader of t, also through a DEQUANTIZE of it."""
        out = []
        for op in self.consumers[graph.index].get(t, ()):
            if op.name == "DEQUANTIZE":
                for out_t in op.outputs:
                    out += [(o, k) for o in self.consumers[graph.index].get(out_t, ())
                            for k, x in enumerate(o.inputs) if x == out_t]
            out += [(op, k) for k, x in enumerate(op.inputs) if x == t]
        return out

    def first_reader(self, graph: SubGraph, tensor: Tensor) -> Operator | None:
        readers = [op for op, _ in self.readers(graph, tensor.index) if op.name != "DEQUANTIZE"]
        readers = readers or list(self.consumers[graph.index].get(tensor.index, ()))
        return min(readers, key=lambda op: op.index) if readers else None

    def readers_label(self, graph: SubGraph, tensor: Tensor) -> str:
        kinds = sorted({op.label for op, _ in self.readers(graph, tensor.index) if op.name != "DEQUANTIZE"})
        return ", ".join(kinds) or "(constants)"

    # -- layers and counts ----------------------------------------------------------------------

    def parameter_facts(self) -> dict[str, Any]:
        """The parameter count of the Keras model: every tensor holding a parameter counted (also equal ones
        the file stores once: Keras keeps each layer's bias), and what else the file stores."""
        recurrent = other = unknown = 0
        unknown_names: list[str] = []
        for group in self.groups.values():
            for c in group.claims:
                n = math.prod(c.tensor.shape)
                if c.kind == Kind.PARAMETER:
                    if group.config is not None:
                        recurrent += n
                    else:
                        other += n
                elif c.kind == Kind.UNKNOWN:
                    unknown += n
                    unknown_names.append(c.tensor.name)
        out: dict[str, Any] = {"keras": None if unknown else recurrent + other, "recurrent": recurrent,
                               "other_layers": other, "unknown": unknown}
        if unknown:
            out["unknown_tensors"] = unknown_names[:20]
        return out

    def layers(self) -> tuple[list[Layer], dict[int, _Claim]]:
        """The layers in file order, each stored buffer in the first layer that claims it."""
        first: dict[int, _Claim] = {}
        weights: dict[str, list[Weight]] = {}
        for group in self.groups.values():
            for c in group.claims:
                if c.tensor.buffer in first:
                    continue
                first[c.tensor.buffer] = c
                weights.setdefault(group.key, []).append(
                    tensor_weight(c.tensor, c.subgraph, trainable=c.kind in (Kind.PARAMETER, Kind.UNKNOWN)))
        built: dict[str, Layer] = {}
        for group in self.groups.values():
            built[group.key] = Layer(name=group.name, class_name=group.class_name, config=group.config,
                                     weights=tuple(weights.get(group.key, ())), role=group.role)
        layers: list[Layer] = []
        done: set[str] = set()
        for group in self.groups.values():
            if group.key in done:
                continue
            pair = (group.config or {}).get("tflite", {}).get("bidirectional")
            if pair and pair.get("layer_key"):
                parent = pair["layer_key"]
                sides = [self.groups[k] for k in pair["sides"]]
                children = tuple(_with_role(built[g.key], g.role) for g in sides)
                layers.append(Layer(name=pair["layer"], class_name="Bidirectional", children=children,
                                    config={"tflite": {"form": "bidirectional", "merge_mode": pair["merge_mode"],
                                                       "key": parent}}))
                done.update(pair["sides"])
                continue
            if built[group.key].weights or group.config is not None:  # recurrent layers are kept even empty
                layers.append(built[group.key])
            done.add(group.key)
        return layers, first

    def facts(self, recurrent: list[dict[str, Any]], first: dict[int, _Claim]) -> dict[str, Any]:
        stored = _stored_facts(first.values(), self)
        return {
            "version": self.tfl.version, "description": self.tfl.description,
            "min_runtime_version": self.tfl.min_runtime_version, "subgraphs": len(self.graphs),
            "operators": {"total": sum(n for _, n in self.report.operators_by_kind),
                          "by_kind": dict(self.report.operators_by_kind)},
            "recurrent_layers": [_public(f) for f in recurrent],
            "stored_constants": stored,
            "parameters": self.parameter_facts(),
            "signature_defs": [{"key": s.key, "inputs": [n for n, _ in s.inputs], "outputs": [n for n, _ in s.outputs]}
                               for s in self.tfl.signature_defs],
            "external_buffers": len(self.tfl.external_buffers),
        }


def _with_role(layer: Layer, role: str) -> Layer:
    return Layer(name=layer.name, class_name=layer.class_name, config=layer.config, weights=layer.weights, role=role)


# ----------------------------------------------------------------------------------------------
# facts


def _weight_input(op: Operator) -> int:
    return op.inputs[1] if len(op.inputs) > 1 else -1


def _consumers(graph: SubGraph) -> dict[int, list[Operator]]:
    out: dict[int, list[Operator]] = {}
    for op in graph.operators:
        for t in dict.fromkeys(op.inputs):
            if t >= 0:
                out.setdefault(t, []).append(op)
    return out


# TF operation names the converter keeps after a Keras layer's scope ('dense/BiasAdd/ReadVariableOp',
# 'dense/MatMul;dense/BiasAdd'): not layer names.
_TF_OPERATIONS = re.compile(r"^(ReadVariableOp|BiasAdd|MatMul|BatchMatMul(V2|V3)?|Conv[123]D|Conv2DBackpropInput|"
                            r"depthwise|Reshape|Squeeze|ExpandDims|Tensordot|Cast|Const|Shape|Mul|Add|AddV2|Sub|"
                            r"Relu6?|Sigmoid|Tanh|Softmax|Mean|Rsqrt|FusedBatchNormV3|Pad|MaxPool|AvgPool|GatherV2|"
                            r"embedding_lookup|Identity|transpose)(_\d+)?$")


def layer_scopes(name: str) -> list[str]:
    """The Keras layer scopes in a constant's name: its path without the last component and without the TF
    operations after the layer ('m/output/BiasAdd/ReadVariableOp' -> 'm/output'); see recurrent.scope_of."""
    out = []
    for scope in scope_of(name):
        parts = scope.split("/")
        while len(parts) > 1 and _TF_OPERATIONS.match(parts[-1]):
            parts.pop()
        out.append("/".join(parts))
    return out


def _op_name(subgraph: int, op_index: int) -> str:
    return f"op{op_index}" if subgraph == 0 else f"subgraph{subgraph}.op{op_index}"


def _unique_name(scope: str, taken: dict[str, str]) -> str:
    """The scope's last component, or the whole scope when another scope ends the same way."""
    name = scope.rsplit("/", 1)[-1]
    if taken.setdefault(name, scope) != scope:
        return scope
    return name


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in options.items()}


def _tensor_facts(tensor: Tensor) -> dict[str, Any]:
    q = tensor.quantization
    out: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor)}
    if q is not None and q.scale:
        out["scale"] = list(q.scale) if len(q.scale) <= 8 else [min(q.scale), max(q.scale)]
        out["zero_point"] = list(q.zero_point[:8])
    return out


def _size_facts(size) -> dict[str, Any]:
    return {"subgraph": size.index, "name": size.name, "operators": size.operators, "tensors": size.tensors,
            "constants": size.constants, "constant_bytes": size.constant_bytes,
            "ops_by_kind": dict(size.ops_by_kind)}


def _best_bias(refs: tuple[ConstantRef, ...], graph: SubGraph) -> ConstantRef | None:
    """The most precise of the stored copies of one bias: float before integer, then the finest step."""
    def precision(ref: ConstantRef) -> tuple[int, float]:
        tensor = graph.tensors[ref.stored]
        q = quantization_of(tensor)
        return (0, 0.0) if q is None else (1, max(q.scale))
    return min(refs, key=precision) if refs else None


def _cell_facts(cell: Cell, graph: SubGraph, builder: _Builder) -> dict[str, Any]:
    sg = cell.subgraph
    bias, recurrent_bias = _best_bias(cell.bias, graph), _best_bias(cell.recurrent_bias, graph)
    return {"kind": cell.kind, "units": cell.units, "input_size": cell.input_size, "rows": cell.rows,
            "reset_after": cell.reset_after, "activations": list(cell.activations), "evidence": cell.evidence,
            "note": cell.note, "steps": cell.steps,
            "kernel_tensor": location(sg, cell.kernel.stored),
            "recurrent_tensors": [location(sg, r.stored) for r in cell.recurrent_kernel],
            "recurrent_rows": [graph.tensors[r.stored].shape[0] for r in cell.recurrent_kernel],
            "bias_tensor": location(sg, bias.stored) if bias else None,
            "recurrent_bias_tensor": location(sg, recurrent_bias.stored) if recurrent_bias else None,
            "bias_copies": [location(sg, r.stored) for r in cell.bias + cell.recurrent_bias
                            if r not in (bias, recurrent_bias)],
            "kernel_ops": list(cell.kernel_ops), "recurrent_ops": list(cell.recurrent_ops)}


def _unrecognised_note(loop: WhileLoop) -> str:
    why = "; ".join(c.note for c in loop.cells if c.note) or (
        "no pair of fully-connected weights of an LSTM, GRU or SimpleRNN cell in its body"
        if not loop.cells else f"{len(loop.cells)} cells in one body")
    return (f"{loop.layer_name}: WHILE loop (operator {loop.op_index}, body subgraph {loop.body.index} with "
            f"{loop.body.operators} operators, {loop.body.constants} constants) whose cell was not recognised: {why}")


def _public(facts: dict[str, Any]) -> dict[str, Any]:
    """The facts of one recurrent layer for the summary JSON (tensor roles and op lists left out)."""
    keep = ("form", "fused", "operator", "version", "subgraph", "op_index", "kind", "name", "path",
            "bidirectional_op", "reversed_input", "units", "input_size", "output_size", "options", "steps",
            "cond", "body", "custom_ops", "bidirectional", "absent_roles", "variable_roles", "intermediates")
    out = {k: facts[k] for k in keep if k in facts}
    if "bidirectional" in out:
        out["bidirectional"] = {k: v for k, v in out["bidirectional"].items() if k not in ("sides", "layer_key")}
    if facts.get("cells") is not None:
        out["cells"] = [{k: c[k] for k in ("kind", "units", "input_size", "rows", "reset_after", "activations",
                                          "evidence", "note", "steps", "recurrent_rows")} for c in facts["cells"]]
    return out


def _stored_facts(claims: Iterable[_Claim], builder: _Builder) -> dict[str, Any]:
    """Stored constants by dtype (each buffer once) and by how they count."""
    by_dtype: dict[str, dict[str, int]] = {}
    by_kind: dict[str, dict[str, int]] = {}
    values = nbytes = buffers = 0
    for c in claims:
        n = math.prod(c.tensor.shape)
        size = c.tensor.extent.nbytes if c.tensor.extent else 0
        for table, key in ((by_dtype, _dtype_name(c.tensor)), (by_kind, c.kind)):
            entry = table.setdefault(key, {"buffers": 0, "values": 0, "bytes": 0})
            entry["buffers"] += 1
            entry["values"] += n
            entry["bytes"] += size
        values, nbytes, buffers = values + n, nbytes + size, buffers + 1
    tensors = sum(1 for g in builder.graphs for t in g.tensors if t.has_data)
    variables = [(g.index, t) for g in builder.graphs for t in g.tensors if t.is_variable and not t.has_data]
    return {"buffers": buffers, "tensors": tensors, "shared": tensors - buffers, "values": values, "bytes": nbytes,
            "by_dtype": dict(sorted(by_dtype.items())), "by_kind": dict(sorted(by_kind.items())),
            "variable_tensors": {"tensors": len(variables),
                                 "values": sum(math.prod(t.shape) for _, t in variables if all(d >= 0 for d in t.shape))}}


# ----------------------------------------------------------------------------------------------
# Bidirectional pairs


def _pair_bidirectional(facts: list[dict[str, Any]], builder: _Builder) -> None:
    """Mark the two sides of a Keras Bidirectional: by name (the converter kept 'bidi/forward_lstm' and
    'bidi/backward_lstm'), else by structure (a reversed and a plain sequence op reading one input, with
    their outputs merged). The backward side comes first in the file."""
    used: set[str] = set()
    for bw in facts:
        if bw["key"] in used or not bw["reversed_input"] or bw.get("bidirectional_op"):
            continue
        for fw in facts:
            if fw is bw or fw["key"] in used or fw["reversed_input"] or fw.get("bidirectional_op"):
                continue
            named = _named_pair(bw, fw)
            merge = _merge_op(builder, bw, fw)
            if named is None and (merge is None or not _same_source(builder, bw, fw)):
                continue
            if named is None and (bw["form"], bw.get("units"), bw["subgraph"]) != (fw["form"], fw.get("units"),
                                                                                    fw["subgraph"]):
                continue
            layer = named or f"{_op_name(bw['subgraph'], bw['op_index'])}+{_op_name(fw['subgraph'], fw['op_index'])}"
            pair = {"layer": layer, "merge_mode": _MERGE_OPS.get(merge or "", "unknown"),
                    "file_order": [bw["name"], fw["name"]], "sides": [fw["key"], bw["key"]],
                    "layer_key": f"bidi:{fw['key']}"}
            for side, facts_ in (("forward", fw), ("backward", bw)):
                facts_["bidirectional"] = dict(pair, side=side)
                builder.groups[facts_["key"]].role = side
            used.update((bw["key"], fw["key"]))
            break


def _named_pair(bw: dict[str, Any], fw: dict[str, Any]) -> str | None:
    """The Bidirectional layer's name when both paths are <parent>/backward_<x> and <parent>/forward_<x>."""
    pb, pf = bw.get("path") or "", fw.get("path") or ""
    parent_b, _, name_b = pb.rpartition("/")
    parent_f, _, name_f = pf.rpartition("/")
    if parent_b and parent_b == parent_f and name_b.startswith("backward_") and name_f.startswith("forward_") \
            and name_b[len("backward_"):] == name_f[len("forward_"):]:
        return parent_b.rsplit("/", 1)[-1]
    return None


def _same_source(builder: _Builder, bw: dict[str, Any], fw: dict[str, Any]) -> bool:
    return _source(builder, bw) is not None and _source(builder, bw) == _source(builder, fw)


def _source(builder: _Builder, facts: dict[str, Any]) -> int | None:
    """The tensor a sequence op reads, followed back through REVERSE_V2 and shape ops."""
    graph = builder.graphs[facts["subgraph"]]
    op = graph.operators[facts["op_index"]]
    data = [t for t in op.inputs if t >= 0 and graph.tensors[t].type_name not in ("INT32", "INT64", "BOOL")
            and not graph.tensors[t].has_data and not graph.tensors[t].is_variable]
    if not data:
        return None
    t = data[-1] if op.name == "WHILE" else op.inputs[0]
    for _ in range(16):
        producer = builder.producers[graph.index].get(t)
        if producer is None or producer.name not in _SIDE_OPS or not producer.inputs:
            return t
        t = producer.inputs[0]
    return t


def _merge_op(builder: _Builder, bw: dict[str, Any], fw: dict[str, Any]) -> str | None:
    """The operator where the outputs of both sides meet (a few side ops away), if any."""
    graph = builder.graphs[bw["subgraph"]]
    reach_b, reach_f = _reach(builder, bw), _reach(builder, fw)
    common = [op for op in graph.operators if any(t in reach_b for t in op.inputs) and any(t in reach_f for t in op.inputs)]
    return min(common, key=lambda op: op.index).name if common else None


def _reach(builder: _Builder, facts: dict[str, Any]) -> set[int]:
    graph = builder.graphs[facts["subgraph"]]
    op = graph.operators[facts["op_index"]]
    reached = {t for t in op.outputs if t >= 0}
    frontier = set(reached)
    for _ in range(4):
        step = {out for t in frontier for c in builder.consumers[graph.index].get(t, ()) if c.name in _SIDE_OPS
                for out in c.outputs if out >= 0} - reached
        reached |= step
        frontier = step
    return reached

