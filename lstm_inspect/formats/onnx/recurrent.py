"""The LSTM, GRU and RNN nodes of an ONNX model, wherever they are, with their attributes (ONNX defaults
filled in) and their inputs by role, each either a constant (folded when needed) or a runtime value.

Gates are not interpreted here: W, R, B and P are handed over as the node holds them (ONNX order
i, o, f, c for LSTM; z, r, h for GRU).

Paths. A node's path is its name, or `<OpType>_<k>` when the name is empty (k counts the nodes of that
op type in the same graph, from 0). A node inside a subgraph is prefixed by the path of the node holding
the subgraph and the attribute's name, with a leading "/" of the inner name dropped:
`/model/decoder/If_1/then_branch/model/decoder/rnn/LSTM` (silero-vad), `Loop_0/body/LSTM_0`. A node in a
model-local function is prefixed `<domain>.<function name>/`. A path already taken gets `#2`, `#3`, ...

When the model has no recurrent node, `RecurrentScan.reused_weights` lists constant weights fed to more
than one MatMul/Gemm (PyTorch's dynamo exporter unrolls `nn.RNN` into one MatMul per time step on the
same weight), and `loops` the Loop/Scan nodes (tf2onnx writes some Keras RNNs as a Loop).
"""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import CorruptModelError, UnsupportedDialectError
from ...safety import DEFAULT_LIMITS, Limits, printable
from .fold import ConstantFolder, Folded, Scope, Value
from .proto import Dim, Graph, Node, OnnxModel, ValueInfo, opset_version

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
ROLES = {"LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"),
         "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
         "RNN": ("X", "W", "R", "B", "sequence_lens", "initial_h")}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
_MATMULS = ("MatMul", "Gemm")
_LOOPS = ("Loop", "Scan")


@dataclass(frozen=True)
class NodeInput:
    """One input of a recurrent node. `name` is "" when the optional input is absent; otherwise `value`
    is a `Folded` constant (values readable, `describe()` says how they were obtained) or an `Unknown`
    runtime value (`why`, and the shape/dtype the graph declares for it, if any)."""

    role: str
    name: str
    value: Value | None

    @property
    def present(self) -> bool:
        return bool(self.name)

    @property
    def constant(self) -> Folded | None:
        return self.value if isinstance(self.value, Folded) else None

    @property
    def shape(self) -> tuple[Dim, ...] | None:
        return None if self.value is None else self.value.shape

    @property
    def dtype(self) -> str | None:
        return None if self.value is None else self.value.dtype


@dataclass(frozen=True)
class RecurrentNode:
    """An LSTM/GRU/RNN node. `graph` is the path of the graph holding it ("" for the main graph).
    `linear_before_reset` is None except for GRU, `input_forget` None except for LSTM; `hidden_size`
    None when the attribute is absent; `clip` None when there is no clipping."""

    path: str
    graph: str
    name: str
    op_type: str
    opset: int | None
    direction: str
    num_directions: int
    hidden_size: int | None
    layout: int
    activations: tuple[str, ...]
    activation_alpha: tuple[float, ...]
    activation_beta: tuple[float, ...]
    clip: float | None
    input_forget: int | None
    linear_before_reset: int | None
    inputs: tuple[NodeInput, ...]
    outputs: tuple[str, ...]

    def input(self, role: str) -> NodeInput:
        return next(i for i in self.inputs if i.role == role)


@dataclass(frozen=True)
class ReusedWeight:
    """A constant fed to more than one MatMul/Gemm node of one graph."""

    graph: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    uses: int


@dataclass(frozen=True)
class RecurrentScan:
    nodes: tuple[RecurrentNode, ...]
    reused_weights: tuple[ReusedWeight, ...]  # only looked for when `nodes` is empty
    loops: tuple[str, ...]  # paths of Loop/Scan nodes, only looked for when `nodes` is empty

    @property
    def unrolled(self) -> bool:
        """No recurrent node, but one weight feeds several MatMul/Gemm steps."""
        return not self.nodes and bool(self.reused_weights)

    def why_none(self) -> str | None:
        """One line saying why there is no recurrent node to read (None when there are some)."""
        if self.nodes:
            return None
        text = "no LSTM, GRU or RNN node"
        if self.reused_weights:
            top = self.reused_weights[0]
            text += (f"; weight '{printable(top.name, 200)}' {list(top.shape)} feeds {top.uses} MatMul/Gemm "
                     "nodes: the recurrence looks unrolled into one matrix product per time step (as "
                     "PyTorch's dynamo exporter writes nn.RNN)")
        if self.loops:
            text += f"; {len(self.loops)} Loop/Scan node(s) (a recurrence written as a loop is not read)"
        return text


def find_recurrent(model: OnnxModel, limits: Limits = DEFAULT_LIMITS,
                   folder: ConstantFolder | None = None) -> RecurrentScan:
    """Every LSTM/GRU/RNN node of the model: the main graph's in node order, then each subgraph's
    (depth first, in the order of the nodes holding them), then the local functions'."""
    folder = folder or ConstantFolder(model, limits)
    scopes = list(_scopes(folder.root, model))
    taken: set[str] = set()
    nodes = []
    for scope, prefix in scopes:
        for node, path in _node_paths(scope.graph.nodes, prefix):
            if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
                nodes.append(_recurrent(node, _unique(path, taken), scope, folder))
    if nodes:
        return RecurrentScan(tuple(nodes), (), ())
    reused = [w for scope, _ in scopes for w in _reused_weights(scope, folder)]
    loops = [path for scope, prefix in scopes for node, path in _node_paths(scope.graph.nodes, prefix)
             if node.op_type in _LOOPS]
    return RecurrentScan((), tuple(sorted(reused, key=lambda w: -w.uses)), tuple(loops))


# --- walking the graphs ---------------------------------------------------------------------------

def _scopes(root: Scope, model: OnnxModel) -> list[tuple[Scope, str]]:
    """(scope, path prefix of its nodes) for the main graph, every subgraph and every local function;
    iterative, in graph order (the reader already bounded the nesting)."""
    out: list[tuple[Scope, str]] = []
    pending: list[tuple[Scope, str]] = [(root, "")]
    for function in model.functions:
        graph = Graph(function.name, function.nodes, (), (),
                      tuple(ValueInfo(n, "", None, None) for n in function.inputs), (), ())
        label = f"{function.domain}.{function.name}"
        pending.append((Scope(graph, opset_version(function.opset_imports, ""), None, label, "function"),
                        label + "/"))
    pending.reverse()
    while pending:
        scope, prefix = pending.pop()
        out.append((scope, prefix))
        children = []
        for node, path in _node_paths(scope.graph.nodes, prefix):
            for attribute in node.attributes:
                graphs = attribute.value if attribute.type == "graphs" else (
                    (attribute.value,) if attribute.type == "graph" else ())
                for k, graph in enumerate(graphs):
                    where = f"{path}/{attribute.name}" + (f"/{k}" if attribute.type == "graphs" else "")
                    children.append((scope.child(graph, where), where + "/"))
        pending.extend(reversed(children))
    return out


def _node_paths(nodes: tuple[Node, ...], prefix: str) -> list[tuple[Node, str]]:
    counts: dict[str, int] = {}
    out = []
    for node in nodes:
        k = counts.get(node.op_type, 0)
        counts[node.op_type] = k + 1
        own = node.name or f"{node.op_type}_{k}"
        out.append((node, prefix + (own[1:] if prefix and own.startswith("/") else own)))
    return out


def _unique(path: str, taken: set[str]) -> str:
    candidate, k = path, 1
    while candidate in taken:
        k += 1
        candidate = f"{path}#{k}"
    taken.add(candidate)
    return candidate


# --- one recurrent node ---------------------------------------------------------------------------

def _recurrent(node: Node, path: str, scope: Scope, folder: ConstantFolder) -> RecurrentNode:
    attrs = _Attributes(node, path)
    op = node.op_type
    direction = attrs.get("direction", "string", "forward")
    if direction not in DIRECTIONS:
        raise attrs.fail(f"direction '{printable(direction, 40)}' is not forward, reverse or bidirectional")
    dirs = DIRECTIONS[direction]
    hidden = attrs.get("hidden_size", "int", None)
    if hidden is not None and hidden <= 0:
        raise attrs.fail(f"hidden_size {hidden} is not positive")
    roles = ROLES[op]
    if len(node.inputs) > len(roles):
        raise attrs.fail(f"{len(node.inputs)} inputs, an {op} takes at most {len(roles)}")
    names = node.inputs + ("",) * (len(roles) - len(node.inputs))
    inputs = tuple(NodeInput(role, name, folder.value(scope, name) if name else None)
                   for role, name in zip(roles, names))
    clip = attrs.get("clip", "float", None)
    return RecurrentNode(
        path=path, graph=scope.path, name=node.name, op_type=op, opset=scope.opset,
        direction=direction, num_directions=dirs, hidden_size=hidden,
        layout=attrs.flag("layout"),
        activations=tuple(attrs.get("activations", "strings", DEFAULT_ACTIVATIONS[op] * dirs)),
        activation_alpha=tuple(attrs.get("activation_alpha", "floats", ())),
        activation_beta=tuple(attrs.get("activation_beta", "floats", ())),
        clip=float(clip) if clip is not None else None,
        input_forget=attrs.flag("input_forget") if op == "LSTM" else None,
        linear_before_reset=attrs.flag("linear_before_reset") if op == "GRU" else None,
        inputs=inputs, outputs=node.outputs)


class _Attributes:
    def __init__(self, node: Node, path: str) -> None:
        self.node, self.path = node, path

    def fail(self, problem: str) -> CorruptModelError:
        return CorruptModelError(f"{self.node.op_type} node '{printable(self.path, 200)}': {problem}")

    def get(self, name: str, kind: str, default: object) -> object:
        attribute = self.node.attribute(name)
        if attribute is None:
            return default
        if attribute.ref_attr_name:
            raise UnsupportedDialectError(
                f"{self.node.op_type} node '{printable(self.path, 200)}': attribute {name} is bound at each "
                f"call of its function (to {printable(attribute.ref_attr_name, 100)}), which is not read")
        if attribute.type != kind:
            raise self.fail(f"attribute {name} is a {attribute.type}, not {kind}")
        return attribute.value

    def flag(self, name: str) -> int:
        value = self.get(name, "int", 0)
        if value not in (0, 1):
            raise self.fail(f"attribute {name} is {value}, not 0 or 1")
        return value


# --- no recurrent node: hints ---------------------------------------------------------------------

def _reused_weights(scope: Scope, folder: ConstantFolder) -> list[ReusedWeight]:
    """Constants used by more than one MatMul/Gemm node of this graph (Gemm: its B input)."""
    uses: dict[str, int] = {}
    for node in scope.graph.nodes:
        if node.op_type not in _MATMULS or node.domain not in ("", "ai.onnx"):
            continue
        candidates = node.inputs[1:2] if node.op_type == "Gemm" else node.inputs[:2]
        for name in dict.fromkeys(n for n in candidates if n):
            uses[name] = uses.get(name, 0) + 1
    out = []
    for name, count in uses.items():
        if count < 2:
            continue
        value = folder.value(scope, name)
        if isinstance(value, Folded):
            out.append(ReusedWeight(scope.path, name, value.shape, value.dtype, count))
    return out

