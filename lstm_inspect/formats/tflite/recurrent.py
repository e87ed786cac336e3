"""The three shapes a recurrent layer takes in a `.tflite` file, found in a parsed `TfliteModel`.

1. Fused operators (UNIDIRECTIONAL_SEQUENCE_LSTM / _RNN, BIDIRECTIONAL_SEQUENCE_LSTM / _RNN, and the
   one-step LSTM and RNN): each input by its role, named as in the TFLite kernels.
2. WHILE loops (every Keras 3 layer, and tf_keras layers the converter does not fuse): the loop's cond and
   body subgraphs with their sizes, and the cell recognised in the body, if any.
3. Unrolled graphs (no loop; the same fully-connected weight used at every step): the cell and its steps.

How a cell is recognised (loop bodies and unrolled graphs alike), and nothing more is assumed:
- candidates are FULLY_CONNECTED ops whose weight is a stored 2-D constant (directly, or through the
  DEQUANTIZE of a float16 file); uses of one weight are grouped;
- two weights belong to one cell when the outputs of their FCs meet in an ADD, each reached from its FC
  through at most three shape or split ops or bias ADDs (RESHAPE, SQUEEZE, SPLIT, SPLIT_V, STRIDED_SLICE...);
- of the two, the recurrent one is the FC whose input depends on the state: on a loop-carried float input of
  the body (a body input the body changes), or on the output of the pair's own FCs (an unrolled graph).
  Index tensors (int32/int64/bool: the loop counter, gather indices) are not followed. If neither input
  depends on the state (a single-step graph whose state is a model input) the shapes decide, when only one
  way round is possible and the recurrent FC reads a graph input or a variable tensor ("shapes");
- a kernel (rows R, cols in) with recurrent partners of u columns: R = 4u with one (4u, u) partner is an LSTM,
  R = 3u with one (3u, u) partner a GRU with reset_after, R = 3u with (2u, u) and (u, u) partners a GRU
  without it (its candidate recurrent matmul is applied to r*h), R = u with one (u, u) partner a SimpleRNN;
- the elementwise part (every op reached from where the FCs meet, stopping at FCs) must fit: at least three
  MULs for an LSTM, a SUB (1 - z) and two MULs for a GRU, an activation for a SimpleRNN. Otherwise the kind
  is "unknown" and only the sizes are reported;
- biases: the FC bias inputs and the constants ADDed in the region where the FCs meet, of R (or the
  partner's row count) elements. For a GRU with reset_after the recurrent FC's own bias is the recurrent bias.

The FC weights are the Keras kernels transposed ((R, in) = kernel.T), in Keras gate order. Mapping to gate
blocks is not done here.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable

from .schema import Operator, Options, SubGraph, Tensor, TfliteModel

_LSTM_ROLES = (
    "input",
    "input_to_input_weights", "input_to_forget_weights", "input_to_cell_weights", "input_to_output_weights",
    "recurrent_to_input_weights", "recurrent_to_forget_weights", "recurrent_to_cell_weights",
    "recurrent_to_output_weights",
    "cell_to_input_weights", "cell_to_forget_weights", "cell_to_output_weights",
    "input_gate_bias", "forget_gate_bias", "cell_gate_bias", "output_gate_bias",
    "projection_weights", "projection_bias",
    "output_state", "cell_state",
    "input_layer_norm_coefficients", "forget_layer_norm_coefficients", "cell_layer_norm_coefficients",
    "output_layer_norm_coefficients",
)
_LSTM_BASIC_ROLES = ("input", "prev_activation", "weights", "biases", "prev_state")
_RNN_ROLES = ("input", "weights", "recurrent_weights", "bias", "hidden_state")
_BIDI_LSTM_ROLES = (
    ("input",) + tuple("fw_" + r for r in _LSTM_ROLES[1:18]) + tuple("bw_" + r for r in _LSTM_ROLES[1:18])
    + ("fw_output_state", "fw_cell_state", "bw_output_state", "bw_cell_state", "aux_input")
    + tuple(f"{d}_aux_input_to_{g}_weights" for d in ("fw", "bw") for g in ("input", "forget", "cell", "output"))
)
_BIDI_RNN_ROLES = ("input", "fw_weights", "fw_recurrent_weights", "fw_bias", "fw_hidden_state", "bw_weights",
                   "bw_recurrent_weights", "bw_bias", "bw_hidden_state", "aux_input", "fw_aux_weights",
                   "bw_aux_weights")
# 2018 tf.contrib.lite kernels: the hidden states were outputs, not inputs.
_BIDI_RNN_CONTRIB_ROLES = ("input", "fw_weights", "fw_recurrent_weights", "fw_bias", "bw_weights",
                           "bw_recurrent_weights", "bw_bias")
FUSED_OPERATORS = {  # operator -> (cell, bidirectional)
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("lstm", False), "BIDIRECTIONAL_SEQUENCE_LSTM": ("lstm", True),
    "UNIDIRECTIONAL_SEQUENCE_RNN": ("simple_rnn", False), "BIDIRECTIONAL_SEQUENCE_RNN": ("simple_rnn", True),
    "LSTM": ("lstm", False), "RNN": ("simple_rnn", False),
}
_PASS_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SPLIT", "SPLIT_V", "STRIDED_SLICE", "SLICE",
                       "DEQUANTIZE", "QUANTIZE", "UNPACK"})
_SHAPE_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "DEQUANTIZE", "QUANTIZE"})
_ACTIVATION_OPS = frozenset({"TANH", "LOGISTIC", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "ELU",
                             "LEAKY_RELU", "GELU", "HARD_SWISH", "PRELU"})
_INDEX_TYPES = frozenset({"INT32", "INT64", "BOOL", "UINT32", "UINT64"})
_NEAR_HOPS = 3
# Work bounds against hostile graphs (a tensor read by 10^5 ops, 10^5 FCs writing one tensor...). Real cells
# stay far below them: a FC output reaches a handful of tensors, two or three FCs meet in one ADD.
_MAX_NEAR = 64  # tensors near one FC
_MAX_MEETING = 64  # FC pairs tried at one ADD
_MAX_CELLS = 64  # weight pairs (cells) per subgraph
_MAX_TRACE = 64  # ops walked back from a tensor
_CELL_SCOPE = re.compile(r"^(lstm|gru|simple_rnn|peephole_lstm)_cell(_\d+)?$")
_SIDE_SCOPE = re.compile(r"^(fw|bw|forward|backward)(_.*)?$")


# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class RoleInput:
    position: int
    role: str
    tensor: int  # -1 when the optional input is absent
    stored: int | None  # the tensor holding the data: `tensor`, or the input of the DEQUANTIZE making it


@dataclass(frozen=True)
class FusedOp:
    subgraph: int
    op_index: int
    op_name: str
    cell: str  # "lstm" or "simple_rnn"
    bidirectional: bool
    version: int
    inputs: tuple[RoleInput, ...]
    outputs: tuple[int, ...]
    intermediates: tuple[int, ...]
    options: Options | None
    units: int | None
    input_size: int | None
    output_size: int | None  # differs from units with a projection
    reversed_input: bool  # the sequence comes through REVERSE_V2 (a Keras go_backwards / backward layer)
    layer_name: str
    layer_path: str | None

    def role(self, name: str) -> RoleInput | None:
        return next((r for r in self.inputs if r.role == name), None)


@dataclass(frozen=True)
class ConstantRef:
    tensor: int  # the tensor an operator reads
    stored: int  # the tensor holding the data (the same, or a DEQUANTIZE's input)
    via: str  # "fc_weight", "fc_bias" or "add"
    op_index: int  # the first operator reading it


@dataclass(frozen=True)
class Cell:
    kind: str  # "lstm", "gru", "simple_rnn" or "unknown"
    subgraph: int
    units: int
    input_size: int
    rows: int  # rows of the kernel FC weight (gates x units)
    kernel: ConstantRef  # FC weight (rows, input) == Keras kernel.T
    recurrent_kernel: tuple[ConstantRef, ...]  # stacked by rows == Keras recurrent_kernel.T
    # Each holds the whole Keras bias (GRU with reset_after: its input half); a quantized unrolled graph keeps
    # one copy per use (an int32 FC bias at the first step, a differently scaled ADD constant after it).
    bias: tuple[ConstantRef, ...]
    recurrent_bias: tuple[ConstantRef, ...]  # GRU with reset_after only: the recurrent bias, likewise
    reset_after: bool | None  # GRU only
    activations: tuple[str, ...]  # activation operators of the elementwise part
    kernel_ops: tuple[int, ...]  # the FCs using the kernel (one per step when unrolled)
    recurrent_ops: tuple[int, ...]
    evidence: str  # "data flow" or "shapes": how kernel and recurrent weights were told apart
    note: str  # why the kind is unknown, else ""

    @property
    def steps(self) -> int:
        """Uses of the kernel: the unrolled steps (1 in a loop body)."""
        return len(self.kernel_ops)


@dataclass(frozen=True)
class SubgraphSize:
    index: int
    name: str | None
    operators: int
    ops_by_kind: tuple[tuple[str, int], ...]
    tensors: int
    constants: int
    constant_bytes: int


@dataclass(frozen=True)
class WhileLoop:
    subgraph: int
    op_index: int
    cond: SubgraphSize
    body: SubgraphSize
    custom_ops: tuple[str, ...]  # custom codes in cond and body (Flex TensorList ops...)
    cells: tuple[Cell, ...]
    reversed_input: bool
    layer_name: str
    layer_path: str | None

    @property
    def kind(self) -> str:
        return self.cells[0].kind if len(self.cells) == 1 else "unknown"


@dataclass(frozen=True)
class UnrolledLayer:
    cell: Cell
    layer_name: str
    layer_path: str | None


@dataclass(frozen=True)
class LayerFact:
    name: str
    form: str  # "fused-op", "while-loop" or "unrolled"
    kind: str  # "lstm", "gru", "simple_rnn" or "unknown"
    fused: bool
    bidirectional: bool
    reversed_input: bool
    subgraph: int
    op_index: int  # the fused op, the WHILE, or the first kernel FC


@dataclass(frozen=True)
class RecurrentReport:
    operators_by_kind: tuple[tuple[str, int], ...]  # over every subgraph
    fused_ops: tuple[FusedOp, ...]
    loops: tuple[WhileLoop, ...]
    unrolled: tuple[UnrolledLayer, ...]
    layers: tuple[LayerFact, ...]  # one per recurrent layer found, in file order


# ----------------------------------------------------------------------------------------------
# entry point


def find_recurrent(model: TfliteModel) -> RecurrentReport:
    graphs = [_Graph(g) for g in model.subgraphs]
    fused = tuple(_fused_op(g, op) for g in graphs for op in g.graph.operators if op.name in FUSED_OPERATORS)
    body_cells: dict[int, tuple[Cell, ...]] = {}  # one analysis per body, however many WHILEs share it
    loops = tuple(_while_loop(g, op, graphs, body_cells) for g in graphs for op in g.graph.operators
                  if op.name == "WHILE")
    bodies = {loop.body.index for loop in loops}
    unrolled = tuple(_unrolled_layer(g, cell) for g in graphs if g.graph.index not in bodies
                     for cell in _find_cells(g, loop_states=frozenset()))
    counts = Counter(op.label for g in model.subgraphs for op in g.operators)
    return RecurrentReport(operators_by_kind=tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
                           fused_ops=fused, loops=loops, unrolled=unrolled, layers=_layer_facts(fused, loops, unrolled))


def _layer_facts(fused: Iterable[FusedOp], loops: Iterable[WhileLoop],
                 unrolled: Iterable[UnrolledLayer]) -> tuple[LayerFact, ...]:
    facts = [LayerFact(f.layer_name, "fused-op", f.cell, True, f.bidirectional, f.reversed_input, f.subgraph,
                       f.op_index) for f in fused]
    facts += [LayerFact(w.layer_name, "while-loop", w.kind, False, False, w.reversed_input, w.subgraph, w.op_index)
              for w in loops]
    facts += [LayerFact(u.layer_name, "unrolled", u.cell.kind, False, False, False, u.cell.subgraph,
                        u.cell.kernel_ops[0]) for u in unrolled]
    return tuple(sorted(facts, key=lambda f: (f.subgraph, f.op_index)))


# ----------------------------------------------------------------------------------------------
# graph helpers


class _Graph:
    """A subgraph with producer/consumer maps (and its size, computed once however many loops use it)."""

    def __init__(self, graph: SubGraph) -> None:
        self.graph = graph
        self.tensors = graph.tensors
        self.producer: dict[int, Operator] = {}
        self.consumers: dict[int, list[Operator]] = defaultdict(list)
        for op in graph.operators:
            for t in op.outputs:
                if t >= 0:
                    self.producer[t] = op
            for t in dict.fromkeys(op.inputs):
                if t >= 0:
                    self.consumers[t].append(op)

    @cached_property
    def size(self) -> SubgraphSize:
        counts = Counter(op.label for op in self.graph.operators)
        constants = [t for t in self.tensors if self._constant(t)]
        return SubgraphSize(index=self.graph.index, name=self.graph.name, operators=len(self.graph.operators),
                            ops_by_kind=tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
                            tensors=len(self.tensors), constants=len(constants),
                            constant_bytes=sum(t.extent.nbytes for t in constants))

    @cached_property
    def custom_ops(self) -> frozenset[str]:
        return frozenset(op.label for op in self.graph.operators if op.name == "CUSTOM")

    def stored(self, t: int) -> int | None:
        """The tensor holding t's constant data: t itself, or the input of the DEQUANTIZE producing it."""
        if t < 0:
            return None
        if self._constant(self.tensors[t]):
            return t
        op = self.producer.get(t)
        if op is not None and op.name == "DEQUANTIZE" and op.inputs and op.inputs[0] >= 0 \
                and self._constant(self.tensors[op.inputs[0]]):
            return op.inputs[0]
        return None

    @staticmethod
    def _constant(tensor: Tensor) -> bool:
        return tensor.has_data and not tensor.is_variable

    def is_index(self, t: int) -> bool:
        return self.tensors[t].type_name in _INDEX_TYPES

    def names(self, indices: Iterable[int]) -> list[str]:
        return [self.tensors[t].name for t in indices if t >= 0]

    def traces_back_to(self, t: int, kinds: frozenset[str], through: frozenset[str]) -> Operator | None:
        """The first producer of kind `kinds` met going back from t through single-data ops in `through`."""
        for _ in range(_MAX_TRACE):
            op = self.producer.get(t)
            if op is None or not op.inputs:
                return None
            if op.name in kinds:
                return op
            if op.name not in through:
                return None
            t = op.inputs[0]
        return None

    def forward(self, origins: Iterable[int], stop: frozenset[str] = frozenset()) -> set[int]:
        """Every non-index tensor reachable from `origins` (not entering ops named in `stop`)."""
        seen = set(origins)
        queue = deque(seen)
        while queue:
            for op in self.consumers.get(queue.popleft(), ()):
                if op.name in stop:
                    continue
                for out in op.outputs:
                    if out >= 0 and out not in seen and not self.is_index(out):
                        seen.add(out)
                        queue.append(out)
        return seen


# ----------------------------------------------------------------------------------------------
# layer names


def scope_of(name: str) -> list[str]:
    """Keras layer scopes in a tensor or subgraph name ('a;b' holds two names): the path before 'while...'
    ('m_1/lstm_1/while/lstm_cell_1/MatMul' -> 'm_1/lstm_1'), else the path without its last component and
    trailing cell scopes ('model/sequential/lstm/zeros' -> 'model/sequential/lstm')."""
    scopes = []
    for part in name.split(";"):
        parts = [p for p in part.split(":")[0].split("/") if p]
        loop = next((i for i, p in enumerate(parts) if p == "while" or p.startswith("while_")), None)
        if loop is not None:
            parts = parts[:loop]
        else:
            parts = parts[:-1]
            while parts and _CELL_SCOPE.match(parts[-1]):
                parts.pop()
        if parts:
            scopes.append("/".join(parts))
    return scopes


def _name_layer(names: Iterable[str], subgraph: int, op_index: int) -> tuple[str, str | None]:
    """(layer name, layer path) by plurality of the scopes in `names`, else ('op<k>', None)."""
    votes = Counter(scope for name in names for scope in scope_of(name))
    if votes:
        path = votes.most_common(1)[0][0]
        return path.rsplit("/", 1)[-1], path
    return (f"op{op_index}" if subgraph == 0 else f"subgraph{subgraph}.op{op_index}"), None


# ----------------------------------------------------------------------------------------------
# 1. fused operators


def _roles(op: Operator) -> tuple[str, ...]:
    n = len(op.inputs)
    if op.name == "LSTM" and isinstance(op.options, Options) and op.options.get("kernel_type") == "BASIC":
        table = _LSTM_BASIC_ROLES
    elif op.name in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "LSTM"):
        table = _LSTM_ROLES
    elif op.name == "BIDIRECTIONAL_SEQUENCE_LSTM":
        table = _BIDI_LSTM_ROLES
    elif op.name == "BIDIRECTIONAL_SEQUENCE_RNN":
        table = _BIDI_RNN_CONTRIB_ROLES if n == len(_BIDI_RNN_CONTRIB_ROLES) else _BIDI_RNN_ROLES
    else:  # UNIDIRECTIONAL_SEQUENCE_RNN (4 inputs in 2018 contrib files: no state input) and RNN
        table = _RNN_ROLES
    return tuple(table[i] if i < len(table) else f"input_{i}" for i in range(n))


def _fused_op(g: _Graph, op: Operator) -> FusedOp:
    cell, bidirectional = FUSED_OPERATORS[op.name]
    inputs = tuple(RoleInput(i, role, t, g.stored(t)) for i, (role, t) in enumerate(zip(_roles(op), op.inputs)))
    units, input_size, output_size = _fused_sizes(g, op, inputs)
    own = [r.tensor for r in inputs if r.role not in ("input", "aux_input")] + list(op.outputs) + list(op.intermediates)
    name, path = _name_layer(g.names(own), g.graph.index, op.index)
    if bidirectional and path and "/" in path and _SIDE_SCOPE.match(path.rsplit("/", 1)[1]):
        path = path.rsplit("/", 1)[0]  # the tensors of one side won the vote: name the layer, not the side
        name = path.rsplit("/", 1)[-1]
    reversed_input = bool(op.inputs) and op.inputs[0] >= 0 and \
        g.traces_back_to(op.inputs[0], frozenset({"REVERSE_V2"}), _SHAPE_OPS) is not None
    return FusedOp(subgraph=g.graph.index, op_index=op.index, op_name=op.name, cell=cell,
                   bidirectional=bidirectional, version=op.version, inputs=inputs, outputs=op.outputs,
                   intermediates=op.intermediates, options=op.options if isinstance(op.options, Options) else None,
                   units=units, input_size=input_size, output_size=output_size, reversed_input=reversed_input,
                   layer_name=name, layer_path=path)


def _fused_sizes(g: _Graph, op: Operator, inputs: tuple[RoleInput, ...]) -> tuple[int | None, ...]:
    """(units, input size, output size) from the weight shapes; None where a shape does not say."""
    def shape(role: str) -> tuple[int, ...]:
        r = next((r for r in inputs if r.role == role), None)
        return g.tensors[r.tensor].shape if r is not None and r.tensor >= 0 else ()

    prefix = "fw_" if op.name.startswith("BIDIRECTIONAL") else ""
    if "prev_activation" in {r.role for r in inputs}:  # LSTM, basic kernel: weights (4n, in + out)
        weights, state = shape("weights"), shape("prev_activation")
        if len(weights) == 2 and state and weights[0] % 4 == 0:
            return weights[0] // 4, weights[1] - state[-1], state[-1]
        return None, None, None
    if op.name.endswith("LSTM"):
        w, r = shape(prefix + "input_to_forget_weights"), shape(prefix + "recurrent_to_forget_weights")
        units = w[0] if len(w) == 2 else None
        output = r[1] if len(r) == 2 else (units if len(r) == 1 else None)  # 1-D: diagonal (IndyLSTM)
        return units, (w[1] if len(w) == 2 else None), output
    w = shape(prefix + "weights")
    return (w[0], w[1], w[0]) if len(w) == 2 else (None, None, None)


# ----------------------------------------------------------------------------------------------
# 2. WHILE loops


def _while_loop(g: _Graph, op: Operator, graphs: list[_Graph], body_cells: dict[int, tuple[Cell, ...]]) -> WhileLoop:
    options = op.options if isinstance(op.options, Options) else None
    cond_index = options.get("cond_subgraph_index", 0) if options else 0
    body_index = options.get("body_subgraph_index", 0) if options else 0
    cond, body = graphs[cond_index], graphs[body_index]
    if body_index not in body_cells:
        body_cells[body_index] = tuple(_find_cells(body, _loop_states(body))) if body_index != g.graph.index else ()
    cells = body_cells[body_index]
    custom = sorted(cond.custom_ops | body.custom_ops)
    names = [body.graph.name or "", cond.graph.name or ""]
    if not scope_of(names[0]):
        names = [n for c in cells for n in body.names((c.kernel.stored, *(r.stored for r in c.recurrent_kernel)))]
        names += g.names(op.outputs) + g.names(op.inputs)
    name, path = _name_layer(names, g.graph.index, op.index)
    reversed_input = any(g.traces_back_to(t, frozenset({"REVERSE_V2"}), _SHAPE_OPS) is not None
                         for t in op.inputs if t >= 0 and not g.is_index(t))
    return WhileLoop(subgraph=g.graph.index, op_index=op.index, cond=cond.size, body=body.size,
                     custom_ops=tuple(custom), cells=cells,
                     reversed_input=reversed_input, layer_name=name, layer_path=path)


def _loop_states(body: _Graph) -> frozenset[int]:
    """Body inputs the body changes (output k is not input k), except index tensors (the counters)."""
    ins, outs = body.graph.inputs, body.graph.outputs
    return frozenset(t for k, t in enumerate(ins) if (k >= len(outs) or outs[k] != t) and not body.is_index(t))


# ----------------------------------------------------------------------------------------------
# 3. unrolled graphs


def _unrolled_layer(g: _Graph, cell: Cell) -> UnrolledLayer:
    used = set(cell.kernel_ops + cell.recurrent_ops)
    fcs = [op for op in g.graph.operators if op.index in used]
    names = g.names((cell.kernel.stored, *(r.stored for r in cell.recurrent_kernel)))
    names += g.names(t for op in fcs for t in op.outputs)
    name, path = _name_layer(names, g.graph.index, cell.kernel_ops[0])
    return UnrolledLayer(cell=cell, layer_name=name, layer_path=path)


# ----------------------------------------------------------------------------------------------
# cell recognition (loop bodies and unrolled graphs)


@dataclass(frozen=True)
class _Weight:
    stored: int
    rows: int
    cols: int
    uses: tuple[Operator, ...]


def _find_cells(g: _Graph, loop_states: frozenset[int]) -> list[Cell]:
    """Recurrent cells among the FULLY_CONNECTED ops of one subgraph (see the module docstring)."""
    weights = _fc_weights(g)
    if len(weights) < 2:
        return []
    near = _near_map(g, [op for w in weights.values() for op in w.uses])
    owner = {op.index: w for w in weights.values() for op in w.uses}
    meetings = _meetings(g, near, owner)
    partners: dict[int, dict[int, str]] = defaultdict(dict)  # kernel -> {recurrent: evidence}
    for a, b in list(meetings)[:_MAX_CELLS]:
        decided = _orient(g, weights[a], weights[b], loop_states)
        if decided is not None:
            kernel, recurrent, evidence = decided
            partners[kernel.stored][recurrent.stored] = evidence
    cells = []
    for kernel, found in partners.items():
        recurrent = sorted((weights[r] for r in found), key=lambda w: -w.rows)
        cells.append(_cell(g, weights[kernel], recurrent, meetings, near, "shapes" if "shapes" in found.values()
                           else "data flow"))
    return sorted(cells, key=lambda c: c.kernel_ops[0])


def _fc_weights(g: _Graph) -> dict[int, _Weight]:
    uses: dict[int, list[Operator]] = defaultdict(list)
    for op in g.graph.operators:
        if op.name != "FULLY_CONNECTED" or len(op.inputs) < 2 or not op.outputs:
            continue
        if isinstance(op.options, Options) and op.options.get("weights_format") != "DEFAULT":
            continue  # shuffled int8 layout: not a plain matrix
        stored = g.stored(op.inputs[1])
        if stored is not None and len(g.tensors[op.inputs[1]].shape) == 2 and op.inputs[0] >= 0:
            uses[stored].append(op)
    return {s: _Weight(s, *g.tensors[ops[0].inputs[1]].shape, tuple(ops)) for s, ops in uses.items()}


def _near_map(g: _Graph, fcs: list[Operator]) -> dict[int, set[int]]:
    """tensor -> the FC ops whose output reaches it through at most _NEAR_HOPS pass-through ops."""
    near: dict[int, set[int]] = defaultdict(set)
    for fc in fcs:
        for t in _near(g, fc.outputs[0]):
            near[t].add(fc.index)
    return near


def _near(g: _Graph, start: int) -> set[int]:
    reached, frontier = {start}, [start]
    for _ in range(_NEAR_HOPS):
        step = []
        for t in frontier:
            for op in g.consumers.get(t, ()):
                if _passes(g, op):
                    step += [o for o in op.outputs if o >= 0 and o not in reached]
        reached.update(step)
        if len(reached) > _MAX_NEAR:
            break
        frontier = step
    return reached


def _passes(g: _Graph, op: Operator) -> bool:
    """Shape and split ops, and the ADD of a constant (a bias), keep a value 'near' its FC."""
    if op.name in _PASS_OPS:
        return True
    return op.name == "ADD" and len(op.inputs) == 2 and sum(g.stored(t) is not None for t in op.inputs) == 1


def _meetings(g: _Graph, near: dict[int, set[int]], owner: dict[int, _Weight]) -> dict[tuple[int, int], list[Operator]]:
    """(weight a, weight b) -> the ADDs where outputs of their FCs meet (a < b)."""
    found: dict[tuple[int, int], list[Operator]] = defaultdict(list)
    for op in g.graph.operators:
        if op.name != "ADD" or len(op.inputs) != 2 or any(g.stored(t) is not None or t < 0 for t in op.inputs):
            continue
        left, right = near.get(op.inputs[0], ()), near.get(op.inputs[1], ())
        if len(left) * len(right) > _MAX_MEETING:
            continue
        for fa in left:
            for fb in right:
                a, b = owner[fa].stored, owner[fb].stored
                if a != b:
                    found[(min(a, b), max(a, b))].append(op)
    return found


def _orient(g: _Graph, a: _Weight, b: _Weight, loop_states: frozenset[int]) -> tuple[_Weight, _Weight, str] | None:
    """(kernel, recurrent, evidence) of two meeting weights, or None when it cannot be told."""
    state = g.forward(set(loop_states) | {op.outputs[0] for op in a.uses + b.uses})
    a_rec = any(op.inputs[0] in state for op in a.uses)
    b_rec = any(op.inputs[0] in state for op in b.uses)
    if a_rec != b_rec:
        return (b, a, "data flow") if a_rec else (a, b, "data flow")
    if a_rec or a.rows != b.rows:
        return None
    fits = [(k, r) for k, r in ((a, b), (b, a)) if r.cols and r.rows % r.cols == 0 and r.rows // r.cols in (1, 3, 4)
            and all(_reads_state(g, op.inputs[0]) for op in r.uses)]
    return (fits[0][0], fits[0][1], "shapes") if len(fits) == 1 else None


def _reads_state(g: _Graph, t: int) -> bool:
    """t is (through shape ops) a subgraph input or a variable tensor: an explicit state."""
    for _ in range(_MAX_TRACE):
        if t in g.graph.inputs or g.tensors[t].is_variable:
            return True
        op = g.producer.get(t)
        if op is None or op.name not in _SHAPE_OPS or not op.inputs or op.inputs[0] < 0:
            return False
        t = op.inputs[0]
    return False


def _cell(g: _Graph, kernel: _Weight, recurrent: list[_Weight], meetings: dict[tuple[int, int], list[Operator]],
          near: dict[int, set[int]], evidence: str) -> Cell:
    units = recurrent[0].cols
    meet_ops = [op for r in recurrent for op in meetings[(min(kernel.stored, r.stored), max(kernel.stored, r.stored))]]
    kinds = Counter(_elementwise_kinds(g, meet_ops))
    activations = tuple(sorted({k for k in kinds if k in _ACTIVATION_OPS} | _fused_activations(meet_ops)))
    kind, reset_after, note = _classify(kernel, recurrent, units, kinds, activations)
    input_bias, recurrent_bias = _biases(g, kernel, recurrent, meet_ops)
    if kind != "gru" or not reset_after:
        input_bias, recurrent_bias = input_bias + recurrent_bias, ()
    first = kernel.uses[0]
    return Cell(kind=kind, subgraph=g.graph.index, units=units, input_size=kernel.cols, rows=kernel.rows,
                kernel=ConstantRef(first.inputs[1], kernel.stored, "fc_weight", first.index),
                recurrent_kernel=tuple(ConstantRef(r.uses[0].inputs[1], r.stored, "fc_weight", r.uses[0].index)
                                       for r in recurrent),
                bias=input_bias, recurrent_bias=recurrent_bias, reset_after=reset_after, activations=activations,
                kernel_ops=tuple(op.index for op in kernel.uses),
                recurrent_ops=tuple(sorted(op.index for r in recurrent for op in r.uses)),
                evidence=evidence, note=note)


def _classify(kernel: _Weight, recurrent: list[_Weight], units: int, kinds: Counter,
              activations: tuple[str, ...]) -> tuple[str, bool | None, str]:
    """(kind, reset_after, note) from the weight shapes and the elementwise ops."""
    rows = [r.rows for r in recurrent]
    if any(r.cols != units for r in recurrent) or units <= 0 or sum(rows) != kernel.rows:
        return "unknown", None, f"recurrent weights {[(r.rows, r.cols) for r in recurrent]} do not add up to " \
                                f"the kernel's {kernel.rows} rows"
    shapes = {(4,): "lstm", (3,): "gru", (2, 1): "gru", (1,): "simple_rnn"}
    kind = shapes.get(tuple(r // units for r in rows)) if all(r % units == 0 for r in rows) else None
    if kind is None:
        return "unknown", None, f"gate rows {rows} for {units} units match no LSTM, GRU or SimpleRNN"
    fits = {"lstm": kinds["MUL"] >= 3, "gru": kinds["SUB"] >= 1 and kinds["MUL"] >= 2,
            "simple_rnn": bool(activations)}[kind]
    if not fits:
        return "unknown", None, f"the weight shapes suggest {kind} but the elementwise ops do not " \
                                f"({', '.join(f'{k}x{n}' for k, n in sorted(kinds.items()))})"
    return kind, (len(rows) == 1 if kind == "gru" else None), ""


def _elementwise_kinds(g: _Graph, meet_ops: list[Operator]) -> list[str]:
    """Kinds of every op reached from where the FCs meet, not entering FCs (the next step's or layer's)."""
    reached = g.forward((t for op in meet_ops for t in op.outputs if t >= 0), stop=frozenset({"FULLY_CONNECTED"}))
    return [op.name for op in g.graph.operators if any(t in reached for t in op.inputs)
            and op.name != "FULLY_CONNECTED"]


def _fused_activations(ops: list[Operator]) -> set[str]:
    acts = {op.options.get("fused_activation_function") for op in ops if isinstance(op.options, Options)}
    return {a for a in acts if a and a != "NONE"}


def _biases(g: _Graph, kernel: _Weight, recurrent: list[_Weight],
            meet_ops: list[Operator]) -> tuple[tuple[ConstantRef, ...], tuple[ConstantRef, ...]]:
    """(input-side, recurrent-side) bias constants: FC bias inputs, and constants ADDed near the FCs."""
    input_side: dict[int, ConstantRef] = {}
    recurrent_side: dict[int, ConstantRef] = {}
    for side, weights in ((input_side, [kernel]), (recurrent_side, recurrent)):
        for w in weights:
            for op in w.uses:
                stored = g.stored(op.inputs[2]) if len(op.inputs) > 2 else None
                if stored is not None:
                    side.setdefault(stored, ConstantRef(op.inputs[2], stored, "fc_bias", op.index))
    kernel_near = set().union(*(_near(g, op.outputs[0]) for op in kernel.uses))
    recurrent_near = set().union(*(_near(g, op.outputs[0]) for w in recurrent for op in w.uses))
    meet_near = set().union(set(), *(_near(g, t) for op in meet_ops for t in op.outputs if t >= 0))
    sizes = {kernel.rows} | {w.rows for w in recurrent}
    for op in g.graph.operators:
        if op.name != "ADD" or not _passes(g, op):
            continue
        const = next(t for t in op.inputs if g.stored(t) is not None)
        other = next(t for t in op.inputs if t != const)
        shape = g.tensors[const].shape
        if _numel(shape) not in sizes or len([d for d in shape if d != 1]) > 1:
            continue
        side = recurrent_side if other in recurrent_near and other not in kernel_near | meet_near else \
            input_side if other in kernel_near | meet_near else None
        if side is not None:
            stored = g.stored(const)
            side.setdefault(stored, ConstantRef(const, stored, "add", op.index))
    return tuple(input_side.values()), tuple(recurrent_side.values())


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
