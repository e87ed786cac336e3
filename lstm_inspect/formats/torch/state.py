"""Find the model's state dict in what a PyTorch file holds.

A file may hold a bare state dict, a checkpoint dict with the state dict at any depth (`state_dict`,
`model_state_dict`, `model`, `net`, Lightning's `state_dict`...) beside optimizer state and training
metadata, a whole pickled module (`torch.save(model)`: stand-ins whose `_parameters`, `_buffers` and
`_modules` hold the tensors), a TorchScript module, or a safetensors map. `find_model_state` picks
the model's state dict, names its tensors as `model.state_dict()` would, strips DataParallel's
`module.` prefix, and counts what else the file holds.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .containers import TensorRef, TorchFile, named_children, walk_tree
from .unpickler import ObjectStandIn

__all__ = ["ModelState", "ModuleRecord", "find_model_state"]

# Checkpoint keys that hold the model, most telling first.
MODEL_KEYS = ("state_dict", "model_state_dict", "model", "model_state", "net", "network", "module",
              "state_dict_model", "model_dict", "weights", "params", "net_state_dict")
OPTIMIZER_KEYS = frozenset({"optimizer", "optimizer_state_dict", "optimizer_states", "optimizers", "optim",
                            "optim_state", "optim_state_dict", "optimizer_state", "opt", "opt_state_dict"})
# Prefixes wrappers add to every key: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class ModuleRecord:
    """One module of a whole-module pickle or a TorchScript file: its state-dict prefix (`rnn`,
    `encoder.rnn`; '' for the root), class (`torch.nn.modules.rnn.LSTM`) and plain attributes
    (`mode`, `nonlinearity`, `proj_size`, `batch_first`...: scalars and short tuples of scalars)."""

    path: str
    class_name: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class ModelState:
    """The model's state dict and what else the file holds.

    `state_dict`: name → TensorRef in `state_dict()` order. `found_at`: the dotted path of what it
    came from ('' for the file's top object). `source`: 'state-dict', 'module' (a pickled nn.Module),
    'torchscript', 'safetensors', or 'none' when the file holds no state dict. `stripped_prefix`:
    what was removed from every key ('module.' for DataParallel), or ''. `modules`: the module tree
    of a whole-module or TorchScript file (empty for state dicts). `optimizer_elements` /
    `optimizer_tensors`: the tensor elements and tensors of optimizer state. `other_tensors`: every
    other tensor (path, TensorRef), e.g. an EMA copy or a tensor attribute outside the state dict.
    """

    state_dict: Mapping[str, TensorRef]
    found_at: str
    source: str
    stripped_prefix: str
    modules: tuple[ModuleRecord, ...]
    optimizer_elements: int
    optimizer_tensors: int
    other_tensors: tuple[tuple[str, TensorRef], ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class _Candidate:
    path: tuple[str, ...]
    source: str
    state_dict: dict[str, TensorRef]
    modules: tuple[ModuleRecord, ...]
    notes: tuple[str, ...] = ()

    @property
    def elements(self) -> int:
        return sum(t.numel for t in self.state_dict.values())


def find_model_state(tf: TorchFile) -> ModelState:
    """The state dict of the model in `tf`, and a count of everything around it."""
    candidates, optimizer_paths = _search(tf)
    chosen, notes = _choose(candidates)
    state_dict, stripped = _strip_wrapper_prefix(chosen.state_dict if chosen else {})
    if stripped:
        notes.append(f"removed the '{stripped}' prefix every key had (a DataParallel or compiled model)")
    if chosen is not None:
        notes.extend(chosen.notes)
    else:
        notes.append("no state dict found: the file holds no dict of tensors, module or TorchScript model")
    optimizer, other = _classify_tensors(tf, optimizer_paths, state_dict)
    return ModelState(
        state_dict=MappingProxyType(state_dict),
        found_at=".".join(chosen.path) if chosen else "",
        source=chosen.source if chosen else "none",
        stripped_prefix=stripped,
        modules=chosen.modules if chosen else (),
        optimizer_elements=sum(t.numel for t in optimizer),
        optimizer_tensors=len(optimizer),
        other_tensors=tuple(other),
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------------------
# Searching


def _search(tf: TorchFile) -> tuple[list[_Candidate], list[tuple[str, ...]]]:
    """Breadth first, so a shallower state dict comes first; state dicts, modules and optimizer
    state are not looked into further."""
    if tf.kind == "safetensors":
        return [_Candidate((), "safetensors", dict(tf.tree), ())], []
    candidates: list[_Candidate] = []
    optimizer_paths: list[tuple[str, ...]] = []
    queue: deque[tuple[tuple[str, ...], Any]] = deque([((), tf.tree)])
    while queue:
        path, node = queue.popleft()
        if _is_optimizer(path, node):
            optimizer_paths.append(path)
            continue
        candidate = _candidate(path, node, tf)
        if candidate is not None:
            candidates.append(candidate)
            continue
        queue.extend(named_children(path, node))
    return candidates, optimizer_paths


def _is_optimizer(path: tuple[str, ...], node: Any) -> bool:
    if path and path[-1].lower() in OPTIMIZER_KEYS:
        return True
    return isinstance(node, dict) and "state" in node and "param_groups" in node


def _candidate(path: tuple[str, ...], node: Any, tf: TorchFile) -> _Candidate | None:
    if isinstance(node, dict) and _is_state_dict(node):
        return _Candidate(path, "state-dict", {k: v for k, v in node.items() if type(v) is TensorRef}, ())
    if type(node) is ObjectStandIn:
        if node.module.startswith("__torch__") and _is_script_module(node, tf):
            return _script_candidate(path, node, tf)
        if "_parameters" in node.attributes or "_modules" in node.attributes:
            return _module_candidate(path, node)
    return None


def _is_state_dict(node: dict) -> bool:
    """String keys, at least one tensor, and nothing but tensors (modules' `_extra_state` aside)."""
    tensors = 0
    for key, value in node.items():
        if type(key) is not str:
            return False
        if type(value) is TensorRef:
            tensors += 1
        elif not key.endswith("_extra_state"):
            return False
    return tensors > 0


def _choose(candidates: list[_Candidate]) -> tuple[_Candidate | None, list[str]]:
    """The file's top object if it is one; else the best-named; else the largest."""
    notes: list[str] = []
    if not candidates:
        return None, notes
    named = [c for c in candidates if c.path and c.path[-1].lower() in MODEL_KEYS]
    if any(not c.path for c in candidates):
        chosen = next(c for c in candidates if not c.path)
    elif named:
        chosen = min(named, key=lambda c: MODEL_KEYS.index(c.path[-1].lower()))
    else:
        chosen = max(candidates, key=lambda c: c.elements)
        if len(candidates) > 1:
            notes.append(f"no key names the model: took the largest of {len(candidates)} state dicts")
    others = [".".join(c.path) or "(top)" for c in candidates if c is not chosen]
    if others:
        notes.append(f"other state dicts in the file: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}")
    return chosen, notes


def _strip_wrapper_prefix(state_dict: dict[str, TensorRef]) -> tuple[dict[str, TensorRef], str]:
    stripped = ""
    changed = True
    while state_dict and changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                stripped += prefix
                changed = True
    return state_dict, stripped


def _classify_tensors(tf: TorchFile, optimizer_paths: list[tuple[str, ...]],
                      state_dict: dict[str, TensorRef]) -> tuple[list[TensorRef], list[tuple[str, TensorRef]]]:
    """Optimizer tensors (each counted once), and the tensors neither optimizer nor model state."""
    in_model = {id(t) for t in state_dict.values()}
    optimizer: dict[int, TensorRef] = {}
    other: list[tuple[str, TensorRef]] = []
    walked = [] if tf.kind == "safetensors" else list(walk_tree(tf.tree))
    for path, node in walked:
        if type(node) is not TensorRef:
            continue
        if any(path[:len(p)] == p for p in optimizer_paths):
            optimizer[id(node)] = node
        elif id(node) not in in_model:
            other.append((".".join(path), node))
    other += [(f"CONSTANTS.c{i}", t) for i, t in enumerate(tf.constants) if type(t) is TensorRef]
    return list(optimizer.values()), other


# ----------------------------------------------------------------------------------------------
# Whole-module pickles: state_dict() order is a module's parameters, its persistent buffers, then
# each child module in registration order, depth first.


def _module_candidate(path: tuple[str, ...], root: ObjectStandIn) -> _Candidate:
    state: dict[str, TensorRef] = {}
    records: list[ModuleRecord] = []
    notes: list[str] = []
    stack: list[tuple[str, ObjectStandIn]] = [("", root)]
    while stack:
        prefix, module = stack.pop()
        attributes = module.attributes
        records.append(ModuleRecord(prefix[:-1], module.qualname, _plain_attributes(attributes)))
        skipped = _non_persistent(attributes)
        for group in ("_parameters", "_buffers"):
            for name, value in _mapping(attributes.get(group)).items():
                if type(value) is TensorRef and not (group == "_buffers" and name in skipped):
                    state[f"{prefix}{name}"] = value
                elif value is not None and not (group == "_buffers" and name in skipped):
                    notes.append(f"{prefix}{name} is a {_kind(value)}, not a tensor: left out")
        children = [(f"{prefix}{name}.", child) for name, child in _mapping(attributes.get("_modules")).items()
                    if type(child) is ObjectStandIn]
        stack.extend(reversed(children))
    return _Candidate(path, "module", state, tuple(records), tuple(notes))


def _non_persistent(attributes: dict) -> set:
    names = attributes.get("_non_persistent_buffers_set")
    return set(names) if isinstance(names, (set, frozenset, list, tuple)) else set()


def _mapping(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    if type(value) is ObjectStandIn:  # a dict subclass pickled by class (rare)
        return value.items
    return {}


def _plain_attributes(attributes: dict) -> Mapping[str, Any]:
    plain = {}
    for key, value in attributes.items():
        if type(key) is not str or key.startswith("_"):
            continue
        if type(value) in _SCALARS:
            plain[key] = value
        elif type(value) in (tuple, list) and len(value) <= 16 and all(type(v) in _SCALARS for v in value):
            plain[key] = tuple(value)
    return MappingProxyType(plain)


def _kind(value: Any) -> str:
    return value.qualname if type(value) is ObjectStandIn else type(value).__name__


# ----------------------------------------------------------------------------------------------
# TorchScript: tensors and submodules are attributes; code/ says which are parameters and buffers.


def _is_script_module(node: ObjectStandIn, tf: TorchFile) -> bool:
    if tf.script_classes:
        return node.qualname in tf.script_classes
    return tf.kind == "torchscript" and isinstance(node.state, dict)


def _script_candidate(path: tuple[str, ...], root: ObjectStandIn, tf: TorchFile) -> _Candidate:
    state: dict[str, TensorRef] = {}
    records: list[ModuleRecord] = []
    notes: list[str] = []
    stack: list[tuple[str, ObjectStandIn]] = [("", root)]
    while stack:
        prefix, module = stack.pop()
        attributes = module.attributes
        declared = tf.script_classes.get(module.qualname)
        plain = dict(_plain_attributes(attributes), **(declared.constants if declared else {}))
        records.append(ModuleRecord(prefix[:-1], module.qualname, MappingProxyType(plain)))
        if declared is None:
            names = [k for k, v in attributes.items() if type(v) is TensorRef]
            if names:
                notes.append(f"{module.qualname}: no declaration in code/, so every tensor attribute is "
                             "taken as a parameter")
        else:
            names = [k for k in attributes if k in declared.parameters]
            names += [k for k in attributes if k in declared.buffers]
        state.update((f"{prefix}{k}", attributes[k]) for k in names if type(attributes.get(k)) is TensorRef)
        children = [(f"{prefix}{k}.", v) for k, v in attributes.items()
                    if type(v) is ObjectStandIn and type(k) is str and _is_script_module(v, tf)]
        stack.extend(reversed(children))
    return _Candidate(path, "torchscript", state, tuple(records), tuple(notes))

