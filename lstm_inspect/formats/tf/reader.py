"""TensorFlow checkpoints and SavedModels into the neutral `Model`, without TensorFlow.

What is read: the checkpoint's index (every tensor's name, dtype and shape; values stay on disk and
are read lazily, CRC-32C checked), and for TF2 files the `_CHECKPOINTABLE_OBJECT_GRAPH` entry (one
small read of the data shard that holds it). For a SavedModel folder also `keras_metadata.pb` (the
tf_keras model config, so layers are named and configured exactly as in the `.h5`) and the meta
information and object graph of `saved_model.pb` (TensorFlow version, variable names and trainable
flags); its graph and traced functions are never parsed. For a TF1 checkpoint with a `.meta` file,
only the MetaGraphDef's leading MetaInfoDef (the TensorFlow version) is read.

Layers:
* TF1 (name-based) checkpoints: one layer per recurrent cell scope (`rnn/multi_rnn_cell/cell_0/
  basic_lstm_cell`, class from the scope name, see tf1.py); other variables grouped by their scope;
  Keras layers saved by a TF1 Saver (a `recurrent_kernel` beside the kernel) grouped as Keras layers.
* TF2 (object-based) checkpoints and SavedModels: the model's variables (objects.py) named by their
  `full_name`, grouped into Keras layers by the first name component; with `keras_metadata.pb` the
  layers come from its model config.
Optimizer state (TF1 slots such as `<var>/Adam`, `beta1_power`, `global_step`; TF2 variables behind
an `optimizer` edge) is counted in `optimizer_params`, never among the parameters.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...errors import CorruptModelError
from ...model import Framework, Layer, Weight
from ...safety import Limits, printable
from .. import protowire as pw
from ..keras.configs import MODEL_CLASSES, Spec, parse_model_config
from ..keras.layers import infer_layer, layer_from_spec
from . import objects, protos, tf1
from .bundle import Bundle, TensorEntry, open_bundle, resolve

_META_PREFIX_BYTES = 4 << 20  # the MetaInfoDef leads a .meta file; never read more than this of it


def read_tensorflow(path: Path, limits: Limits, closers: list) -> dict:
    """The Model fields of a checkpoint (by prefix, .index, data shard, folder) or a SavedModel."""
    resolved = resolve(path)
    bundle = open_bundle(resolved, limits)
    closers.append(bundle.close)
    numeric, skipped = _catalogue_entries(bundle)
    notes: list[str] = []
    if skipped:
        notes.append(_skipped_note(skipped))
    fields: dict[str, Any] = {"framework": Framework.TENSORFLOW, "has_config": False}
    if bundle.format == "v1":
        fields["format"] = "tf-checkpoint-v1"
    elif resolved.saved_model_dir:
        fields["format"] = "tf-saved-model"
    else:
        fields["format"] = "tf-checkpoint"
    if protos.OBJECT_GRAPH_KEY in bundle.entries and bundle.entries[protos.OBJECT_GRAPH_KEY].is_string:
        fields.update(_read_object_based(bundle, numeric, resolved.saved_model_dir, limits, notes))
    else:
        fields.update(_read_name_based(bundle, numeric, notes))
        fields["producer"] = _meta_version(resolved.prefix, limits) if resolved.prefix else None
    if resolved.via == "checkpoint-state":
        notes.append(f"the `checkpoint` file names {os.path.basename(resolved.index_path)[:-6]} as the latest "
                     "checkpoint: that one is read")
    fields["notes"] = tuple(notes) + tuple(fields.get("notes", ()))
    return fields


# ----------------------------------------------------------------------------------------- entries
def _catalogue_entries(bundle: Bundle) -> tuple[dict[str, TensorEntry], dict[str, list[str]]]:
    """Numeric entries by name; the others (strings, resources, unknown dtypes) by dtype."""
    numeric: dict[str, TensorEntry] = {}
    skipped: dict[str, list[str]] = {}
    for name, entry in bundle.entries.items():
        if entry.is_numeric:
            numeric[name] = entry
        elif name != protos.OBJECT_GRAPH_KEY:
            skipped.setdefault(entry.dtype, []).append(name)
    return numeric, skipped


def _skipped_note(skipped: Mapping[str, list[str]]) -> str:
    parts = []
    for dtype, names in skipped.items():
        shown = ", ".join(printable(n, 120) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        parts.append(f"{len(names)} {dtype} tensor(s) ({shown})")
    return "skipped, not parameters: " + "; ".join(parts)


def _weight(bundle: Bundle, key: str, name: str, trainable: bool = True) -> Weight:
    entry = bundle.entries[key]

    def read(selection: Any = Ellipsis, _key: str = key) -> Any:
        return bundle.read(_key, selection)
    # No `extent`: every value goes through Bundle.read, which checks the tensor's CRC-32C.
    return Weight(name=name, shape=entry.shape, dtype=entry.dtype, trainable=trainable, location=key, _read=read)


# ----------------------------------------------------------------------------------------- TF1
def _read_name_based(bundle: Bundle, numeric: Mapping[str, TensorEntry], notes: list[str]) -> dict:
    variables = {name: tf1.Variable(name, entry.shape) for name, entry in numeric.items()}
    optimizer, slots = tf1.optimizer_state(variables)
    opt = set(optimizer)
    model_names = [n for n in variables if n not in opt]
    grouping = tf1.group(variables, model_names)
    duplicates, cudnn_notes = tf1.cudnn_opaque(model_names, grouping.cells, variables)
    notes += grouping.notes + cudnn_notes
    layers = _tf1_layers(bundle, grouping, set(duplicates))
    if optimizer:
        notes.append(_optimizer_note(len(optimizer), sum(numeric[n].num_elements for n in optimizer), slots))
    return {"layers": tuple(layers),
            "optimizer_params": sum(numeric[n].num_elements for n in optimizer)}


def _optimizer_note(count: int, values: int, slots: Sequence[str]) -> str:
    what = f" (slots {', '.join(slots[:8])}{', ...' if len(slots) > 8 else ''})" if slots else ""
    return f"{count} optimizer variables{what}: {values:,} values of training state, not counted as parameters"


def _tf1_layers(bundle: Bundle, grouping: tf1.Grouping, duplicates: set[str]) -> list[Layer]:
    cells = {c.scope: c for c in grouping.cells}
    keras_scopes = _keras_scopes(grouping.groups)
    layers: list[Layer] = []
    keras_groups: dict[str, list[Weight]] = OrderedDict()
    for kind, scope in grouping.order:
        if kind == "cell":
            cell = cells[scope]
            weights = tuple(_weight(bundle, name, name) for name in cell.roles.values())
            layers.append(Layer(scope, cell.class_name, None, True, weights, inferred=True))
            continue
        names = [n for n in grouping.groups[scope] if n not in duplicates]
        if not names:
            continue
        if scope in keras_scopes:  # a Keras layer saved by a TF1 Saver: `lstm/kernel`, `lstm/recurrent_kernel`
            top = scope.split("/", 1)[0]
            if top not in keras_groups:
                keras_groups[top] = []
                layers.append(Layer(top, "", None))  # placeholder, filled below (keeps the order)
            keras_groups[top].extend(_weight(bundle, n, n) for n in names)
            continue
        layers.append(_plain_layer(bundle, scope, names))
    return [infer_layer(layer.name, _keras_order(keras_groups[layer.name])) if not layer.class_name else layer
            for layer in layers]


_KERAS_ORDER = {name: k for k, name in enumerate(
    ("embeddings", "kernel", "recurrent_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"))}


def _keras_order(weights: list[Weight]) -> list[Weight]:
    """A TF1 index lists names alphabetically (bias before kernel); Keras's own order where known."""
    return sorted(weights, key=lambda w: _KERAS_ORDER.get(w.short_name, len(_KERAS_ORDER)))


def _keras_scopes(groups: Mapping[str, list[str]]) -> set[str]:
    """Scopes of Keras recurrent layers (a recurrent_kernel among their variables), and the other
    scopes of the same top-level Keras layer (a Bidirectional's two sides)."""
    tops = {scope.split("/", 1)[0] for scope, names in groups.items()
            if any(n.rsplit("/", 1)[-1] == "recurrent_kernel" for n in names)}
    return {scope for scope in groups if scope.split("/", 1)[0] in tops}


def _plain_layer(bundle: Bundle, scope: str, names: Sequence[str]) -> Layer:
    """Variables that are not a recurrent cell, grouped by scope; a class when the names tell."""
    weights = tuple(_keras_order([_weight(bundle, n, n) for n in names]))
    inferred = infer_layer(scope, weights)
    cls = inferred.class_name if not inferred.class_name.startswith("Unknown") and not inferred.children \
        else "Variables"
    return Layer(scope, cls, None, True, weights, inferred=True)


def _meta_version(prefix: str, limits: Limits) -> str | None:
    """The TensorFlow version in the MetaInfoDef that leads `PREFIX.meta` (field 1 of a MetaGraphDef is
    written first): the field's header, then that field alone (the graph after it is never read)."""
    path = prefix + ".meta"
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if len(head) < 2 or head[0] != 0x0A:  # field 1, length-delimited
                return None
            length, start = pw.read_varint(memoryview(head), 1, len(head))
            if length > min(_META_PREFIX_BYTES, limits.max_file_bytes):
                return None
            fh.seek(start)
            info = pw.parse(fh.read(length))
        version = pw.as_str(pw.first(info, 5)).strip()
        return f"TensorFlow {printable(version, 80)}" if version else None
    except (OSError, pw.ProtoError, UnicodeDecodeError):
        return None  # a damaged .meta only costs the version, never the checkpoint


# ----------------------------------------------------------------------------------------- TF2
def _read_object_based(bundle: Bundle, numeric: Mapping[str, TensorEntry], saved_model_dir: str | None,
                       limits: Limits, notes: list[str]) -> dict:
    fields: dict[str, Any] = {}
    saved = _saved_model_facts(saved_model_dir, limits) if saved_model_dir else None
    listing = _catalogue(bundle, numeric, saved["names"] if saved else {}, limits)
    notes += listing.notes
    trainable = saved["trainable"] if saved else {}
    weights = [_weight(bundle, v.key, v.name, trainable.get(v.node, True)) for v in listing.model]
    config = _keras_config(saved_model_dir, limits) if saved_model_dir else None
    if config is not None:
        root, keras_version, backend = config
        fields.update(has_config=True, keras_version=keras_version, backend=backend,
                      name=root.name, class_name=root.class_name)
        layers = _layers_from_config(root, weights)
    else:
        layers = _layers_from_names(weights)
    opt_values = sum(numeric[k].num_elements for k in listing.optimizer)
    if listing.optimizer:
        notes.append(_optimizer_note(len(listing.optimizer), opt_values, ()))
    if listing.other:
        shown = ", ".join(printable(v.name, 80) for v in listing.other[:6]) + (", ..." if len(listing.other) > 6 else "")
        values = sum(numeric[v.key].num_elements for v in listing.other)
        notes.append(f"{len(listing.other)} other variables not counted as parameters ({values:,} values: "
                     f"{shown})")
    if saved and saved["version"]:
        fields["producer"] = f"TensorFlow {printable(saved['version'], 80)}"
    fields.update(layers=tuple(layers), optimizer_params=opt_values)
    notes.append("object-based (TF2) checkpoint: variables named by the object graph's full_name")
    return fields


def _catalogue(bundle: Bundle, numeric: Mapping[str, TensorEntry], names: Mapping[int, str],
               limits: Limits) -> objects.Catalogue:
    """The variables by kind; the object graph itself is dropped on return (it can be large)."""
    raw = bundle.read_strings(protos.OBJECT_GRAPH_KEY)
    if len(raw) != 1:
        raise CorruptModelError(f"{protos.OBJECT_GRAPH_KEY} is not a single string")
    graph = protos.parse_trackable_object_graph(raw[0], limits)
    return objects.catalogue(graph, lambda key: _signature(numeric, key), names)


def _signature(numeric: Mapping[str, TensorEntry], key: str) -> tuple | None:
    entry = numeric.get(key)
    return None if entry is None else (entry.shape, entry.dtype)


def _saved_model_facts(folder: str, limits: Limits) -> dict | None:
    """TensorFlow version, and per object-graph node the SavedVariable's name and trainable flag.
    None when saved_model.pb is absent (it is not needed to read the weights)."""
    if not os.path.isfile(os.path.join(folder, "saved_model.pb")):
        return None
    model = protos.read_saved_model(folder, limits)
    if not model.meta_graphs:
        return {"version": None, "names": {}, "trainable": {}}
    meta = model.meta_graphs[0]
    names, trainable = {}, {}
    for node, obj in enumerate(meta.object_graph.nodes if meta.object_graph else ()):
        if obj.variable is not None:
            names[node] = obj.variable.name
            trainable[node] = obj.variable.trainable
    return {"version": meta.tensorflow_version or None, "names": names, "trainable": trainable}


def _keras_config(folder: str, limits: Limits) -> tuple[Spec, str | None, str | None] | None:
    """The model config tf_keras wrote into keras_metadata.pb (root node), `__tuple__`s unwrapped."""
    metadata = protos.read_keras_metadata(folder, limits)
    if not metadata:
        return None
    root = next((m for m in metadata if m.node_path == "root"), None)
    if root is None:
        return None
    data = root.metadata_json(limits)
    if not isinstance(data, dict):
        raise CorruptModelError("keras_metadata.pb: the root's metadata is not a JSON object")
    config = data.get("model_config") if isinstance(data.get("model_config"), dict) else data
    if not isinstance(config.get("class_name"), str):
        return None
    spec = parse_model_config(untuple(config))
    version, backend = data.get("keras_version"), data.get("backend")
    return spec, str(version) if version is not None else None, str(backend) if backend is not None else None


def untuple(value: Any) -> Any:
    """tf_keras's JSON writes tuples as {"class_name": "__tuple__", "items": [...]}: back to lists."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and isinstance(value.get("items"), list) and len(value) == 2:
            return [untuple(v) for v in value["items"]]
        return {k: untuple(v) for k, v in value.items()}
    if isinstance(value, list):
        return [untuple(v) for v in value]
    return value


def _layers_from_config(root: Spec, weights: Sequence[Weight]) -> list[Layer]:
    """Weights onto the config's layers by layer name (the first name component naming a layer)."""
    specs = root.children if root.children or root.class_name in MODEL_CLASSES else (root,)
    by_name = {s.name: s for s in specs}
    per_layer: dict[str, list[Weight]] = {s.name: [] for s in specs}
    leftover: dict[str, list[Weight]] = OrderedDict()
    for w in weights:
        owner = next((part for part in w.name.split("/") if part in by_name), None)
        if owner is not None:
            per_layer[owner].append(w)
        else:
            leftover.setdefault(w.name.split("/", 1)[0], []).append(w)
    layers = [layer_from_spec(spec, per_layer[spec.name]) for spec in specs]
    return layers + [infer_layer(name, ws) for name, ws in leftover.items()]


def _layers_from_names(weights: Sequence[Weight]) -> list[Layer]:
    """No config: TF1 cells by scope (a tf.compat.v1 cell tracked in a TF2 object), then Keras layers
    by the first component of the variable names (after a model name all share, Keras 3 Sequential)."""
    grouping = None
    if tf1.may_hold_cells(w.name for w in weights):
        variables = {w.name: tf1.Variable(w.name, w.shape) for w in weights}
        grouping = tf1.group(variables, [w.name for w in weights]) if len(variables) == len(weights) else None
    cells = {c.scope: c for c in grouping.cells} if grouping else {}
    by_name = {w.name: w for w in weights}
    in_cell = {n for c in cells.values() for n in c.roles.values()}
    groups = _keras_groups([w for w in weights if w.name not in in_cell])
    group_of = {id(x): name for name, ws in groups.items() for x in ws}
    cell_of = {n: scope for scope, c in cells.items() for n in c.roles.values()}
    layers: list[Layer] = []
    emitted: set[str] = set()
    for w in weights:
        if w.name in in_cell:
            scope = cell_of[w.name]
            if scope not in emitted:
                emitted.add(scope)
                cell = cells[scope]
                layers.append(Layer(scope, cell.class_name, None, True,
                                    tuple(by_name[n] for n in cell.roles.values()), inferred=True))
            continue
        top = group_of[id(w)]
        if top not in emitted:
            emitted.add(top)
            members = groups[top]
            if len(members) == 1 and "/" not in members[0].name:  # a lone variable (tf.Module attribute)
                layers.append(Layer(top, "Variables", None, True, (members[0],), inferred=True))
            else:
                layers.append(infer_layer(top, members))
    return layers


def _keras_groups(weights: Sequence[Weight]) -> "OrderedDict[str, list[Weight]]":
    groups: OrderedDict[str, list[Weight]] = OrderedDict()
    for w in weights:
        groups.setdefault(w.name.split("/", 1)[0], []).append(w)
    if len(groups) == 1 and all(w.name.count("/") >= 2 for w in weights):
        inner: OrderedDict[str, list[Weight]] = OrderedDict()
        for w in weights:
            inner.setdefault(w.name.split("/")[1], []).append(w)
        sides = all(name.startswith(("forward_", "backward_")) for name in inner)
        if len(inner) > 1 and not sides:  # `sequential/lstm/...`: the model's name leads every path
            return inner
    return groups
