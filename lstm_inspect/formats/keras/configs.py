"""Model configs of every Keras dialect, normalised into one tree of layer specs.

Dialects: Keras 1 and standalone Keras 2.0-2.2 Sequential (`config` is a list of layers), Keras 1
functional `Model`, tf.keras / Keras 2.2.3+ (`{"name", "layers": [...]}`), Keras 3 (plus `module`,
`registered_name`, `build_config`). Wrappers and nested models become children with a role.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from lstm_inspect.errors import CorruptModelError

MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
RNN_LAYER_CLASSES = frozenset({"LSTM", "GRU", "SimpleRNN", "CuDNNLSTM", "CuDNNGRU",
                               "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})
CELL_CLASSES = frozenset({"LSTMCell", "GRUCell", "SimpleRNNCell",
                          "ConvLSTMCell", "ConvLSTM1DCell", "ConvLSTM2DCell", "ConvLSTM3DCell",
                          "PeepholeLSTMCell"})
# Keras 1 wrote these classes under other names; Keras 1 `SimpleRNN` kept its name.
_KERAS1_CLASS_ALIASES = {"Merge": "Merge"}


@dataclass(frozen=True)
class Spec:
    """A layer as its config describes it."""

    name: str
    class_name: str
    config: Mapping[str, Any]
    children: tuple["Spec", ...] = ()
    role: str = ""
    input_shape: tuple[int | None, ...] | None = field(default=None, compare=False)
    inbound: tuple[str, int] | None = None  # functional graph: (source layer, tensor index)
    registered_name: str | None = None  # Keras 3: a custom (user-registered) class, e.g. "Custom>MyGate"


_BOOL_KEYS = ("trainable", "return_sequences", "return_state", "stateful", "go_backwards", "use_bias",
              "reset_after", "unroll", "time_major", "center", "scale")
_POSITIVE_INT_KEYS = ("units", "output_dim", "filters")
_INT_TUPLE_KEYS = ("kernel_size", "strides", "dilation_rate")
_TEXT_KEYS = ("padding", "data_format", "merge_mode", "consume_less")
_ACTIVATION_KEYS = ("activation", "recurrent_activation", "inner_activation")


def validate_layer_config(config: Mapping, where: str) -> None:
    """Type-check every config value lstm-inspect uses, before it is used (files are untrusted)."""
    def bad(key: str, expected: str) -> CorruptModelError:
        shown = repr(config[key])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return CorruptModelError(f"{where}: config value {key} must be {expected}, not {shown}")

    for key in _BOOL_KEYS:
        if key in config and not isinstance(config[key], bool) and config[key] not in (0, 1):
            raise bad(key, "true or false")
    for key in _POSITIVE_INT_KEYS:
        value = config.get(key)
        if key in config and value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                                     or value <= 0 or value > 2**31):
            raise bad(key, "a positive integer")
    for key in _INT_TUPLE_KEYS:
        value = config.get(key)
        items = value if isinstance(value, list) else [value]
        if key in config and not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31
                                     for v in items):
            raise bad(key, "a positive integer or a list of them")
    for key in _TEXT_KEYS:
        if key in config and config[key] is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    for key in _ACTIVATION_KEYS:
        if key in config and config[key] is not None and not isinstance(config[key], (str, Mapping)):
            raise bad(key, "an activation name")


def class_and_config(entry: Any, where: str) -> tuple[str, dict]:
    if not isinstance(entry, Mapping):
        raise CorruptModelError(f"{where}: a layer entry is not an object")
    class_name = entry.get("class_name")
    config = entry.get("config", {})
    if not isinstance(class_name, str) or not class_name:
        raise CorruptModelError(f"{where}: a layer entry has no class_name")
    if not isinstance(config, (Mapping, list)):
        raise CorruptModelError(f"{where}: layer {class_name} has a config that is not an object")
    return class_name, config  # type: ignore[return-value]


def parse_model_config(root: Any) -> Spec:
    """The whole model config (`model_config` attribute or `config.json`) to a Spec tree."""
    class_name, config = class_and_config(root, "model config")
    return _spec(root, class_name, config, role="", where="model config")


def _layer_entries(config: Any) -> list:
    if isinstance(config, list):  # Keras 1 / Keras 2.0-2.2 Sequential
        return config
    layers = config.get("layers", [])
    if not isinstance(layers, list):
        raise CorruptModelError("model config: 'layers' is not a list")
    return layers


def _name_of(entry: Mapping, config: Any, fallback: str) -> str:
    name = config.get("name") if isinstance(config, Mapping) else None
    name = name or entry.get("name") or fallback
    if not isinstance(name, str):
        raise CorruptModelError(f"model config: a layer name is not a string ({repr(name)[:40]})")
    return name


def _spec(entry: Mapping, class_name: str, config: Any, role: str, where: str,
          name: str | None = None) -> Spec:
    name = name or _name_of(entry, config, class_name.lower())
    if class_name in MODEL_CLASSES or (isinstance(config, Mapping) and "layers" in config
                                       and class_name not in RNN_LAYER_CLASSES):
        children = []
        for i, child in enumerate(_layer_entries(config)):
            c_class, c_config = class_and_config(child, f"{where}/{name}")
            children.append(_spec(child, c_class, c_config, "", f"{where}/{name}",
                                  name=_name_of(child, c_config, f"layer_{i}")))
        if class_name == "Sequential":
            children = _without_input_layer(children)
        cfg = config if isinstance(config, Mapping) else {"layers": config}
        return Spec(name, class_name, cfg, tuple(children), role, _input_shape(entry, cfg),
                    _inbound(entry), _registered_name(entry))
    if not isinstance(config, Mapping):
        raise CorruptModelError(f"{where}: layer {name} has a config that is not an object")
    validate_layer_config(config, f"layer {name}")
    return Spec(name, class_name, config, tuple(_wrapped(class_name, config, name, where)), role,
                _input_shape(entry, config), _inbound(entry), _registered_name(entry))


def _without_input_layer(children: list[Spec]) -> list[Spec]:
    """Keras does not count a Sequential's InputLayer among its layers (nor saves it); its shape
    becomes the first layer's input shape."""
    if not children or children[0].class_name != "InputLayer":
        return children
    first, rest = children[0], children[1:]
    if rest and first.input_shape is not None:
        own = rest[0].input_shape
        if own is None or len(own) != len(first.input_shape):
            own = first.input_shape
        else:  # a layer's own batch_input_shape may leave dims open that the InputLayer fixes
            own = tuple(a if a is not None else b for a, b in zip(own, first.input_shape))
        rest[0] = replace(rest[0], input_shape=own)
    return rest


def _wrapped(class_name: str, config: Mapping, name: str, where: str) -> list[Spec]:
    """Children of wrappers: Bidirectional sides, TimeDistributed's layer, RNN cells."""
    if class_name == "Bidirectional":
        inner_class, inner = class_and_config(config.get("layer"), f"{where}/{name}")
        if not isinstance(inner, Mapping):
            raise CorruptModelError(f"{where}/{name}: the wrapped layer's config is not an object")
        inner_name = _name_of({}, inner, inner_class.lower())
        forward = _spec(config["layer"], inner_class, inner, "forward", where,
                        name=f"forward_{inner_name}")
        back_entry = config.get("backward_layer")
        if isinstance(back_entry, Mapping):
            b_class, b_config = class_and_config(back_entry, f"{where}/{name}")
            if not isinstance(b_config, Mapping):
                raise CorruptModelError(f"{where}/{name}: the backward layer's config is not an object")
            backward = _spec(back_entry, b_class, b_config, "backward", where,
                             name=_name_of({}, b_config, f"backward_{inner_name}"))
        else:
            b_config = dict(inner, go_backwards=not inner.get("go_backwards", False))
            backward = _spec(config["layer"], inner_class, b_config, "backward", where,
                             name=f"backward_{inner_name}")
        return [forward, backward]
    if "layer" in config and isinstance(config.get("layer"), Mapping):  # TimeDistributed & co.
        inner_class, inner = class_and_config(config["layer"], f"{where}/{name}")
        return [_spec(config["layer"], inner_class, inner, "layer", where)]
    if class_name == "RNN" or ("cell" in config and class_name not in RNN_LAYER_CLASSES):
        cell = config.get("cell")
        stacked = isinstance(cell, list)
        cells = cell if stacked else [cell]
        if not stacked and isinstance(cell, Mapping) and cell.get("class_name") == "StackedRNNCells":
            inner = cell.get("config")
            cells = inner.get("cells") if isinstance(inner, Mapping) else None
            if not isinstance(cells, list):
                raise CorruptModelError(f"{where}/{name}: StackedRNNCells without a list of cells")
            stacked = True
        out = []
        for k, c in enumerate(cells):
            c_class, c_config = class_and_config(c, f"{where}/{name}")
            if not isinstance(c_config, Mapping):
                raise CorruptModelError(f"{where}/{name}: cell {k} has a config that is not an object")
            out.append(_spec(c, c_class, c_config, f"cell_{k}" if stacked else "cell", where,
                             name=_name_of({}, c_config, f"{c_class.lower()}_{k}")))
        return out
    return []


def _registered_name(entry: Mapping) -> str | None:
    """Keras 3 marks user classes on the layer entry: a registered name, or a module outside Keras."""
    name = entry.get("registered_name") if isinstance(entry, Mapping) else None
    module = entry.get("module") if isinstance(entry, Mapping) else None
    if isinstance(name, str) and name and name != entry.get("class_name"):
        return name
    if isinstance(module, str) and module and not module.startswith(("keras", "tf_keras", "tensorflow")):
        return f"{module}.{entry.get('class_name')}"
    return None


def _first_node_arg(entry: Mapping) -> Any:
    nodes = entry.get("inbound_nodes") if isinstance(entry, Mapping) else None
    if not isinstance(nodes, list) or not nodes:
        return None
    node = nodes[0]
    if isinstance(node, Mapping):  # Keras 3: {"args": [tensor or [tensors]], "kwargs": {}}
        args = node.get("args")
        first = args[0] if isinstance(args, list) and args else None
        return first[0] if isinstance(first, list) and first else first
    if isinstance(node, list) and node:  # tf.keras / Keras 2: [[name, node_index, tensor_index, kwargs]]
        return node[0]
    return None


def _inbound(entry: Mapping) -> tuple[str, int] | None:
    """Which layer's output feeds this one (first input), from the functional graph."""
    arg = _first_node_arg(entry)
    if isinstance(arg, Mapping):
        config = arg.get("config")
        arg = config.get("keras_history") if isinstance(config, Mapping) else None
    if isinstance(arg, list) and len(arg) >= 3 and isinstance(arg[0], str) and isinstance(arg[2], int):
        return arg[0], arg[2]
    return None


def _tensor_shape(entry: Mapping) -> Any:
    arg = _first_node_arg(entry)
    if isinstance(arg, Mapping) and arg.get("class_name") == "__keras_tensor__":
        config = arg.get("config")
        return config.get("shape") if isinstance(config, Mapping) else None
    return None


def _input_shape(entry: Mapping, config: Mapping) -> tuple[int | None, ...] | None:
    """Batch input shape when the config states it (build_config, batch shapes, Keras 3 node tensors)."""
    build = entry.get("build_config") if isinstance(entry, Mapping) else None
    candidates = [
        build.get("input_shape") if isinstance(build, Mapping) else None,
        config.get("batch_input_shape"),
        config.get("batch_shape"),
        _tensor_shape(entry),
    ]
    for shape in candidates:
        if isinstance(shape, list) and all(d is None or isinstance(d, int) for d in shape):
            return tuple(shape)
    if isinstance(config.get("input_dim"), int) and "input_length" in config:  # Keras 1
        length = config.get("input_length")
        return (None, length if isinstance(length, int) else None, config["input_dim"])
    return None
