"""Legacy HDF5: `model.save("x.h5")` and `save_weights("x.h5")` of Keras 1.x, Keras 2.x, tf.keras and
Keras 3, plus the pre-1.0 positional layout (`nb_layers`, `layer_k/param_p`).

Weights are found by following each layer's `weight_names` attribute, never by guessing paths.
"""
from __future__ import annotations

from dataclasses import replace

import h5py

from lstm_inspect.errors import CorruptModelError, UnsupportedDialectError
from lstm_inspect.formats.keras.configs import Spec, parse_model_config
from lstm_inspect.formats.keras.hdf5 import attr_list, attr_str, h5_weight
from lstm_inspect.formats.keras.layers import infer_layer, layer_from_spec
from lstm_inspect.model import Layer, Weight


def is_legacy(f: h5py.File) -> bool:
    return ("model_config" in f.attrs or "layer_names" in f.attrs or "layer_names0" in f.attrs
            or "model_weights" in f or "nb_layers" in f.attrs)


def read_legacy(f: h5py.File, load_json, base: tuple[str, int] | None = None) -> dict:
    """Return the fields of a Model (without file/close) read from a legacy HDF5 file.

    `base` = (file path, offset of the HDF5 image in it) lets weights expose their raw extent."""
    if "nb_layers" in f.attrs and "layer_names" not in f.attrs:
        return _read_positional(f, base)
    config_text = attr_str(f, "model_config")
    weights_root = f["model_weights"] if "model_weights" in f else f
    if not isinstance(weights_root, h5py.Group):
        raise CorruptModelError("model_weights is not a group")
    layer_names = attr_list(weights_root, "layer_names")
    if layer_names is None:
        raise UnsupportedDialectError("HDF5 file without layer_names: not a Keras model or weights file")
    per_layer = {name: _layer_weights(weights_root, name, base) for name in layer_names}
    keras_version = attr_str(f, "keras_version") or attr_str(weights_root, "keras_version")
    backend = attr_str(f, "backend") or attr_str(weights_root, "backend")
    fields: dict = {"keras_version": keras_version, "backend": backend}
    if config_text is None:
        layers = tuple(infer_layer(name, ws) for name, ws in per_layer.items())
        return dict(fields, format="hdf5-weights", layers=layers, has_config=False)
    try:
        config_bytes = config_text.encode("utf-8")
    except UnicodeEncodeError as err:  # undecodable bytes, kept by h5py as surrogates
        raise CorruptModelError("model_config is not valid UTF-8 text") from err
    root = parse_model_config(load_json(config_bytes, "model_config"))
    layers = _match_specs(root, per_layer)
    return dict(fields, format="hdf5-legacy", layers=layers, has_config=True,
                name=root.name, class_name=root.class_name)


def _layer_weights(weights_root: h5py.Group, name: str, base: tuple[str, int] | None) -> list[Weight]:
    group = weights_root.get(name)
    if not isinstance(group, h5py.Group):
        raise CorruptModelError(f"layer {name!r} is listed in layer_names but has no group")
    names = attr_list(group, "weight_names") or []
    out = []
    for weight_name in names:
        ds = group.get(weight_name)
        if not isinstance(ds, h5py.Dataset):
            raise CorruptModelError(f"weight {weight_name!r} of layer {name!r} is named but missing")
        out.append(h5_weight(weight_name, ds, base=base))
    return out


def _match_specs(root: Spec, per_layer: dict[str, list[Weight]]) -> tuple[Layer, ...]:
    """Top-level config layers matched to weight groups by name; extra groups are kept, inferred."""
    specs = root.children if root.children or root.class_name in ("Sequential", "Functional", "Model") \
        else (root,)
    layers = []
    seen = set()
    for spec in specs:
        weights = per_layer.get(spec.name, [])
        seen.add(spec.name)
        layers.append(layer_from_spec(spec, weights))
    missing = [n for n in per_layer if n not in seen and n != "top_level_model_weights"]
    for name in missing:
        layers.append(infer_layer(name, per_layer[name]))
    return tuple(layers)


def _read_positional(f: h5py.File, base: tuple[str, int] | None) -> dict:
    """Keras before 1.0: root attribute nb_layers, groups layer_k with datasets param_p."""
    count = int(f.attrs["nb_layers"])
    layers = []
    for k in range(count):
        group = f.get(f"layer_{k}")
        if not isinstance(group, h5py.Group):
            raise CorruptModelError(f"layer_{k} is missing (nb_layers says {count})")
        n_params = int(group.attrs.get("nb_params", len(group)))
        weights = []
        for p in range(n_params):
            ds = group.get(f"param_{p}")
            if not isinstance(ds, h5py.Dataset):
                raise CorruptModelError(f"layer_{k}/param_{p} is missing")
            weights.append(h5_weight(f"layer_{k}/param_{p}", ds, base=base))
        layers.append(infer_layer(f"layer_{k}", _name_positional(f"layer_{k}", weights)))
    return {"format": "hdf5-positional", "layers": tuple(layers), "has_config": False,
            "keras_version": None, "backend": None}


# Before Keras 1.0 recurrent layers stored their per-gate arrays in the same order as Keras 1
# (W, U, b for each gate, gates i, c, f, o for LSTM and z, r, h for GRU); only the names were lost.
_POSITIONAL_NAMES = {
    12: [f"{k}_{g}" for g in "icfo" for k in "WUb"],
    9: [f"{k}_{g}" for g in "zrh" for k in "WUb"],
    3: ["W", "U", "b"],
}


def _name_positional(layer: str, weights: list[Weight]) -> list[Weight]:
    """Give positional params Keras 1 names when their shapes follow the W, U, b pattern."""
    names = _POSITIONAL_NAMES.get(len(weights))
    if names is None:
        return weights
    for i in range(0, len(weights), 3):
        w, u, b = (weights[i + j].shape for j in range(3))
        if not (len(w) == 2 and len(u) == 2 and u[0] == u[1] == w[1] and b == (u[0],)):
            return weights
    return [replace(w, name=f"{layer}_{n}")
            for n, w in zip(names, weights)]

