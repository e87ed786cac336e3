"""A small constant folder: the value of a name when it is known without running the model.

Exporters rarely hand a recurrent node its weights as plain initializers: PyTorch's TorchScript exporter
(silero-vad) builds W as `Unsqueeze(Concat(Slice(weight_ih, ...), ...))`, tf2onnx and keras2onnx put
`Transpose`, `Squeeze` or `Cast` in between. This folds exactly those chains: initializers, `Constant`
nodes, and `Identity`, `Cast`, `Reshape`, `Transpose`, `Squeeze`, `Unsqueeze`, `Concat`, `Slice` and
`Gather` over constants, with each op's attribute form (older opsets) and input form (newer ones).
Names resolve in the graph that uses them, then in the graphs around it (`If`/`Loop`/`Scan` bodies see
outer values).

Evaluation is iterative (no recursion, whatever the chain length) and memoised; a cycle or an op whose
parameters contradict its inputs is a `CorruptModelError`. Values stay lazy when only their shape
changes (Identity, Reshape, Squeeze, Unsqueeze, a Cast to the same type): `Folded.tensor` is then the
stored tensor and `Folded.extent` its bytes. Before an op allocates, its output size is checked against a
budget derived from the data the file really holds, so a 2 GiB array is never built from a small file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import CorruptModelError, UnsafeModelError
from ...safety import DEFAULT_LIMITS, Limits, printable
from .proto import Dim, Graph, Node, OnnxModel, OnnxTensor, ValueInfo, dtype_of_code, readable

MiB = 1 << 20
MAX_SOURCES = 16  # names kept in `Folded.sources` (a Concat of hundreds of slices needs no longer list)
BUDGET_FLOOR = 64 * MiB  # folding may always build this much, however little the file stores
BUDGET_FACTOR = 4  # ... and this many times the bytes of every tensor the file stores
MAX_RANK = 64  # numpy's limit
_INDEX_DTYPES = ("int32", "int64")
_UNBOUNDED_ENDS = (2**31 - 1, 2**63 - 1)


@dataclass(frozen=True)
class Folded:
    """A value known without running the model.

    `kind`: `initializer`, `constant` (a Constant node's output) or `folded` (computed by ops).
    `ops`: the op types applied, in the order first met; `sources`: the initializers and Constant
    outputs whose data it is made of (parameters such as Slice bounds are not sources), at most
    `MAX_SOURCES`. `overridable`: it depends on an initializer that is also a graph input, which a
    runtime lets the caller replace.
    """

    shape: tuple[int, ...]
    dtype: str
    kind: str
    ops: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    overridable: bool = False
    tensor: OnnxTensor | None = field(default=None, compare=False, repr=False)
    array: np.ndarray | None = field(default=None, compare=False, repr=False)

    def read(self) -> np.ndarray:
        """The values (read-only); bfloat16 as exact float32, as `OnnxTensor.read` gives it."""
        if self.array is not None:
            return self.array
        assert self.tensor is not None
        data = self.tensor.read()
        return data if data.shape == self.shape else data.reshape(self.shape)

    @property
    def lazy(self) -> bool:
        """Nothing was computed: the values are read from the file when asked."""
        return self.array is None

    @property
    def extent(self) -> tuple[str, int] | None:
        """(file, offset) of the raw bytes, when lazy and stored plainly (a reshape keeps C order)."""
        return self.tensor.extent if self.array is None and self.tensor is not None else None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        names = ", ".join(f"'{printable(s, 200)}'" for s in self.sources)
        if self.kind == "initializer":
            text = f"initializer {names}"
        elif self.kind == "constant":
            text = f"Constant node output {names}"
        else:
            text = f"folded through {', '.join(self.ops)} from {names or 'constants'}"
        return text + (" (an initializer that is also a graph input: a runtime may replace it)"
                       if self.overridable else "")


@dataclass(frozen=True)
class Unknown:
    """A value known only at run time; `why` names the root cause. Shape and dtype come from the
    graph's inputs, outputs or value_info when it declares them."""

    why: str
    shape: tuple[Dim, ...] | None = None
    dtype: str | None = None


Value = Folded | Unknown


class Scope:
    """One graph and the graphs around it: a name resolves here first, then outward.

    `role` is `graph` (the main graph), `subgraph` (an If/Loop/Scan body) or `function`; `path` names
    the graph for messages ("" for the main graph)."""

    def __init__(self, graph: Graph, opset: int | None, parent: Scope | None = None, path: str = "",
                 role: str = "graph") -> None:
        self.graph, self.opset, self.parent, self.path, self.role = graph, opset, parent, path, role
        self.producers: dict[str, Node] = {}
        for node in graph.nodes:
            for out in node.outputs:
                if out and self.producers.setdefault(out, node) is not node:
                    raise CorruptModelError(f"value '{printable(out, 200)}' is produced by two nodes"
                                            + (f" in {path}" if path else ""))
        self.initializers = {t.name: t for t in reversed(graph.initializers)}  # the first of duplicates
        self.inputs = {v.name: v for v in graph.inputs}
        self.sparse = frozenset(graph.sparse_initializers)
        self.infos: dict[str, ValueInfo] = {}
        for info in (*graph.value_info, *graph.outputs, *graph.inputs):
            self.infos.setdefault(info.name, info)

    def child(self, graph: Graph, path: str) -> Scope:
        return Scope(graph, self.opset, self, path, "subgraph")

    def owner(self, name: str) -> Scope | None:
        """The innermost scope that defines `name`."""
        scope: Scope | None = self
        while scope is not None:
            if (name in scope.producers or name in scope.initializers or name in scope.inputs
                    or name in scope.sparse):
                return scope
            scope = scope.parent
        return None

    def info(self, name: str) -> ValueInfo | None:
        scope: Scope | None = self
        while scope is not None:
            if name in scope.infos:
                return scope.infos[name]
            scope = scope.parent
        return None


class ConstantFolder:
    """Folds values on demand. One folder per model: it memoises across queries."""

    def __init__(self, model: OnnxModel, limits: Limits = DEFAULT_LIMITS) -> None:
        self.root = Scope(model.graph, model.opset(""))
        self.budget = min(limits.max_dataset_bytes, max(BUDGET_FLOOR, BUDGET_FACTOR * _stored_bytes(model)))
        self.spent = 0
        self._memo: dict[tuple[Scope, str], Value] = {}

    def value(self, scope: Scope, name: str) -> Value:
        """The value of `name` as seen from `scope`."""
        first = self._key(scope, name)
        stack = [first]
        entered: set[tuple[Scope, int]] = set()
        while stack:
            key = stack[-1]
            if key in self._memo:
                stack.pop()
                continue
            owner, value_name = key
            node = owner.producers.get(value_name)
            if node is None:
                self._memo[key] = self._leaf(owner, value_name)
                stack.pop()
                continue
            if node.op_type not in _OPS or node.domain not in ("", "ai.onnx"):
                self._store(owner, node, _runtime(node))
                stack.pop()
                continue
            inputs = [self._key(owner, i) if i else None for i in node.inputs]
            missing = [k for k in inputs if k is not None and k not in self._memo]
            if not missing:
                self._store(owner, node, self._apply(node, inputs, owner))
                stack.pop()
            elif (owner, id(node)) in entered:  # its inputs were evaluated and still wait on it
                raise CorruptModelError(f"the graph has a cycle through node '{printable(node.name, 200)}' "
                                        f"({node.op_type})")
            else:
                entered.add((owner, id(node)))
                stack.extend(missing)
        return self._memo[first]

    # lookup --------------------------------------------------------------------------------

    def _key(self, scope: Scope, name: str) -> tuple[Scope, str]:
        owner = scope.owner(name)
        if owner is None:
            raise CorruptModelError(f"value '{printable(name, 200)}' is used but defined nowhere"
                                    + (f" (seen from {scope.path})" if scope.path else ""))
        return owner, name

    def _leaf(self, owner: Scope, name: str) -> Value:
        shown = printable(name, 200)
        info = owner.info(name)
        shape, dtype = (info.shape, info.dtype) if info is not None else (None, None)
        if name in owner.initializers:
            tensor = owner.initializers[name]
            return Folded(tensor.dims, tensor.dtype, "initializer", (), (name,), name in owner.inputs, tensor)
        if name in owner.inputs:
            why = {"graph": f"graph input '{shown}': its value is given at run time",
                   "function": f"parameter '{shown}' of function {owner.path}: bound at each call site",
                   }.get(owner.role, f"input '{shown}' of the subgraph {owner.path}: set at run time")
            return Unknown(why, shape, dtype)
        return Unknown(f"sparse initializer '{shown}' (its values are not read)", shape, dtype)

    def _store(self, owner: Scope, node: Node, first: Value) -> None:
        """Memoise every output of `node`: `first` for output 0 (the only one these ops fold)."""
        for k, out in enumerate(node.outputs):
            if not out:
                continue
            value = first if k == 0 or isinstance(first, Unknown) else Unknown(
                f"output {k} of {node.op_type} node '{printable(node.name, 200)}' is not folded")
            if isinstance(value, Unknown):
                info = owner.info(out)
                value = Unknown(value.why, info.shape if info else None, info.dtype if info else None)
            self._memo[(owner, out)] = value

    # ops -----------------------------------------------------------------------------------

    def _apply(self, node: Node, keys: list[tuple[Scope, str] | None], owner: Scope) -> Value:
        values = [self._memo[k] if k is not None else None for k in keys]
        unknown = next((v for v in values if isinstance(v, Unknown)), None)
        if unknown is not None:
            return unknown
        bound = next((a for a in node.attributes if a.ref_attr_name), None)
        if bound is not None:
            return Unknown(f"attribute {printable(bound.name, 100)} of {node.op_type} node "
                           f"'{printable(node.name, 200)}' is bound at each call of its function")
        unread = next((v for v in values if v is not None and not readable(v.dtype)), None)
        if unread is not None:
            return Unknown(f"{node.op_type} node '{printable(node.name, 200)}' works on {unread.dtype} "
                           "values, which are not read")
        op = _Op(node, values, owner.opset, self)
        return _OPS[node.op_type](op)

    def charge(self, nbytes: int, node: Node) -> None:
        """Refuse, before allocating, an array the budget does not cover."""
        if self.spent + nbytes > self.budget:
            raise UnsafeModelError(f"folding {node.op_type} node '{printable(node.name, 200)}' would build "
                                   f"{nbytes} bytes, over the folding budget of {self.budget} bytes "
                                   "(derived from the data the file holds)")
        self.spent += nbytes


def _runtime(node: Node) -> Unknown:
    what = f"{node.op_type} node '{printable(node.name, 200)}'"
    if node.domain not in ("", "ai.onnx"):
        what = f"{printable(node.domain, 100)}.{what}"
    return Unknown(f"computed at run time by the {what}")


def _stored_bytes(model: OnnxModel) -> int:
    """Bytes of every tensor the model stores (initializers and tensor attributes, subgraphs included)."""
    total = 0
    graphs: list[Graph] = [model.graph]
    node_lists = [f.nodes for f in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            total += sum(t.nbytes for t in graph.initializers)
            node_lists.append(graph.nodes)
            continue
        for node in node_lists.pop():
            for attr in node.attributes:
                items = attr.value if isinstance(attr.value, tuple) else (attr.value,)
                total += sum(v.nbytes for v in items if isinstance(v, OnnxTensor))
                graphs.extend(v for v in items if isinstance(v, Graph))
    return total


class _Op:
    """One node being folded: its inputs (Folded, or None when an optional input is absent) and helpers
    that read attributes and constant parameters, failing with the node's name."""

    def __init__(self, node: Node, inputs: list[Any], opset: int | None, folder: ConstantFolder) -> None:
        self.node, self.inputs, self._opset, self.folder = node, inputs, opset, folder

    @property
    def opset(self) -> int:
        if self._opset is None:
            raise CorruptModelError("the model imports no version of the default operator set")
        return self._opset

    def fail(self, problem: str) -> CorruptModelError:
        return CorruptModelError(f"{self.node.op_type} node '{printable(self.node.name, 200)}': {problem}")

    def input(self, k: int, what: str) -> Folded:
        value = self.inputs[k] if k < len(self.inputs) else None
        if value is None:
            raise self.fail(f"its {what} input is missing")
        return value

    def optional(self, k: int) -> Folded | None:
        return self.inputs[k] if k < len(self.inputs) else None

    def attr(self, name: str, kind: str, default: Any = None) -> Any:
        attribute = self.node.attribute(name)
        if attribute is None:
            return default
        if attribute.type != kind:
            raise self.fail(f"attribute {name} is a {attribute.type}, not {kind}")
        return attribute.value

    def ints(self, value: Folded, what: str, limit: int = 64) -> list[int]:
        """A small constant integer tensor (axes, starts, a shape...) as a list."""
        if value.dtype not in _INDEX_DTYPES or len(value.shape) > 1 or value.size > limit:
            raise self.fail(f"its {what} must be a 1-D int32/int64 tensor of at most {limit} values, "
                            f"not {value.dtype} {list(value.shape)}")
        return [int(x) for x in value.read().reshape(-1)]

    def axis(self, axis: int, rank: int) -> int:
        if not -rank <= axis < rank:
            raise self.fail(f"axis {axis} is out of range for rank {rank}")
        return axis % rank

    def check_rank(self, shape: tuple[int, ...]) -> None:
        if len(shape) > MAX_RANK:
            raise self.fail(f"its output would have rank {len(shape)}, over {MAX_RANK}")

    def derive(self, data: list[Folded], shape: tuple[int, ...], dtype: str, *,
               tensor: OnnxTensor | None = None, array: np.ndarray | None = None) -> Folded:
        """The output: ops and sources are those of the data inputs plus this op."""
        ops = _merge([op for d in data for op in d.ops] + [self.node.op_type], None)
        sources = _merge([s for d in data for s in d.sources], MAX_SOURCES)
        if array is not None:
            array.flags.writeable = False
        return Folded(tuple(shape), dtype, "folded", ops, sources, any(d.overridable for d in data),
                      tensor, array)

    def reshaped(self, data: Folded, shape: tuple[int, ...]) -> Folded:
        """Same values, new shape: stays lazy when the input is."""
        self.check_rank(shape)
        array = data.array.reshape(shape) if data.array is not None else None
        return self.derive([data], shape, data.dtype, tensor=data.tensor, array=array)

    def computed(self, data: list[Folded], shape: tuple[int, ...], dtype: str, build: Any) -> Folded:
        """An allocating op: charge its size first, then build the array."""
        self.check_rank(shape)
        itemsize = 4 if dtype == "bfloat16" else np.dtype(dtype).itemsize  # bfloat16 is held as float32
        self.folder.charge(math.prod(shape) * itemsize, self.node)
        array = np.ascontiguousarray(build())
        if array.shape != tuple(shape):
            raise self.fail(f"computed shape {list(array.shape)}, expected {list(shape)}")
        return self.derive(data, shape, dtype, array=array)


def _merge(items: list[str], limit: int | None) -> tuple[str, ...]:
    out = tuple(dict.fromkeys(items))
    return out[:limit] if limit is not None else out


# --- one function per op --------------------------------------------------------------------------

def _constant(op: _Op) -> Value:
    node = op.node
    out = node.outputs[0] if node.outputs else ""
    attribute = node.attributes[0] if len(node.attributes) == 1 else None
    if attribute is None:
        raise op.fail(f"a Constant needs exactly one attribute, it has {len(node.attributes)}")
    name, value = attribute.name, attribute.value
    if name == "value" and attribute.type == "tensor":
        return Folded(value.dims, value.dtype, "constant", (), (out,), False, value)
    scalars = {("value_float", "float"): ("float32", ()), ("value_floats", "floats"): ("float32", None),
               ("value_int", "int"): ("int64", ()), ("value_ints", "ints"): ("int64", None)}
    spec = scalars.get((name, attribute.type))
    if spec is None:
        return Unknown(f"Constant node '{printable(node.name, 200)}' holds a {attribute.type} "
                       f"({name}), which is not folded")
    dtype, shape = spec
    array = np.array(value, dtype=dtype)
    array.flags.writeable = False
    return Folded(array.shape if shape is None else (), dtype, "constant", (), (out,), False, None, array)


def _identity(op: _Op) -> Value:
    data = op.input(0, "data")
    return op.reshaped(data, data.shape)


def _cast(op: _Op) -> Value:
    data = op.input(0, "data")
    code = op.attr("to", "int")
    if code is None:
        raise op.fail("attribute to is missing")
    target = dtype_of_code(code)
    if target == data.dtype:
        return op.reshaped(data, data.shape)
    castable = ("float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "int32",
                "uint32", "int64", "uint64", "bool")
    if target not in castable or data.dtype not in castable:
        return Unknown(f"Cast node '{printable(op.node.name, 200)}' from {data.dtype} to {target} is not folded")
    return op.computed([data], data.shape, target, lambda: _cast_array(data.read(), target))


def _cast_array(values: np.ndarray, target: str) -> np.ndarray:
    with np.errstate(all="ignore"):  # NaN or out-of-range to integer: whatever the CPU gives, as runtimes do
        if target == "bfloat16":
            return _round_to_bfloat16(values.astype(np.float32))
        return values.astype(target)


def _round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (round to nearest even, NaN kept quiet), held as the exact float32 values."""
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    nan = np.isnan(values)
    rounded[nan] = (values.view(np.uint32)[nan] | 0x00400000) & 0xFFFF0000
    return rounded.view(np.float32)


def _reshape(op: _Op) -> Value:
    data = op.input(0, "data")
    if op.opset < 5:
        spec = list(op.attr("shape", "ints") or ())
    else:
        spec = op.ints(op.input(1, "shape"), "shape")
    allowzero = op.attr("allowzero", "int", 0)
    return op.reshaped(data, _reshape_target(op, data.shape, spec, allowzero))


def _reshape_target(op: _Op, shape: tuple[int, ...], spec: list[int], allowzero: int) -> tuple[int, ...]:
    out: list[int] = []
    infer = None
    for k, dim in enumerate(spec):
        if dim == -1 and infer is None:
            infer = k
            out.append(1)
        elif dim == 0 and not allowzero:
            if k >= len(shape):
                raise op.fail(f"shape {spec} copies dimension {k} of a rank-{len(shape)} input")
            out.append(shape[k])
        elif dim < 0:
            raise op.fail(f"bad shape {spec}")
        else:
            out.append(dim)
    size, known = math.prod(shape), math.prod(out)
    if infer is not None:
        if known == 0 or size % known:
            raise op.fail(f"cannot reshape {list(shape)} to {spec}")
        out[infer] = size // known
    if math.prod(out) != size:
        raise op.fail(f"cannot reshape {list(shape)} to {spec}")
    return tuple(out)


def _axes(op: _Op, since: int) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset `since`, the optional second input after."""
    if op.opset < since:
        axes = op.attr("axes", "ints")
        return list(axes) if axes is not None else None
    given = op.optional(1)
    return op.ints(given, "axes") if given is not None else None


def _squeeze(op: _Op) -> Value:
    data = op.input(0, "data")
    rank = len(data.shape)
    axes = _axes(op, 13)
    if axes is None:
        drop = {k for k, d in enumerate(data.shape) if d == 1}
    else:
        drop = {op.axis(a, rank) for a in axes}
        if len(drop) != len(axes) or any(data.shape[a] != 1 for a in drop):
            raise op.fail(f"cannot squeeze axes {axes} of shape {list(data.shape)}")
    return op.reshaped(data, tuple(d for k, d in enumerate(data.shape) if k not in drop))


def _unsqueeze(op: _Op) -> Value:
    data = op.input(0, "data")
    axes = _axes(op, 13)
    if not axes:
        raise op.fail("no axes to unsqueeze")
    rank = len(data.shape) + len(axes)
    new = {op.axis(a, rank) for a in axes}
    if len(new) != len(axes):
        raise op.fail(f"axes {axes} repeat")
    rest = iter(data.shape)
    return op.reshaped(data, tuple(1 if k in new else next(rest) for k in range(rank)))


def _transpose(op: _Op) -> Value:
    data = op.input(0, "data")
    rank = len(data.shape)
    perm = op.attr("perm", "ints")
    perm = list(perm) if perm is not None else list(range(rank))[::-1]
    if sorted(perm) != list(range(rank)):
        raise op.fail(f"perm {perm} is not a permutation of {rank} axes")
    shape = tuple(data.shape[p] for p in perm)
    return op.computed([data], shape, data.dtype, lambda: np.transpose(data.read(), perm))


def _concat(op: _Op) -> Value:
    parts = [op.input(k, "data") for k in range(len(op.node.inputs))]
    axis = op.attr("axis", "int")
    if not parts or axis is None:
        raise op.fail("needs inputs and an axis")
    first = parts[0]
    rank = len(first.shape)
    if rank == 0:
        raise op.fail("cannot concatenate scalars")
    axis = op.axis(axis, rank)
    for part in parts:
        others_match = all(a == b for k, (a, b) in enumerate(zip(part.shape, first.shape)) if k != axis)
        if part.dtype != first.dtype or len(part.shape) != rank or not others_match:
            raise op.fail(f"inputs {list(first.shape)} {first.dtype} and {list(part.shape)} {part.dtype} "
                          f"do not concatenate on axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    return op.computed(parts, tuple(shape), first.dtype,
                       lambda: np.concatenate([p.read() for p in parts], axis=axis))


def _slice(op: _Op) -> Value:
    data = op.input(0, "data")
    rank = len(data.shape)
    if op.opset < 10:
        starts, ends = op.attr("starts", "ints"), op.attr("ends", "ints")
        if starts is None or ends is None:
            raise op.fail("attributes starts and ends are required")
        axes, steps = op.attr("axes", "ints"), None
        starts, ends = list(starts), list(ends)
    else:
        starts, ends = op.ints(op.input(1, "starts"), "starts"), op.ints(op.input(2, "ends"), "ends")
        given_axes, given_steps = op.optional(3), op.optional(4)
        axes = op.ints(given_axes, "axes") if given_axes is not None else None
        steps = op.ints(given_steps, "steps") if given_steps is not None else None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise op.fail("starts, ends, axes and steps differ in length")
    index = [slice(None)] * rank
    shape = list(data.shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        k = op.axis(axis, rank)
        if index[k] != slice(None) or step == 0:
            raise op.fail(f"axis {axis} repeats or has step 0")
        index[k], shape[k] = _slice_axis(start, end, step, data.shape[k])
    return op.computed([data], tuple(shape), data.dtype, lambda: data.read()[tuple(index)])


def _slice_axis(start: int, end: int, step: int, dim: int) -> tuple[slice, int]:
    """ONNX Slice clamping (it differs from Python's for a negative step and a start before 0). An end of
    INT32_MAX or INT64_MAX means "to the end in the step's direction", as onnxruntime reads it (the
    spec's clamping would make a backward slice to INT64_MAX empty; onnx.reference follows the spec)."""
    if dim == 0:
        return slice(0, 0), 0
    if end in _UNBOUNDED_ENDS:
        end = dim if step > 0 else -dim - 1
    start += dim if start < 0 else 0
    end += dim if end < 0 else 0
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        count = max(0, -(-(end - start) // step))
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        count = max(0, -(-(start - end) // -step))
    return slice(start, end if end >= 0 else None, step), count


def _gather(op: _Op) -> Value:
    data, indices = op.input(0, "data"), op.input(1, "indices")
    rank = len(data.shape)
    if rank == 0 or indices.dtype not in _INDEX_DTYPES:
        raise op.fail(f"cannot gather {indices.dtype} indices from a rank-{rank} tensor")
    axis = op.axis(op.attr("axis", "int", 0), rank)
    shape = data.shape[:axis] + indices.shape + data.shape[axis + 1:]

    def build() -> np.ndarray:
        where = indices.read().astype(np.int64)
        dim = data.shape[axis]
        if where.size and (where.min() < -dim or where.max() >= dim):
            raise op.fail(f"an index is out of range for a dimension of {dim}")
        return np.take(data.read(), np.where(where < 0, where + dim, where), axis=axis)

    return op.computed([data], shape, data.dtype, build)


_OPS = {"Constant": _constant, "Identity": _identity, "Cast": _cast, "Reshape": _reshape,
        "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Transpose": _transpose, "Concat": _concat,
        "Slice": _slice, "Gather": _gather}
