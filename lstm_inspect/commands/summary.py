"""The summary as plain data: the JSON contract of `summary --format json`, also used by the other
renderers and by snapshot/check. Built from the neutral model; reads no weight values."""
from __future__ import annotations

from collections import Counter
from typing import Any

from lstm_inspect.cells import Direction, directions
from lstm_inspect.cells.quant import direction_storage
from lstm_inspect.model import Layer, Model

SCHEMA_VERSION = 1


def summarize(model: Model, dirs: list[Direction] | None = None) -> dict[str, Any]:
    dirs = directions(model) if dirs is None else dirs
    total = model.total_params
    trainable = model.trainable_params
    by_dtype: Counter[str] = Counter()
    for w in model.all_weights():
        by_dtype[w.dtype] += w.nbytes
    return {
        "file": model.file,
        "format": model.format,
        "framework": model.framework.value,
        "keras_version": model.keras_version,
        "backend": model.backend,
        "model_name": model.name,
        "model_class": model.class_name,
        "has_config": model.has_config,
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "bytes_by_dtype": dict(sorted(by_dtype.items())),
        "total_bytes": sum(by_dtype.values()),
        "layers": [layer_dict(layer) for layer in model.layers],
        "recurrent": [direction_dict(d) for d in dirs],
        "notes": list(model.notes) + code_notes(model.layers),
        **_stated(producer=model.producer, optimizer_params=model.optimizer_params or None),
        # what only this format states (TFLite: operators, fused or not, stored constants, parameter counts)
        **({model.framework.value: dict(model.format_facts)} if model.format_facts else {}),
    }


_CODE_CLASSES = frozenset({"Lambda", "TFOpLambda", "SlicingOpLambda"})


def code_notes(layers, prefix: str = "") -> list[str]:
    """Layers whose config carries Python code or names a custom class: reported, never loaded."""
    notes = []
    for layer in layers:
        where = f"{prefix}{layer.name}"
        config = layer.config or {}
        custom = layer.registered_name or config.get("registered_name")
        if layer.class_name in _CODE_CLASSES or "function" in config:
            notes.append(f"layer {where} ({layer.class_name}) contains serialized Python code: not executed")
        elif isinstance(custom, str) and custom not in ("", layer.class_name):
            notes.append(f"layer {where} uses the custom class {custom}: not loaded")
        notes += code_notes(layer.children, f"{where}/")
    return notes


def layer_dict(layer: Layer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": layer.name,
        "class": layer.class_name,
        "params": layer.params,
        "trainable": layer.trainable,
        "inferred": layer.inferred,
        "weights": [{"name": w.name, "shape": list(w.shape), "dtype": w.dtype, "trainable": w.trainable}
                    for w in layer.all_weights()],
    }
    nested = [c for c in layer.children if not c.role]
    if nested:
        out["layers"] = [layer_dict(c) for c in nested]
    return out


def direction_dict(d: Direction) -> dict[str, Any]:
    gate_params = {g: sum(b.size for b in d.blocks if b.name.endswith(f"_{g}")) for g in d.gates}
    return {
        "path": d.path,
        "kind": d.kind.value,
        "class": d.class_name,
        "units": d.units,
        "input_dim": d.input_dim,
        "gates": list(d.gates),
        "params": d.params,
        "gate_params": gate_params,
        "blocks": {b.name: list(b.shape) for b in d.blocks},
        "block_params": {b.name: b.size for b in d.blocks},
        "kernel_size": list(d.kernel_size) if d.kernel_size else None,
        "use_bias": d.use_bias,
        "reset_after": d.reset_after,
        "activation": d.activation,
        "recurrent_activation": d.recurrent_activation,
        "return_sequences": d.return_sequences,
        "return_state": d.return_state,
        "stateful": d.stateful,
        "go_backwards": d.go_backwards,
        "output_shape": list(d.output_shape) if d.output_shape is not None else None,
        "state_shapes": [list(s) for s in d.state_shapes] if d.state_shapes is not None else None,
        "layout": "keras (x @ W): W (input_dim, units), U (units, units), b (units,)",
        "corrections": list(d.corrections),
        "notes": list(d.notes),
        **_stated(projection_size=d.projection_size, forget_bias=d.forget_bias, cell_clip=d.cell_clip,
                  proj_clip=d.proj_clip, gate_clip=d.gate_clip, quantization=direction_storage(d)),
    }


def _stated(**fields: Any) -> dict[str, Any]:
    """Fields other frameworks fill, present only when the file states them (Keras files never do)."""
    return {k: v for k, v in fields.items() if v is not None}
