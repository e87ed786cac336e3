"""An ONNX graph as layers: one per recurrent node, and the other stored tensors grouped.

Counting rule (every stored tensor once, never twice):
- every initializer, in the main graph and in every subgraph, belongs to exactly one layer;
- a recurrent node's layer holds the initializers (and `Constant` node tensors) its W, R, B, P and
  other constant inputs are made of, found through the constant folder; when a second node is made of
  the same tensors (silero-vad's two `If` branches), they stay counted under the first, and the second
  layer has no weights of its own;
- other initializers are grouped by their name's module prefix (`model.encoder.0.conv.weight` →
  `model.encoder.0.conv`, `dense_2/kernel:0` → `dense_2`), else by the node that first consumes them;
- `Constant` nodes that do not feed a recurrent node (axes, shapes, scalars) are not counted.
So `total_params` is the sum of the initializers' elements (plus the Constant tensors recurrent weights
come from). Values a node gets at run time (graph inputs, results of ops that are not folded) are not in
the file: they are not counted, their shapes come from the graph's declarations, and reading them fails
with "the values ... are not in the file".

The recurrent node's own W, R, B, P, as the node sees them (possibly folded: reordered slices of an
initializer), are the layer's `operands`: the cell builder cuts the gate blocks from those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ...model import Layer, Weight, strip_tf_suffix
from ...safety import printable
from .fold import ConstantFolder, Folded, Scope, Unknown
from .proto import Graph, Node, OnnxModel, OnnxTensor, ValueInfo, opset_version
from .recurrent import RecurrentNode, RecurrentScan, _node_paths
from .weights import absent_weight, folded_weight, tensor_weight

UNUSED = "Initializer"  # class of a group no node consumes


@dataclass(frozen=True)
class Operand:
    """One input of a recurrent node as the node sees it. `weight` is None when the input is absent or
    its shape is not declared; `stored` says whether the file holds its values (`how` says how they are
    obtained), else `why` says why not."""

    role: str
    name: str
    weight: Weight | None
    stored: bool
    how: str = ""
    why: str = ""


@dataclass(frozen=True)
class RecurrentLayer(Layer):
    """The layer of an LSTM, GRU or RNN node: `node` its attributes and inputs, `operands` W/R/B/P (and
    the other inputs) as the node sees them, `counted_in` the layers already counting tensors it is
    made of."""

    node: RecurrentNode | None = None
    operands: tuple[Operand, ...] = ()
    counted_in: tuple[str, ...] = ()

    def operand(self, role: str) -> Operand | None:
        return next((o for o in self.operands if o.role == role), None)


@dataclass
class _Group:
    name: str
    class_name: str
    order: tuple[int, int]
    weights: list[Weight] = field(default_factory=list)


@dataclass(frozen=True)
class Built:
    layers: tuple[Layer, ...]
    notes: tuple[str, ...]


# --- walking every graph --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Visit:
    scope: Scope
    node: Node
    path: str
    order: int


def _visits(model: OnnxModel, root: Scope) -> tuple[list[_Visit], dict[str, Scope]]:
    """Every node in model order (a subgraph's nodes right after the node holding it), and every scope
    by its path ("" for the main graph), with the paths `recurrent` gives nodes."""
    visits: list[_Visit] = []
    scopes = {"": root}
    starts: list[tuple[Scope, str]] = [(root, "")]
    for function in model.functions:
        graph = Graph(function.name, function.nodes, (), (),
                      tuple(ValueInfo(n, "", None, None) for n in function.inputs), (), ())
        label = f"{function.domain}.{function.name}"
        scope = Scope(graph, opset_version(function.opset_imports, ""), None, label, "function")
        scopes[label] = scope
        starts.append((scope, label + "/"))
    for scope, prefix in starts:
        stack: list[Iterator[tuple[Node, str]]] = [iter(_node_paths(scope.graph.nodes, prefix))]
        owners = [scope]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                owners.pop()
                continue
            node, path = step
            visits.append(_Visit(owners[-1], node, path, len(visits)))
            for child, where in reversed(list(_subgraphs(node, path))):
                inner = owners[-1].child(child, where)
                scopes[where] = inner
                stack.append(iter(_node_paths(child.nodes, where + "/")))
                owners.append(inner)
    return visits, scopes


def _subgraphs(node: Node, path: str) -> Iterator[tuple[Graph, str]]:
    for attribute in node.attributes:
        graphs = attribute.value if attribute.type == "graphs" else (
            (attribute.value,) if attribute.type == "graph" else ())
        for k, graph in enumerate(graphs):
            yield graph, f"{path}/{attribute.name}" + (f"/{k}" if attribute.type == "graphs" else "")


# --- the layers -----------------------------------------------------------------------------------

class _Builder:
    def __init__(self, model: OnnxModel, scan: RecurrentScan, folder: ConstantFolder) -> None:
        self.model, self.scan, self.folder = model, scan, folder
        self.visits, self.scopes = _visits(model, folder.root)
        self.weights: dict[tuple[int, str], Weight] = {}  # (id of the owning scope, name) -> stored tensor
        self.claimed: dict[tuple[int, str], str] = {}  # -> the layer counting it
        self.first_use: dict[tuple[int, str], _Visit] = {}
        self.notes: list[str] = []
        self._index_stored()

    def _index_stored(self) -> None:
        for scope in self.scopes.values():
            for tensor in scope.graph.initializers:
                location = f"{scope.path}/{tensor.name}" if scope.path else tensor.name
                self.weights.setdefault((id(scope), tensor.name), tensor_weight(tensor, location))
        for visit in self.visits:
            for name in visit.node.inputs:
                owner = visit.scope.owner(name) if name else None
                if owner is not None and name in owner.initializers:
                    self.first_use.setdefault((id(owner), name), visit)

    def build(self) -> Built:
        recurrent = [self._recurrent_layer(n) for n in self.scan.nodes]
        groups = self._groups()
        ordered = sorted([(self._node_order(layer.node), layer) for layer in recurrent]
                         + [(g.order, Layer(g.name, g.class_name, weights=tuple(g.weights))) for g in groups],
                         key=lambda pair: pair[0])
        self._model_notes()
        return Built(tuple(layer for _, layer in ordered), tuple(self.notes))

    # recurrent nodes ---------------------------------------------------------------------------

    def _node_order(self, node: RecurrentNode | None) -> tuple[int, int]:
        """Where the node is in model order (found by its graph and outputs: its path may carry `#k`)."""
        index = next((v.order for v in self.visits if node is not None and v.scope.path == node.graph
                      and v.node.outputs == node.outputs and v.node.op_type == node.op_type), 0)
        return (index, 0)

    def _recurrent_layer(self, node: RecurrentNode) -> RecurrentLayer:
        scope = self.scopes.get(node.graph, self.folder.root)
        own: list[Weight] = []
        counted_in: list[str] = []
        for item in node.inputs:
            if item.constant is None:
                continue
            for source in item.constant.sources:
                key, weight = self._stored(scope, source)
                if weight is None:
                    continue
                holder = self.claimed.setdefault(key, node.path)
                if holder == node.path:
                    if all(w is not weight for w in own):
                        own.append(weight)
                elif holder not in counted_in:
                    counted_in.append(holder)
        operands = tuple(self._operand(node, item.role, item.name, item.value, scope)
                         for item in node.inputs if item.present)
        self._operand_notes(node, operands)
        return RecurrentLayer(name=node.path, class_name=node.op_type, config=_config(node), weights=tuple(own),
                              node=node, operands=operands, counted_in=tuple(counted_in))

    def _stored(self, scope: Scope, name: str) -> tuple[tuple[int, str], Weight | None]:
        """The stored tensor `name` resolves to from `scope`: an initializer, or a Constant node's tensor."""
        owner = scope.owner(name)
        if owner is None:
            return (0, name), None
        key = (id(owner), name)
        if key in self.weights:
            return key, self.weights[key]
        producer = owner.producers.get(name)
        if producer is not None and producer.op_type == "Constant":
            tensor = _constant_tensor(producer)
            if tensor is not None:
                location = f"{owner.path}/{name}" if owner.path else name
                self.weights[key] = tensor_weight(tensor, f"Constant {location}")
                return key, self.weights[key]
        return key, None

    def _operand(self, node: RecurrentNode, role: str, name: str, value, scope: Scope) -> Operand:
        where = f"{node.path} {role}"
        if isinstance(value, Folded):
            weight = None
            if value.kind == "initializer" and value.tensor is not None:
                weight = self.weights.get((id(scope.owner(name)), name))
            if weight is None or weight.shape != value.shape:
                weight = folded_weight(value, name, f"{node.path}/{role}")
            return Operand(role, name, weight, True, how=value.describe())
        assert isinstance(value, Unknown)
        return Operand(role, name, absent_weight(value, name, f"{node.path}/{role}", where), False, why=value.why)

    def _operand_notes(self, node: RecurrentNode, operands: tuple[Operand, ...]) -> None:
        path = printable(node.path, 200)
        weights = [o for o in operands if o.role in ("W", "R", "B", "P")]
        absent = [o for o in weights if not o.stored]
        if absent:
            reasons = "; ".join(f"{o.role}: {o.why}" for o in absent)
            self.notes.append(f"{path}: the values of {', '.join(o.role for o in absent)} are not in the file "
                              f"({reasons}); their shapes come from the graph's declarations and they are not "
                              "counted in the totals")
        present = {o.role: o for o in operands}
        missing = [role for role in ("W", "R") if role not in present]
        unshaped = [role for role in ("W", "R") if role in present and present[role].weight is None]
        if missing:
            self.notes.append(f"{path}: no direction: the node has no {' and '.join(missing)} input")
        elif unshaped:
            self.notes.append(f"{path}: no direction: the graph declares no whole shape for "
                              f"{' and '.join(unshaped)}, so the gates cannot be cut")
        overridable = [o.role for o in weights if o.stored and "a runtime may replace it" in o.how]
        if overridable:
            self.notes.append(f"{path}: {', '.join(overridable)} come from initializers that are also graph "
                              "inputs: a runtime may replace them")

    # everything else ---------------------------------------------------------------------------

    def _groups(self) -> list[_Group]:
        groups: dict[str, _Group] = {}
        taken = {n.path for n in self.scan.nodes}
        unused = 0
        seen: set[tuple[int, str]] = set()
        for scope in self.scopes.values():
            for tensor in scope.graph.initializers:
                key = (id(scope), tensor.name)
                if key in self.claimed or key in seen:  # a repeated name: the first tensor is the value
                    continue
                seen.add(key)
                visit = self.first_use.get(key)
                name = _prefix(tensor.name) or (visit.path if visit else tensor.name)
                if name in taken:
                    name = _free(name, taken | set(groups))
                if name not in groups:
                    if visit is None:
                        unused += 1
                    order = (visit.order, 1) if visit else (len(self.visits) + unused, 1)
                    groups[name] = _Group(name, visit.node.op_type if visit else UNUSED, order)
                group = groups[name]
                group.weights.append(self.weights[key])
                if visit is not None and group.order > (visit.order, 1):
                    group.order = (visit.order, 1)
        return list(groups.values())

    def _model_notes(self) -> None:
        why = self.scan.why_none()
        if why:
            self.notes.insert(0, why)
        sparse = sum(len(s.graph.sparse_initializers) for s in self.scopes.values())
        if sparse:
            self.notes.append(f"{sparse} sparse initializer(s): their values are not read and not counted")


def _config(node: RecurrentNode) -> dict:
    """The node's attributes (ONNX defaults filled in), as plain data."""
    config = {"op_type": node.op_type, "direction": node.direction, "hidden_size": node.hidden_size,
              "layout": node.layout, "activations": list(node.activations),
              "activation_alpha": list(node.activation_alpha), "activation_beta": list(node.activation_beta),
              "clip": node.clip, "graph": node.graph, "opset": node.opset}
    if node.input_forget is not None:
        config["input_forget"] = node.input_forget
    if node.linear_before_reset is not None:
        config["linear_before_reset"] = node.linear_before_reset
    return config


def _constant_tensor(node: Node) -> OnnxTensor | None:
    attribute = node.attributes[0] if len(node.attributes) == 1 else None
    if attribute is not None and attribute.name == "value" and attribute.type == "tensor":
        return attribute.value
    return None


def _prefix(name: str) -> str:
    """The module path in a tensor's name: up to its last '/' (TensorFlow, Keras) or, without one, its
    last '.' (PyTorch); "" when there is none."""
    base = strip_tf_suffix(name)
    for separator in ("/", "."):
        head, sep, tail = base.rpartition(separator)
        if sep:
            return head if head.strip("/.") and tail else ""
    return ""


def _free(name: str, taken: set[str]) -> str:
    k = 2
    while f"{name}#{k}" in taken:
        k += 1
    return f"{name}#{k}"


def build_layers(model: OnnxModel, scan: RecurrentScan, folder: ConstantFolder) -> Built:
    return _Builder(model, scan, folder).build()
