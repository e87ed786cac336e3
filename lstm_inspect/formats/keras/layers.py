"""Putting a layer's flat weight list onto its config tree, or inferring the tree from weight names
and shapes when a file has no config (Keras weights-only files)."""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Sequence

from lstm_inspect.formats.keras.configs import Spec
from lstm_inspect.model import Layer, Weight, strip_tf_suffix


# --- putting weights onto a config tree -------------------------------------------------------

def layer_from_spec(spec: Spec, weights: Sequence[Weight], trainable: bool = True) -> Layer:
    """Distribute a top-level layer's flat weight list over its spec tree, by name, then by order."""
    trainable = trainable and bool(spec.config.get("trainable", True))
    weights = [w if trainable else _frozen(w) for w in weights]
    if not spec.children:
        return Layer(spec.name, spec.class_name, spec.config, trainable, tuple(weights), (), spec.role,
                     input_shape=spec.input_shape, inbound=spec.inbound,
                 registered_name=spec.registered_name)
    buckets: dict[int, list[Weight]] = {i: [] for i in range(len(spec.children))}
    unmatched: list[Weight] = []
    for w in weights:
        idx = _match_child(spec, w)
        (buckets[idx] if idx is not None else unmatched).append(w)
    if unmatched:
        if all(not b for b in buckets.values()) and len(unmatched) % len(spec.children) == 0:
            per = len(unmatched) // len(spec.children)  # positional: same-shaped children in order
            for i in buckets:
                buckets[i] = unmatched[i * per:(i + 1) * per]
            unmatched = []
    children = tuple(layer_from_spec(c, buckets[i], trainable) for i, c in enumerate(spec.children))
    return Layer(spec.name, spec.class_name, spec.config, trainable, tuple(unmatched), children, spec.role,
                 input_shape=spec.input_shape, inbound=spec.inbound,
                 registered_name=spec.registered_name)


def _frozen(w: Weight) -> Weight:
    return replace(w, trainable=False)


def _match_child(spec: Spec, weight: Weight) -> int | None:
    if len(spec.children) == 1:
        return 0
    parts = strip_tf_suffix(weight.name).split("/")
    for i, child in enumerate(spec.children):
        if child.name in parts:
            return i
    if spec.class_name == "Bidirectional":
        for part in parts:
            for side in ("forward", "backward"):
                if part.startswith(side):
                    return next(i for i, c in enumerate(spec.children) if c.role == side)
    return None


# --- inferring layers from weight names and shapes (files without a config) -------------------

_KERAS1_LSTM = re.compile(r"^(?P<prefix>.*?)_?(?P<kind>[WUb])_(?P<gate>[icfo])$")
_KERAS1_GRU = re.compile(r"^(?P<prefix>.*?)_?(?P<kind>[WUb])_(?P<gate>[zrh])$")


def infer_layer(name: str, weights: Sequence[Weight], role: str = "") -> Layer:
    """Guess a layer's class and structure (Bidirectional sides, nested model, stacked cells)
    from its weight names and shapes."""
    owners = _owners(name, weights)
    if len(owners) > 1 or (owners and next(iter(owners)) != name):
        children = tuple(infer_layer(owner, ws) for owner, ws in owners.items())
        return Layer(name, "Functional", None, True, (), children, role, inferred=True)
    cells = _stacked_cells(weights)
    if cells:
        children = tuple(Layer(cell, infer_class(cell, ws) + "Cell", None, True, tuple(ws), (),
                               f"cell_{k}", inferred=True) for k, (cell, ws) in enumerate(cells.items()))
        return Layer(name, "RNN", None, True, (), children, role, inferred=True)
    sides = _split_sides(weights)
    if sides:
        children = tuple(_infer_leaf(f"{role}_{name}", ws, role) for role, ws in sides)
        inner = children[0].class_name
        return Layer(name, "Bidirectional", {"layer": {"class_name": inner}}, True, (), children,
                     inferred=True)
    return _infer_leaf(name, weights, "")


def _owners(name: str, weights: Sequence[Weight]) -> dict[str, list[Weight]]:
    """Weights grouped by the layer their name starts with (a nested model lists its layers' weights).

    A leading model-name component (Keras 3 variable paths: `sequential/lstm/...`) is skipped.
    """
    owners: dict[str, list[Weight]] = {}
    for w in weights:
        parts = strip_tf_suffix(w.name).split("/")
        if len(parts) < 2:
            return {}
        if parts[0] != name and len(parts) > 2 and parts[1] == name:
            parts = parts[1:]
        owners.setdefault(parts[0], []).append(w)
    if len(owners) == 1 and next(iter(owners)).startswith(("forward", "backward")):
        return {}
    return owners


def _stacked_cells(weights: Sequence[Weight]) -> dict[str, list[Weight]]:
    """`<rnn>/stacked_rnn_cells/<cell>/kernel:0`: weights grouped by cell, in file order."""
    cells: dict[str, list[Weight]] = {}
    for w in weights:
        parts = strip_tf_suffix(w.name).split("/")
        idx = next((i for i, p in enumerate(parts) if p.startswith("stacked_rnn_cells")), None)
        if idx is None or idx + 2 >= len(parts):
            return {}
        cells.setdefault(parts[idx + 1], []).append(w)
    return cells


def _split_sides(weights: Sequence[Weight]) -> list[tuple[str, list[Weight]]] | None:
    sides: dict[str, list[Weight]] = {"forward": [], "backward": []}
    for w in weights:
        parts = strip_tf_suffix(w.name).split("/")
        side = next((s for p in parts for s in sides if p.startswith(s)), None)
        if side is None:
            return None
        sides[side].append(w)
    if not sides["forward"] or not sides["backward"]:
        return None
    return list(sides.items())


def _infer_leaf(name: str, weights: Sequence[Weight], role: str) -> Layer:
    class_name = infer_class(name, weights)
    return Layer(name, class_name, None, True, tuple(weights), (), role, inferred=True)


def infer_class(name: str, weights: Sequence[Weight]) -> str:
    shorts = [w.short_name for w in weights]
    if any(_KERAS1_LSTM.match(s) for s in shorts) and any(s.endswith("_f") for s in shorts):
        return "LSTM"
    if any(_KERAS1_GRU.match(s) for s in shorts) and any(s.endswith("_z") for s in shorts):
        return "GRU"
    by_short = {s: w for s, w in zip(shorts, weights)}
    kernel = by_short.get("kernel")
    recurrent = by_short.get("recurrent_kernel")
    bias = by_short.get("bias")
    if recurrent is None and len(weights) in (2, 3) and shorts[0].endswith("W") and shorts[1].endswith("U"):
        return "SimpleRNN"  # Keras 1: <name>_W, <name>_U, <name>_b
    if kernel is not None and recurrent is not None:
        if len(kernel.shape) > 2:
            return f"ConvLSTM{len(kernel.shape) - 2}D"
        units = recurrent.shape[0]
        gates = recurrent.shape[-1] // units if units else 0
        if bias is not None and bias.shape == (8 * units,) and gates == 4:
            return "CuDNNLSTM"
        if bias is not None and bias.shape == (6 * units,) and gates == 3:
            return "CuDNNGRU"
        return {4: "LSTM", 3: "GRU", 1: "SimpleRNN"}.get(gates, "RNN")
    if "embeddings" in by_short:
        return "Embedding"
    if "moving_mean" in by_short:
        return "BatchNormalization"
    if kernel is not None:
        return "Dense" if len(kernel.shape) == 2 else f"Conv{len(kernel.shape) - 2}D"
    if {"W", "b"} <= {s.rsplit("_", 1)[-1] for s in shorts} and len(weights) == 2:
        return "Dense"  # Keras 1 <name>_W, <name>_b
    return "Unknown" if weights else "Unknown (no weights)"


def natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
