"""TF2 object-based checkpoints: which entries are the model's variables, in model order, and by which
name, read from the `_CHECKPOINTABLE_OBJECT_GRAPH` entry (a TrackableObjectGraph).

A key such as `model/optimizer/_trainable_variables/3/.ATTRIBUTES/VARIABLE_VALUE` is only the first
breadth-first path TF found to the variable; it does not say which layer owns it (Keras 3 files the
model's weights under the optimizer after `fit`, a tf_keras SavedModel under `variables/4`). So:

* model variables are the variable nodes reachable from the root without crossing an `optimizer`,
  `save_counter` or metrics edge, in depth-first order of the children as listed (which is the
  order Keras creates them: kernel, recurrent_kernel, bias; forward side, then backward);
* optimizer state is what is reachable only through an `optimizer` edge, plus slot variables;
* each variable is named by its `full_name` (the tf.Variable's name: `enc_lstm/lstm_cell/kernel`),
  else by the SavedModel's `SavedVariable.name` of the same node, else by its key.

A Keras 3 `model.export()` lists every weight twice (`variables/N` and `_all_variables/N`): the second
copy is recognised (same name, shape and dtype, reached through `_all_variables`) and counted once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from .protos import VARIABLE_VALUE, TrackableObjectGraph

_NOT_MODEL = frozenset({"optimizer", "save_counter", "metrics", "_metrics", "_compile_metrics",
                        "compiled_metrics", "_loss_tracker"})
_DUPLICATE_LISTS = frozenset({"_all_variables"})
_ATTRIBUTE_SUFFIX = "/.ATTRIBUTES/" + VARIABLE_VALUE
_RNG_STATE = "seed_generator_state"


@dataclass(frozen=True)
class ObjectVariable:
    node: int
    key: str  # the bundle entry holding its value
    name: str  # full_name, SavedVariable.name or the key without its attribute suffix


@dataclass
class Catalogue:
    model: list[ObjectVariable] = field(default_factory=list)
    optimizer: list[str] = field(default_factory=list)  # keys
    other: list[ObjectVariable] = field(default_factory=list)  # neither model nor optimizer
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)


def _value_attribute(graph: TrackableObjectGraph, node: int):
    return next((a for a in graph.nodes[node].attributes if a.name == VARIABLE_VALUE), None)


def _name(graph: TrackableObjectGraph, node: int, key: str, saved_names: Mapping[int, str]) -> str:
    attribute = _value_attribute(graph, node)
    if attribute is not None and attribute.full_name:
        return attribute.full_name
    if saved_names.get(node):
        return saved_names[node]
    return key[: -len(_ATTRIBUTE_SUFFIX)] if key.endswith(_ATTRIBUTE_SUFFIX) else key


def _walk(graph: TrackableObjectGraph, skip: frozenset[str]) -> list[tuple[int, bool]]:
    """(node, reached through a duplicate list) of every node reachable from the root without
    crossing an edge named in `skip`, in depth-first preorder (children as listed, duplicate
    lists last)."""
    seen: set[int] = set()
    order: list[tuple[int, bool]] = []
    stack: list[tuple[int, bool]] = [(0, False)]
    while stack:
        node, duplicate = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        order.append((node, duplicate))
        children = [c for c in graph.nodes[node].children if c.local_name not in skip]
        ordered = [c for c in children if c.local_name not in _DUPLICATE_LISTS] + \
                  [c for c in children if c.local_name in _DUPLICATE_LISTS]
        for child in reversed(ordered):
            if child.node_id not in seen:
                stack.append((child.node_id, duplicate or child.local_name in _DUPLICATE_LISTS))
    return order


def catalogue(graph: TrackableObjectGraph, has_entry: Callable[[str], tuple | None],
              saved_names: Mapping[int, str] | None = None) -> Catalogue:
    """Sort the graph's variables. `has_entry(key)` returns (shape, dtype) of a stored numeric
    tensor, or None when the key holds no such value (a variable saved without a value, a string)."""
    saved_names = saved_names or {}
    result = Catalogue()
    if not graph.nodes:
        return result
    taken: set[int] = set()
    seen_names: dict[tuple, int] = {}
    for node, duplicate in _walk(graph, _NOT_MODEL):
        found = _variable(graph, node, has_entry, saved_names)
        if found is None:
            continue
        variable, signature = found
        if variable.name.rsplit("/", 1)[-1] == _RNG_STATE:
            continue  # a Keras 3 seed generator's RNG state: reported with the other state below
        if duplicate and (variable.name,) + signature in seen_names:
            result.duplicates += 1
            taken.add(node)
            continue
        seen_names.setdefault((variable.name,) + signature, node)
        result.model.append(variable)
        taken.add(node)
    optimizer_nodes = {s.slot_variable_node_id for n in graph.nodes for s in n.slot_variables}
    for node, _ in _walk_from_optimizer(graph):
        optimizer_nodes.add(node)
    for node in range(len(graph.nodes)):
        if node in taken:
            continue
        found = _variable(graph, node, has_entry, saved_names)
        if found is None:
            continue
        variable = found[0]
        if node in optimizer_nodes or "/.OPTIMIZER_SLOT/" in variable.key:
            result.optimizer.append(variable.key)
        else:
            result.other.append(variable)
    _unique_names(result.model)
    if result.duplicates:
        result.notes.append(f"{result.duplicates} variables are stored twice (variables/ and _all_variables/, "
                            "as Keras 3's export writes them): counted once")
    return result


def _unique_names(model: list[ObjectVariable]) -> None:
    """Variables of plain tf.Modules often share a name (`Variable`): name those by their object path."""
    counts: dict[str, int] = {}
    for v in model:
        counts[v.name] = counts.get(v.name, 0) + 1
    for k, v in enumerate(model):
        if counts[v.name] > 1:
            path = v.key[: -len(_ATTRIBUTE_SUFFIX)] if v.key.endswith(_ATTRIBUTE_SUFFIX) else v.key
            model[k] = ObjectVariable(v.node, v.key, path)


def _variable(graph: TrackableObjectGraph, node: int, has_entry: Callable[[str], tuple | None],
              saved_names: Mapping[int, str]) -> tuple[ObjectVariable, tuple] | None:
    attribute = _value_attribute(graph, node)
    if attribute is None or not attribute.checkpoint_key:
        return None
    signature = has_entry(attribute.checkpoint_key)
    if signature is None:
        return None
    key = attribute.checkpoint_key
    return ObjectVariable(node, key, _name(graph, node, key, saved_names)), tuple(signature)


def _walk_from_optimizer(graph: TrackableObjectGraph) -> list[tuple[int, bool]]:
    """Every node reachable through an edge named `optimizer` (its slots, iterations, ...)."""
    starts = [c.node_id for n in graph.nodes for c in n.children if c.local_name == "optimizer"]
    seen: set[int] = set()
    order = []
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        order.append((node, False))
        stack.extend(c.node_id for c in graph.nodes[node].children if c.node_id not in seen)
    return order
