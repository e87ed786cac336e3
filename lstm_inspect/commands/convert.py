"""`convert`: recurrent weights for PyTorch (safetensors) and ONNX, from the split blocks.

Pure NumPy plus `safetensors.numpy` and `onnx.helper`; neither torch nor onnxruntime is needed to
write. Gate orders on the fused axis:

    Keras   LSTM i f c o   GRU z r h     (x @ W: W is (input, gates*units))
    PyTorch LSTM i f g o   GRU r z n     (W x:  weight_ih is (gates*units, input))
    ONNX    LSTM i o f c   GRU z r h     (W x:  W is (directions, gates*units, input))

Each module is validated first (activations, GRU variant, Bidirectional sides) and the whole
command refuses with the reason, writing nothing, when one selected layer cannot be expressed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from lstm_inspect import __version__
from lstm_inspect import reference as ref
from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import CellKind
from lstm_inspect.errors import MissingExtraError, UsageError
from lstm_inspect.writers.atomic import atomic_folder, atomic_output, current_umask

ONNX_OPSET = 17
ONNX_IR_VERSION = 8  # readable by every onnxruntime since 1.10

_NEEDS = {"pytorch": ("safetensors", "convert --to pytorch needs safetensors: pip install 'lstm-inspect[convert]'"),
          "onnx": ("onnx", "convert --to onnx needs onnx: pip install 'lstm-inspect[convert]'")}


def require(target: str) -> None:
    module, message = _NEEDS[target]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtraError(message)


# ============================================================================================
# Modules: one per recurrent layer (a Bidirectional layer is one module with two sides)
# ============================================================================================

def group_modules(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Group the collected directions into modules, in model order."""
    modules: list[dict[str, Any]] = []
    by_layer: dict[str, dict[str, Any]] = {}
    for f in data["directions"]:
        bidi = f.get("bidirectional")
        if bidi and bidi.get("layer"):
            key = bidi["layer"]
            if key not in by_layer:
                by_layer[key] = {"path": key, "sides": {}, "merge_mode": bidi.get("merge_mode", "concat")}
                modules.append(by_layer[key])
            by_layer[key]["sides"][bidi["side"]] = f
        else:
            modules.append({"path": f["path"], "sides": {"forward": f}, "merge_mode": None,
                            "inside_bidirectional": bool(bidi)})
    out = []
    for m in modules:
        sides = m["sides"]
        if set(sides) == {"forward", "backward"}:
            out.append({"path": m["path"], "directions": [sides["forward"], sides["backward"]],
                        "bidirectional": True, "merge_mode": m["merge_mode"]})
        else:  # a single side selected (--layer bidi/forward), or a plain layer
            for side in sides.values():
                out.append({"path": side["path"], "directions": [side], "bidirectional": False,
                            "merge_mode": None, "inside_bidirectional": bool(side.get("bidirectional"))})
    return out


def _check_common(m: Mapping[str, Any], target: str) -> None:
    dirs = m["directions"]
    first = dirs[0]
    where = m["path"]
    if first["kind"] == "ConvLSTM":
        what = "torch.nn module" if target == "pytorch" else "ONNX operator"
        raise UsageError(f"{where}: {first['class']} is a convolutional LSTM; no {what} computes it "
                         f"(select other layers with --layer)")
    if first["class"] == "PeepholeLSTMCell":
        raise UsageError(f"{where}: PeepholeLSTMCell has peephole weights; not converted")
    refused = next((d["refuse"] for d in dirs if d.get("refuse")), None)  # what the reader knows cannot convert
    if refused:
        raise UsageError(f"{where}: {refused}")
    peepholes = any(name.startswith("p_") for name in first["blocks"])
    if peepholes and target == "pytorch":
        raise UsageError(f"{where}: {first['class']} has peepholes, which torch.nn.LSTM does not compute "
                         f"(--to onnx keeps them: ONNX LSTM input P)")
    if first.get("projection_size") and target == "onnx":
        raise UsageError(f"{where}: {first['class']} has a projection (num_proj {first['projection_size']}), which "
                         f"the ONNX LSTM operator does not compute (--to pytorch keeps it: proj_size)")
    if first.get("proj_clip"):
        raise UsageError(f"{where}: {first['class']} clips its projection (proj_clip); "
                         f"{'torch.nn.LSTM' if target == 'pytorch' else 'the ONNX LSTM operator'} does not")
    if m["bidirectional"]:
        fwd, bwd = dirs
        for key in ("kind", "units", "input_dim", "use_bias", "reset_after", "activation",
                    "recurrent_activation"):
            if fwd.get(key) != bwd.get(key):
                raise UsageError(f"{where}: the Bidirectional sides differ in {key} ({fwd.get(key)!r} vs "
                                 f"{bwd.get(key)!r}); one bidirectional module cannot hold them")
        if fwd.get("go_backwards") or not bwd.get("go_backwards"):
            raise UsageError(f"{where}: the wrapped layer sets go_backwards=True, so its forward side reads "
                             f"backwards; no bidirectional module computes that")
    elif m.get("inside_bidirectional") and "/" in m["path"] and not m["path"].endswith(("/forward", "/backward")):
        raise UsageError(f"{where}: a stacked cell inside a Bidirectional layer; no single module computes it")


# ============================================================================================
# PyTorch
# ============================================================================================

def _torch_kind(m: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    f = m["directions"][0]
    kind, where = f["kind"], m["path"]
    extra: dict[str, Any] = {}
    if kind in ("LSTM", "GRU"):
        if f["activation"] != "tanh" or f["recurrent_activation"] != "sigmoid":
            raise UsageError(f"{where}: torch.nn.{kind} computes tanh with sigmoid gates; this layer uses "
                             f"activation={f['activation']}, recurrent_activation={f['recurrent_activation']}")
        if kind == "GRU" and not f["reset_after"]:
            raise UsageError(f"{where}: GRU with reset_after=False applies the reset gate before the "
                             f"recurrent matmul; torch.nn.GRU computes only reset_after=True "
                             f"(the ONNX export handles both)")
        return kind, extra
    if kind == "SimpleRNN":
        if f["activation"] not in ("tanh", "relu"):
            raise UsageError(f"{where}: torch.nn.RNN computes tanh or relu; this SimpleRNN uses "
                             f"{f['activation']}")
        extra["nonlinearity"] = f["activation"]
        return "RNN", extra
    raise UsageError(f"{where}: {f['class']} has no torch.nn module")


def _dtype(m: Mapping[str, Any], allow64: bool) -> np.dtype:
    arrays = [a for f in m["directions"] for a in f["blocks"].values()]
    if allow64 and arrays and all(np.asarray(a).dtype == np.float64 for a in arrays):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def fused_tensors(f: Mapping[str, Any], table: Mapping[CellKind, layouts.GateLayout]) -> dict[str, np.ndarray]:
    """One direction's blocks fused into a framework's tensors (by role), through its gate layout;
    a run-time forget bias (TF1 cells) is folded into b_f, since no target adds one."""
    layout = table[CellKind(f["kind"])]
    return layouts.fuse(layout, effective_blocks(f), layouts.Sizes(f["units"], f["input_dim"], f.get("projection_size")))


def effective_blocks(f: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
    """The blocks with the cell's run-time forget bias added to b_f (unchanged when it has none)."""
    bias = f.get("forget_bias")
    if not bias or f["kind"] != "LSTM":
        return f["blocks"]
    blocks = dict(f["blocks"])
    stored = blocks.get("b_f")
    if stored is None:  # a cell without bias: every gate gets a bias so the forget gate can carry it
        for gate in "ifco":
            blocks[f"b_{gate}"] = np.zeros(f["units"], dtype=np.asarray(blocks["W_f"]).dtype)
        stored = blocks["b_f"]
    blocks["b_f"] = np.asarray(stored) + np.asarray(bias, dtype=np.asarray(stored).dtype)
    return blocks


def _forget_bias_note(f: Mapping[str, Any]) -> list[str]:
    if f["kind"] != "LSTM" or f.get("forget_bias") is None:
        return []
    return [f"{f['path']}: the run-time forget_bias {f['forget_bias']:g} of the TF cell is folded into the "
            f"forget gate's bias (b_f + {f['forget_bias']:g}); the TF file stores b_f without it"]


def torch_tensors(f: Mapping[str, Any], prefix: str, suffix: str, dtype) -> dict[str, np.ndarray]:
    """state_dict entries of one direction, in PyTorch gate order and layout (W x)."""
    tensors = fused_tensors(f, layouts.PYTORCH)
    return {f"{prefix}.{role}_l0{suffix}": np.ascontiguousarray(value, dtype=dtype)
            for role, value in tensors.items()}


def _keras_output(m: Mapping[str, Any], units: int, var: str, seq_axis: int = 1) -> str:
    """How to get the Keras layer's output from the full output sequence `var` (batch, time, D*units)."""
    f = m["directions"][0]
    if not m["bidirectional"]:
        return var if f.get("return_sequences") else f"{var}[:, -1]"
    H = units
    rs = bool(f.get("return_sequences"))
    fwd = f"{var}[..., :{H}]" if rs else f"{var}[:, -1, :{H}]"
    bwd = f"{var}[..., {H}:]" if rs else f"{var}[:, 0, {H}:]"
    mode = m["merge_mode"]
    if mode == "concat":
        return var if rs else f"concat([{fwd}, {bwd}], axis=-1)"
    return {"sum": f"{fwd} + {bwd}", "ave": f"({fwd} + {bwd}) / 2", "mul": f"{fwd} * {bwd}",
            "none": f"[{fwd}, {bwd}]"}.get(mode, f"merge_mode {mode}: from {fwd} and {bwd}")


def _side_note(m: Mapping[str, Any]) -> list[str]:
    if not m.get("inside_bidirectional"):
        return []
    return [f"{m['path']} is one side of a Bidirectional layer, converted alone; the Bidirectional layer "
            f"reverses the backward side's output sequence back before merging"]


def _clip_notes(m: Mapping[str, Any], target: str) -> list[str]:
    """A cell_clip of the source (TFLite: 10 on every converted Keras LSTM) that the target cannot apply."""
    clip = m["directions"][0].get("cell_clip")
    if not clip:
        return []
    return [f"the source clips the cell state to ±{clip:g} (cell_clip); {target} does not: the outputs agree "
            f"while |c| stays within {clip:g}"]


def _keras_facts(m: Mapping[str, Any]) -> dict[str, Any]:
    f = m["directions"][0]
    facts = {"paths": [d["path"] for d in m["directions"]], "class": f["class"], "kind": f["kind"],
             "units": f["units"], "input_dim": f["input_dim"], "activation": f["activation"],
             "recurrent_activation": f["recurrent_activation"], "use_bias": f["use_bias"],
             "return_sequences": f.get("return_sequences"), "return_state": f.get("return_state"),
             "go_backwards": bool(f.get("go_backwards")) if not m["bidirectional"] else None,
             "stateful": f.get("stateful")}
    if f["kind"] == "GRU":
        facts["reset_after"] = f["reset_after"]
    if m["bidirectional"]:
        facts["merge_mode"] = m["merge_mode"]
    return facts


def _source(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"file": data["name"], "sha256": data.get("sha256"), "format": data["format"],
            "keras_version": data.get("keras_version")}


def plan_pytorch(data: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All tensors and the metadata; raises UsageError (nothing written) when a layer cannot convert."""
    modules = group_modules(data)
    tensors: dict[str, np.ndarray] = {}
    described: dict[str, Any] = {}
    for m in modules:
        _check_common(m, "pytorch")
        nn, extra = _torch_kind(m)
        prefix = m["path"].strip("/").replace("/", ".")  # ONNX node paths may start with "/"
        if prefix in described:
            raise UsageError(f"{m['path']}: two layers map to the module name {prefix!r}")
        dtype = _dtype(m, allow64=True)
        f = m["directions"][0]
        for f_side, suffix in zip(m["directions"], ("", "_reverse")):
            tensors.update(torch_tensors(f_side, prefix, suffix, dtype))
        kwargs = {"input_size": f["input_dim"], "hidden_size": f["units"], "num_layers": 1,
                  "bias": bool(f["use_bias"]) or bool(f.get("forget_bias")), "batch_first": True,
                  "bidirectional": m["bidirectional"], **extra}
        if f.get("projection_size"):
            kwargs["proj_size"] = f["projection_size"]
        reverse = bool(f.get("go_backwards")) and not m["bidirectional"]
        call = "out, _ = module(x.flip(1))" if reverse else "out, _ = module(x)"
        notes = []
        if reverse:
            notes.append("go_backwards=True: feed the input reversed in time (x.flip(1)); `out` is then in "
                         "Keras's order (processing order)")
        if f["kind"] == "LSTM" and f["is_cudnn"]:
            notes.append("CuDNNLSTM: bias_ih is the input bias, bias_hh the recurrent bias, as cuDNN stored them")
        elif f["kind"] in ("LSTM", "SimpleRNN") and f["use_bias"]:
            notes.append("bias_ih holds the Keras bias and bias_hh zeros (PyTorch adds them)")
        if f.get("stateful"):
            notes.append("stateful in Keras: carry (h, c) between calls yourself")
        for side in m["directions"]:
            notes.extend(_forget_bias_note(side))
        if f.get("projection_size"):
            notes.append(f"projection: weight_hr_l0 is the TF projection P transposed; h and the output have "
                         f"proj_size = {f['projection_size']} features")
        notes.extend(_side_note(m))
        notes.extend(_clip_notes(m, "torch.nn.LSTM"))
        if dtype == np.float32 and f["dtype"] not in ("float32",):
            notes.append(f"weights stored as {f['dtype']} in the file, written as float32")
        described[prefix] = {
            "nn": f"torch.nn.{nn}", "kwargs": kwargs,
            "tensors": sorted(k for k in tensors if k.startswith(prefix + ".")),
            "usage": f"module = torch.nn.{nn}(**kwargs); module.load_state_dict(<tensors without the "
                     f"'{prefix}.' prefix>); {call}  # x: (batch, time, {f['input_dim']})",
            "keras_output": _keras_output(m, f["units"], "out"),
            "keras": _keras_facts(m), "notes": notes,
        }
    meta = {"tool": "lstm-inspect", "version": __version__, "schema": 1, "source": _source(data),
            "gate_order": "PyTorch: LSTM i,f,g,o; GRU r,z,n (Keras: LSTM i,f,c,o; GRU z,r,h)",
            "modules": described}
    return tensors, meta


def write_pytorch(data: Mapping[str, Any], out: str | os.PathLike, force: bool) -> dict[str, Any]:
    from safetensors.numpy import save_file

    tensors, meta = plan_pytorch(data)
    with atomic_output(out, force) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "lstm_inspect": json.dumps(meta, sort_keys=True)})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
    lines = [f"wrote {len(tensors)} tensors of {len(meta['modules'])} module(s) to {out}"]
    for prefix, m in meta["modules"].items():
        args = ", ".join(f"{k}={v!r}" for k, v in m["kwargs"].items())
        lines.append(f"  {prefix}: {m['nn']}({args})")
    return {"lines": lines, "metadata": meta}


# ============================================================================================
# ONNX
# ============================================================================================

_ONNX_ACT = {"tanh": ("Tanh", None, None), "sigmoid": ("Sigmoid", None, None), "relu": ("Relu", None, None),
             "softsign": ("Softsign", None, None), "softplus": ("Softplus", None, None),
             "elu": ("Elu", 1.0, None), "linear": ("Affine", 1.0, 0.0), None: ("Affine", 1.0, 0.0)}


def onnx_activation(name: str | None, flavor: str, where: str) -> tuple[str, float | None, float | None]:
    """(ONNX activation, alpha, beta) of a Keras activation; hard_sigmoid by the producing version."""
    if name == "hard_sigmoid":
        # Keras 1/2: clip(0.2x + 0.5, 0, 1); Keras 3: relu6(x + 3) / 6 = clip(x/6 + 0.5, 0, 1)
        return ("HardSigmoid", 0.2, 0.5) if flavor == "keras2" else ("HardSigmoid", 1.0 / 6.0, 0.5)
    if name in _ONNX_ACT:
        return _ONNX_ACT[name]
    raise UsageError(f"{where}: activation {name!r} has no ONNX recurrent-operator equivalent (ONNX "
                     f"LSTM/GRU/RNN accept Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu, "
                     f"ScaledTanh, HardSigmoid, Elu, Softsign, Softplus)")


def onnx_file_name(path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.replace("/", "__")).lstrip(".") or "layer"
    return name[:200] + ".onnx"


def build_onnx(m: Mapping[str, Any], data: Mapping[str, Any]):
    """One ONNX model: X (batch, time, input) -> Y (batch, time, directions*units)."""
    from onnx import TensorProto, checker, helper, numpy_helper

    f = m["directions"][0]
    kind, where = f["kind"], m["path"]
    flavor = ref.hard_sigmoid_flavor(data.get("producer"))
    op = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}[kind]
    per_dir = {"LSTM": [f["recurrent_activation"], f["activation"], f["activation"]],
               "GRU": [f["recurrent_activation"], f["activation"]],
               "SimpleRNN": [f["activation"]]}[kind]
    D = 2 if m["bidirectional"] else 1
    acts, alphas, betas = [], [], []
    for name in per_dir * D:
        act, alpha, beta = onnx_activation(name, flavor, where)
        acts.append(act)
        if alpha is not None:
            alphas.append(alpha)
        if beta is not None:
            betas.append(beta)
    sides = [fused_tensors(d, layouts.ONNX) for d in m["directions"]]
    H, I = f["units"], f["input_dim"]
    inputs = ["X_tm", "W", "R"] + (["B"] if "B" in sides[0] else [])
    if "P" in sides[0]:  # peepholes: input 7, after sequence_lens, initial_h and initial_c (omitted)
        if "B" not in sides[0]:
            for t in sides:
                t["B"] = np.zeros(8 * H, dtype=np.float32)
            inputs.append("B")
        inputs += ["", "", "", "P"]
    inits = [numpy_helper.from_array(np.stack([t[name] for t in sides]).astype(np.float32), name)
             for name in inputs[1:] if name]
    nodes = [helper.make_node("Transpose", ["X"], ["X_tm"], perm=[1, 0, 2], name="to_time_major")]
    reverse = bool(f.get("go_backwards")) and not m["bidirectional"]
    if reverse:  # Keras go_backwards: read the steps last to first, outputs in that order
        nodes += [_index_constant(name, value) for name, value in (
            ("rev_starts", -1), ("rev_ends", np.iinfo(np.int64).min), ("rev_axes", 0), ("rev_steps", -1))]
        nodes.append(helper.make_node("Slice", ["X_tm", "rev_starts", "rev_ends", "rev_axes", "rev_steps"],
                                      ["X_rev"], name="go_backwards"))
        inputs[0] = "X_rev"
    attrs: dict[str, Any] = {"hidden_size": H, "activations": acts,
                             "direction": "bidirectional" if D == 2 else "forward"}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    if kind == "GRU":
        attrs["linear_before_reset"] = 1 if f["reset_after"] else 0
    # named after the layer's path: lstm-inspect reading the file back gives the same direction paths
    nodes.append(helper.make_node(op, inputs, ["Y_tm"], name=where, **attrs))
    nodes.append(_index_constant("bt_shape", [0, 0, -1]))
    nodes.append(helper.make_node("Transpose", ["Y_tm"], ["Y_bt"], perm=[2, 0, 1, 3], name="to_batch_major"))
    nodes.append(helper.make_node("Reshape", ["Y_bt", "bt_shape"], ["Y"], name="concat_directions"))
    x_info = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "time", I])
    y_info = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "time", D * H])
    graph = helper.make_graph(nodes, where.replace("/", "__"), [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              producer_name="lstm-inspect", producer_version=__version__)
    model.ir_version = ONNX_IR_VERSION
    keras_out = _keras_output(m, H, "Y")
    notes = ["Y is always the whole output sequence (batch, time, directions*units), Keras's "
             "concatenated layout; keras_output says how to get the Keras layer's output from it"]
    if reverse:
        notes.append("go_backwards=True: the graph reverses X in time; Y is in Keras's (processing) order")
    notes.extend(_side_note(m))
    for side in m["directions"]:
        notes.extend(_forget_bias_note(side))
    if "P" in sides[0]:
        notes.append("peepholes p_i, p_o, p_f are the ONNX LSTM input P (order i, o, f)")
    notes.extend(_clip_notes(m, "the ONNX LSTM (its clip attribute bounds the gates, not the cell)"))
    if "HardSigmoid" in acts:
        notes.append(f"hard_sigmoid as {ref.HARD_SIGMOID[flavor]}: HardSigmoid(alpha="
                     f"{0.2 if flavor == 'keras2' else 1 / 6:.6g}, beta=0.5)")
    meta = {"tool": "lstm-inspect", "version": __version__, "source": _source(data),
            "keras": _keras_facts(m), "keras_output": keras_out, "op": op,
            "gate_order": {"LSTM": "ONNX i,o,f,c (Keras i,f,c,o)", "GRU": "z,r,h (as Keras)",
                           "SimpleRNN": "one block"}[kind], "notes": notes}
    helper.set_model_props(model, {"lstm_inspect": json.dumps(meta, sort_keys=True),
                                   "keras_output": keras_out})
    model.doc_string = (f"{where}: Keras {f['class']} ({kind}, {H} units) from {data['name']}; "
                        f"Keras output = {keras_out}")
    checker.check_model(model, full_check=True)
    return model


def _index_constant(name: str, values) -> Any:
    """Shape and slice parameters as Constant nodes: the model's initializers are exactly its weights."""
    from onnx import helper, numpy_helper
    array = np.array(values if isinstance(values, list) else [values], np.int64)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name), name=name)


def plan_onnx(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    modules = group_modules(data)
    out: list[tuple[str, Any]] = []
    used: set[str] = set()
    for m in modules:
        _check_common(m, "onnx")
        name = onnx_file_name(m["path"])
        stem, k = name[:-5], 1
        while name.lower() in used:
            k += 1
            name = f"{stem}~{k}.onnx"
        used.add(name.lower())
        out.append((name, build_onnx(m, data)))
    return out


def write_onnx(data: Mapping[str, Any], out: str | os.PathLike, force: bool) -> dict[str, Any]:
    models = plan_onnx(data)
    with atomic_folder(out, force) as tmp:
        for name, model in models:
            path = os.path.join(tmp, name)
            with open(path, "wb") as fh:
                fh.write(model.SerializeToString())
                fh.flush()
                os.fsync(fh.fileno())
    lines = [f"wrote {len(models)} ONNX model(s) to {out}/"]
    for name, model in models:
        node = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
        direction = next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")
        lines.append(f"  {name}: {node.op_type} ({direction}), opset {ONNX_OPSET}")
    return {"lines": lines, "files": [n for n, _ in models]}
