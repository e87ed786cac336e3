"""Comparing lstm-inspect's output with the zoo's Keras truth (shared by the zoo tests)."""
from __future__ import annotations

from collections import Counter

DIRECTION_KEYS = ("kind", "units", "input_dim", "blocks", "params", "gates")
CONFIG_KEYS = ("class", "return_sequences", "return_state", "stateful", "go_backwards", "activation",
               "recurrent_activation", "use_bias")


def names_recoverable(summary: dict, entry: dict) -> bool:
    """Files without a config lose layer names only where Keras did not store them (tf_keras .weights.h5)."""
    return summary["has_config"] or summary["format"] == "hdf5-weights" or entry["framework"] == "keras3"


def _signature(d: dict) -> tuple:
    return tuple((k, repr(sorted(d[k].items()) if isinstance(d[k], dict) else d[k])) for k in DIRECTION_KEYS)


def problems(summary: dict, entry: dict) -> list[str]:
    out = []
    if summary["total_params"] != entry["total_params"]:
        out.append(f"total {summary['total_params']} != Keras {entry['total_params']}")
    if summary["has_config"]:
        for key in ("trainable_params", "non_trainable_params"):
            if summary[key] != entry[key]:
                out.append(f"{key} {summary[key]} != Keras {entry[key]}")
    ours = {d["path"]: d for d in summary["recurrent"]}
    if len(ours) != len(entry["recurrent"]):
        out.append(f"directions {sorted(ours)} != Keras {[d['path'] for d in entry['recurrent']]}")
    if not names_recoverable(summary, entry):
        mine = Counter(_signature(d) for d in summary["recurrent"])
        theirs = Counter(_signature(d) for d in entry["recurrent"])
        if mine != theirs:
            out.append(f"recurrent directions differ: {mine - theirs} vs {theirs - mine}")
        params = Counter(layer["params"] for layer in summary["layers"] if layer["params"])
        if params != Counter(layer["params"] for layer in entry["layers"] if layer["params"]):
            out.append("per-layer params differ")
        return out
    layers = {layer["name"]: layer for layer in summary["layers"]}
    for layer in entry["layers"]:
        mine = layers.get(layer["name"])
        if mine is None:
            out.append(f"layer {layer['name']} missing")
        elif mine["params"] != layer["params"]:
            out.append(f"layer {layer['name']}: params {mine['params']} != Keras {layer['params']}")
    for d in entry["recurrent"]:
        mine = ours.get(d["path"])
        if mine is None:
            out.append(f"direction {d['path']} missing")
            continue
        keys = DIRECTION_KEYS + (CONFIG_KEYS if summary["has_config"] else ())
        out += [f"{d['path']}.{k}: {mine[k]!r} != Keras {d[k]!r}" for k in keys if mine[k] != d[k]]
        if summary["has_config"]:
            out += _shape_problems(mine, d)
        unknowable = mine["reset_after"] is None and not mine["use_bias"] and not summary["has_config"]
        if d["kind"] == "GRU" and mine["reset_after"] != d["reset_after"] and not unknowable:
            out.append(f"{d['path']}.reset_after: {mine['reset_after']} != Keras {d['reset_after']}")
    return out


def _shape_problems(mine: dict, truth: dict) -> list[str]:
    expected = truth["output_shape"]
    if truth["return_state"]:  # Keras gives [output, h(, c)]
        expected, states = expected[0], expected[1:]
        if mine["state_shapes"] != states:
            return [f"{truth['path']}.state_shapes: {mine['state_shapes']} != Keras {states}"]
    if mine["output_shape"] != expected:
        return [f"{truth['path']}.output_shape: {mine['output_shape']} != Keras {expected}"]
    return []
