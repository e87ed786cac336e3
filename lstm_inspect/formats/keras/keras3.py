"""Keras 3 native saving: `.keras` zips, the same unzipped as a folder, `.weights.h5`, and sharded
`*.weights.json`.

Inside the weights HDF5 the tree mirrors the Python objects: `layers/<snake_case(Class)>[_k]/vars/0..`,
`.../cell/vars`, `.../forward_layer/...`. Group names are class names, not layer names, so layers are
matched back to the config in order (the same counter Keras uses), checked against the `name`
attribute that Keras 3.6+ writes on each `vars` group.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterable

import h5py

from lstm_inspect.formats.keras.configs import CELL_CLASSES, MODEL_CLASSES, RNN_LAYER_CLASSES, Spec
from lstm_inspect.formats.keras.hdf5 import decode, h5_weight
from lstm_inspect.formats.keras.layers import infer_class, natural_key
from lstm_inspect.model import Layer, Weight

# Variable names by position, for the classes whose save order is fixed.
_VAR_NAMES = {
    "recurrent": ("kernel", "recurrent_kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "EinsumDense": ("kernel", "bias"),
    "Embedding": ("embeddings",),
    "Conv1D": ("kernel", "bias"), "Conv2D": ("kernel", "bias"), "Conv3D": ("kernel", "bias"),
    "LayerNormalization": ("gamma", "beta"),
}
_SKIP_PARTS = ("seed_generator",)  # RNG state: saved, but not a weight (count_params ignores it)


@dataclass
class K3Tree:
    """Every dataset and group of one or several (sharded) weight files, by path."""

    datasets: dict[str, h5py.Dataset] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    vars_names: dict[str, str] = field(default_factory=dict)
    # HDF5 lists members by name; their object addresses follow creation order, which is the
    # order Keras saved them in. Used to order layers and cells when there is no config.
    created: dict[str, tuple[int, int]] = field(default_factory=dict)
    bases: dict[str, tuple[str, int] | None] = field(default_factory=dict)

    def add_file(self, f: h5py.File, base: tuple[str, int] | None = None) -> None:
        """Add one weights file (or shard); `base` = (file path, offset of its HDF5 image)."""
        shard = len({k[0] for k in self.created.values()})

        def visit(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                if name not in self.datasets:
                    self.datasets[name], self.bases[name] = obj, base
            else:
                self.groups.add(name)
                self.created.setdefault(name, (shard, h5py.h5g.get_objinfo(obj.id).objno[0]))
                if name.endswith("vars") and "name" in obj.attrs:
                    self.vars_names[name] = str(decode(obj.attrs["name"]))
        f.visititems(visit)

    def children_in_saved_order(self, prefix: str) -> list[str]:
        names = self.child_names(prefix)
        start = f"{prefix}/" if prefix else ""
        return sorted(names, key=lambda n: self.created.get(start + n, (0, 0)))

    def has(self, path: str) -> bool:
        return path in self.groups or any(p.startswith(path + "/") for p in self.datasets)

    def child_names(self, prefix: str) -> list[str]:
        start = f"{prefix}/" if prefix else ""
        names = {p[len(start):].split("/", 1)[0] for p in list(self.groups) + list(self.datasets)
                 if p.startswith(start) and p != prefix}
        return sorted(names, key=natural_key)

    def vars(self, prefix: str) -> list[tuple[str, h5py.Dataset]]:
        vpath = f"{prefix}/vars" if prefix else "vars"
        items = [(p, d) for p, d in self.datasets.items() if p.startswith(vpath + "/")
                 and "/" not in p[len(vpath) + 1:]]
        return sorted(items, key=lambda item: natural_key(item[0]))

    def real_name(self, prefix: str) -> str | None:
        return self.vars_names.get(f"{prefix}/vars" if prefix else "vars")


def snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


def container_paths(prefix: str, specs: Iterable[Spec]) -> list[str]:
    """The group path Keras gives each object of a list: snake-case class name plus a counter."""
    used: dict[str, int] = {}
    out = []
    for spec in specs:
        base = snake_case(spec.class_name)
        if base in used:
            used[base] += 1
            out.append(f"{prefix}/{base}_{used[base]}")
        else:
            used[base] = 0
            out.append(f"{prefix}/{base}")
    return out


def read_tree(tree: K3Tree, root: Spec | None) -> tuple[Layer, ...]:
    """Top-level layers of a Keras 3 weights tree, matched to the config when there is one."""
    if root is None:
        return tuple(_infer(tree, f"layers/{n}", "") for n in tree.children_in_saved_order("layers"))
    if root.class_name in MODEL_CLASSES or root.children:
        return tuple(_container(tree, "layers", root))
    return (_layer(tree, "", root),)


def _container(tree: K3Tree, prefix: str, parent: Spec) -> list[Layer]:
    """A model's layers, each at the group Keras gave it (class name plus a counter)."""
    return [_layer(tree, path, spec)
            for path, spec in zip(container_paths(prefix, parent.children), parent.children)]


def _layer(tree: K3Tree, prefix: str, spec: Spec, label: str = "") -> Layer:
    """`label` prefixes weight names inside a wrapper (forward_layer/cell/kernel)."""
    trainable = bool(spec.config.get("trainable", True))
    own: list[Weight] = []
    children: list[Layer] = []
    cls = spec.class_name
    if cls in MODEL_CLASSES or (spec.children and not spec.children[0].role):
        children = _container(tree, f"{prefix}/layers", spec)
    elif cls == "Bidirectional":
        for side in spec.children:
            children.append(_layer(tree, f"{prefix}/{side.role}_layer", side, f"{label}{side.role}_layer/"))
    elif cls in RNN_LAYER_CLASSES:
        # Keras 3 keeps the variables on the cell; tf_keras's CuDNN layers have no cell.
        own = _weights(tree, f"{prefix}/cell", "recurrent", f"{label}cell/") or \
            _weights(tree, prefix, "recurrent", label)
    elif spec.children and spec.children[0].role == "layer":
        children = [_layer(tree, f"{prefix}/layer", spec.children[0], f"{label}layer/")]
    elif spec.children and spec.children[0].role.startswith("cell"):
        if spec.children[0].role == "cell":
            children = [_layer(tree, f"{prefix}/cell", spec.children[0], f"{label}cell/")]
        else:
            paths = container_paths(f"{prefix}/cell/cells", spec.children)
            children = [_layer(tree, p, s, f"{label}{p.rsplit('/', 1)[-1]}/") for p, s in zip(paths, spec.children)]
    elif cls in CELL_CLASSES:
        own = _weights(tree, prefix, "recurrent", label)
    else:
        own = _weights(tree, prefix, cls, label) + _extra_weights(tree, prefix)
    if not trainable:
        own = [replace(w, trainable=False) for w in own]
    if cls == "BatchNormalization":
        own = _batchnorm(own, spec)
    name = spec.name
    return Layer(name, cls, spec.config, trainable, tuple(own), tuple(children), spec.role,
                 input_shape=spec.input_shape, inbound=spec.inbound,
                 registered_name=spec.registered_name)


def _weights(tree: K3Tree, prefix: str, kind: str, label: str) -> list[Weight]:
    names = _VAR_NAMES.get(kind, ())
    out = []
    for i, (path, ds) in enumerate(tree.vars(prefix.lstrip("/"))):
        short = names[i] if i < len(names) else f"vars/{i}"
        out.append(h5_weight(f"{label}{short}", ds, base=tree.bases.get(path)))
    return out


def _extra_weights(tree: K3Tree, prefix: str) -> list[Weight]:
    """Variables of sub-objects of custom or unknown layers (anything but their own `vars`)."""
    prefix = prefix.lstrip("/")
    start = f"{prefix}/" if prefix else ""
    own_vars = f"{start}vars/"
    out = []
    for path in sorted(tree.datasets, key=natural_key):
        if not path.startswith(start) or path.startswith(own_vars):
            continue
        rel = path[len(start):]
        if any(part.startswith(_SKIP_PARTS) for part in rel.split("/")):
            continue
        out.append(h5_weight(rel, tree.datasets[path], base=tree.bases.get(path)))
    return out


def _batchnorm(weights: list[Weight], spec: Spec) -> list[Weight]:
    names = [n for n, on in (("gamma", spec.config.get("scale", True)),
                             ("beta", spec.config.get("center", True))) if on]
    names += ["moving_mean", "moving_variance"]
    if len(names) != len(weights):
        return weights
    return [replace(w, name=n, trainable=w.trainable and not n.startswith("moving"))
            for n, w in zip(names, weights)]


_SNAKE_TO_CLASS = {
    "lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN", "conv_lstm1d": "ConvLSTM1D",
    "conv_lstm2d": "ConvLSTM2D", "conv_lstm3d": "ConvLSTM3D", "dense": "Dense",
    "embedding": "Embedding", "dropout": "Dropout", "bidirectional": "Bidirectional",
    "time_distributed": "TimeDistributed", "batch_normalization": "BatchNormalization",
    "rnn": "RNN", "sequential": "Sequential", "functional": "Functional",
    "layer_normalization": "LayerNormalization", "cu_dnnlstm": "CuDNNLSTM", "cu_dnngru": "CuDNNGRU",
}


def _infer(tree: K3Tree, prefix: str, role: str) -> Layer:
    """A layer of a weights-only file: class from its group name, structure from its subgroups."""
    group = prefix.rsplit("/", 1)[-1]
    base = re.sub(r"_\d+$", "", group)
    name = tree.real_name(prefix) or group
    cls = _SNAKE_TO_CLASS.get(base)
    children: list[Layer] = []
    own: list[Weight] = []
    subs = tree.child_names(prefix)
    if "forward_layer" in subs and "backward_layer" in subs:
        cls = "Bidirectional"
        children = [_infer(tree, f"{prefix}/{s}_layer", s) for s in ("forward", "backward")]
    elif "layers" in subs:
        children = [_infer(tree, f"{prefix}/layers/{n}", "")
                    for n in tree.children_in_saved_order(f"{prefix}/layers")]
        cls = cls or "Functional"
    elif "cell" in subs and tree.vars(f"{prefix}/cell"):
        own = _weights(tree, f"{prefix}/cell", "recurrent", "cell/")
    elif "cell" in subs and "cells" in tree.child_names(f"{prefix}/cell"):  # RNN(StackedRNNCells)
        cls = "RNN"
        cells = []
        for sub in tree.children_in_saved_order(f"{prefix}/cell/cells"):
            cell_path = f"{prefix}/cell/cells/{sub}"
            weights = _weights(tree, cell_path, "recurrent", "")
            cells.append((tree.real_name(cell_path) or sub, infer_class(sub, weights) + "Cell", weights))
        for k, (cell_name, cell_class, weights) in enumerate(cells):
            children.append(Layer(cell_name, cell_class, None, True, tuple(weights), (), f"cell_{k}",
                                  inferred=True))
    else:
        kind = "recurrent" if cls in RNN_LAYER_CLASSES or role in ("forward", "backward") else cls or ""
        own = _weights(tree, prefix, kind, "") + _extra_weights(tree, prefix)
    if cls is None or (cls == "RNN" and not children) or role in ("forward", "backward"):
        cls = infer_class(name, own) if own else (cls or "Unknown")
    if role in ("forward", "backward") and cls in _SNAKE_TO_CLASS.values():
        name = tree.real_name(f"{prefix}/cell") and name or f"{role}_{base}"
    return Layer(name, cls, None, True, tuple(own), tuple(children), role, inferred=True)
