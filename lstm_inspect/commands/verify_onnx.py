"""`verify` for ONNX models: onnxruntime computes each recurrent node, the NumPy cell recomputes it from
the split blocks, and the two are compared.

Two halves, as for Keras (`verify.py`):

* `collect_model()` runs in the guarded child (no onnx, no onnxruntime): per selected direction the facts
  and the split blocks, and per node its attributes and its own W, R, B, P exactly as the node receives
  them (read from the file, folded when the exporter built them), independent of the splitter.
* `check()` runs in the parent and imports onnx and onnxruntime lazily. For every node it builds a
  one-node model from the node's attributes and its own W/R/B/P, feeds a seeded X and takes the output
  of every direction, which it compares with the NumPy cell built from that direction's split blocks.
  The node's tensors never pass through the gate layouts, the blocks always do: `max |file − numpy|`
  proves the split against the file (a mislabelled gate shows up there, at 0.1 to 1). (Fusing the
  blocks back into ONNX tensors would only undo the same table's cut, so there is no second column.)

The node runs from zero states over the whole sequence (`initial_h`, `initial_c`, `sequence_lens` are
left out), time-major (`layout=0`: onnxruntime does not run `layout=1`, and the weights do not depend on
it), in float32 (onnxruntime's CPU kernels; float16 weights are widened exactly).
"""
from __future__ import annotations

import importlib.util
import os
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from lstm_inspect import reference as ref
from lstm_inspect.cells.core import CellKind, Direction
from lstm_inspect.errors import InspectError, MissingExtraError, UsageError

MISSING_ORT = "verify of an ONNX model needs onnx and onnxruntime: pip install 'lstm-inspect[onnx]'"
# onnxruntime computes in float32: rounding alone reaches a few 1e-6 on a 257-input, 128-unit LSTM (DTLN);
# a mislabelled gate differs by 0.1 to 1.
DEFAULT_TOLERANCE = 1e-4
OPSET = 17  # the one-node models: LSTM/GRU/RNN version 14, which every onnxruntime since 1.8 runs
IR_VERSION = 8
_WEIGHT_ROLES = ("W", "R", "B", "P")


# ============================================================================================
# Child side: read the file (no onnx, no onnxruntime)
# ============================================================================================

def collect_model(model, path: str, dirs: Sequence[Direction], file_tensors: bool) -> dict[str, Any]:
    """What `verify` (file_tensors=True) or `convert` (False) needs from an ONNX model, as plain data.

    For verify, a direction whose weights are not in the file is reported (`unavailable`), not raised:
    the other directions are still checked. For convert it is an error (exit 2).
    """
    from lstm_inspect.cells.onnx import hard_sigmoid_flavor, split_activations
    from lstm_inspect.commands.split import file_sha256
    from lstm_inspect.formats.onnx.layers import RecurrentLayer

    layers = {layer.name: layer for layer in model.layers if isinstance(layer, RecurrentLayer)}
    flavors: dict[str, str | None] = {}
    for d in dirs:
        node = layers[d.layer_name].node
        acts = split_activations(node.op_type, node.activations, node.activation_alpha, node.activation_beta,
                                 node.num_directions)
        flavors[d.path] = hard_sigmoid_flavor(acts[_index(d, node)] if acts else None)
    producer = "keras2" if "keras2" in flavors.values() else "keras3"
    out, nodes = [], {}
    for d in dirs:
        layer = layers[d.layer_name]
        out.append(_facts(d, layer, flavors[d.path], producer, file_tensors))
        if file_tensors and layer.name not in nodes:
            nodes[layer.name] = _node_facts(layer)
    return {"file": str(path), "name": os.path.basename(os.path.normpath(str(path))), "format": model.format,
            "framework": "onnx", "keras_version": None, "producer": producer, "written_by": model.producer,
            "sha256": file_sha256(path), "directions": out, "nodes": nodes}


def _index(d: Direction, node) -> int:
    return 1 if node.num_directions == 2 and d.path.endswith("/backward") else 0


def _facts(d: Direction, layer, flavor: str | None, producer: str, file_tensors: bool) -> dict[str, Any]:
    node = layer.node
    refuse = _refusal(d, node, flavor, producer)
    facts: dict[str, Any] = {
        "path": d.path, "kind": d.kind.value, "class": d.class_name, "units": d.units, "input_dim": d.input_dim,
        "use_bias": d.use_bias, "reset_after": d.reset_after, "activation": d.activation,
        "recurrent_activation": d.recurrent_activation, "activation_assumed": False,
        # the node returns every step (Y): as a Keras layer with return_sequences=True
        "return_sequences": True, "return_state": None, "stateful": None, "go_backwards": bool(d.go_backwards),
        "kernel_size": None, "conv": None, "is_cudnn": False, "dtype": d.blocks[0].source.dtype if d.blocks else None,
        "bidirectional": {"side": d.path.rsplit("/", 1)[1], "merge_mode": "concat", "layer": layer.name}
        if node.num_directions == 2 else None,
        "stacked_cell": False, "file_tensors": None, "file_tensors_note": None,
        "notes": list(d.notes), "corrections": list(d.corrections),
        "node": layer.name, "index": _index(d, node), "gate_clip": d.gate_clip,
        "input_forget": bool(node.input_forget), "hard_sigmoid": flavor, "refuse": refuse, "unavailable": None,
        "blocks": {},
    }
    try:
        facts["blocks"] = {b.name: _as_float(b.read()) for b in d.blocks}
    except InspectError as err:
        if not file_tensors:
            raise
        facts["unavailable"] = err.message
    return facts


def _refusal(d: Direction, node, flavor: str | None, producer: str) -> str | None:
    """Why `convert` cannot write this direction for PyTorch or ONNX, or None."""
    reasons = []
    if any(b.name.startswith("p_") for b in d.blocks):
        reasons.append("it has peepholes (P)")
    if d.gate_clip is not None:
        reasons.append(f"it clips its gates (clip={d.gate_clip:g})")
    if node.input_forget:
        reasons.append("its input and forget gates are coupled (input_forget=1)")
    if d.activation is None or (d.kind is not CellKind.SIMPLE_RNN and d.recurrent_activation is None):
        reasons.append(f"its activations {', '.join(node.activations)} have no Keras equivalent")
    if flavor is not None and flavor != producer:
        reasons.append("its HardSigmoid is not the one of the other layers (alpha 1/6 and 0.2 mixed)")
    return ("ONNX " + node.op_type + " node: " + "; ".join(reasons) + "; not converted") if reasons else None


def _node_facts(layer) -> dict[str, Any]:
    """The node's attributes and its own W, R, B, P (as the node receives them), or why they are missing."""
    node = layer.node
    attributes = dict(layer.config)
    tensors, dtypes, missing = {}, {}, None
    for role in _WEIGHT_ROLES:
        op = layer.operand(role)
        if op is None:
            continue
        if not op.stored or op.weight is None:
            missing = f"{role}: the values are not in the file ({op.why})"
            break
        try:
            tensors[role] = _as_float(op.weight.read())
        except InspectError as err:
            missing = err.message
            break
        dtypes[role] = op.weight.dtype
    return {"path": layer.name, "op_type": node.op_type, "attributes": attributes, "tensors": tensors,
            "dtypes": dtypes, "missing": missing}


def _as_float(array: np.ndarray) -> np.ndarray:
    """float64 kept, every other stored type as float32 (float16 and bfloat16 widen exactly)."""
    array = np.asarray(array)
    return array if array.dtype == np.float64 else array.astype(np.float32)


# ============================================================================================
# Parent side: onnxruntime against NumPy
# ============================================================================================

def require_onnxruntime() -> None:
    for module in ("onnx", "onnxruntime"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtraError(MISSING_ORT)


def check(data: Mapping[str, Any], *, steps: int = 7, batch: int = 3, seed: int = 0,
          tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Run onnxruntime and the NumPy reference on every collected direction; the `--format json` data."""
    if steps < 1 or batch < 1:
        raise UsageError("--steps and --batch must be at least 1")
    if not tolerance >= 0:
        raise UsageError("--tolerance must be a non-negative number")
    import onnxruntime as ort

    runs = {path: _run_node(node, steps, batch, seed) for path, node in data["nodes"].items()}
    rows = [_check_one(f, data["nodes"][f["node"]], runs[f["node"]], tolerance) for f in data["directions"]]
    statuses = [r["status"] for r in rows]
    overall = "fail" if "fail" in statuses else ("error" if "error" in statuses else "pass")
    return {"file": data["file"], "format": data["format"], "framework": "onnx",
            "producer": data.get("written_by") or "unknown producer", "keras_version": None,
            "runtime": f"onnxruntime {ort.__version__}", "steps": steps, "batch": batch, "seed": seed,
            "tolerance": tolerance, "compute_dtype": "float32 (onnxruntime) against float64 (NumPy)",
            "status": overall, "directions": rows}


def node_input(path: str, input_dim: int, steps: int, batch: int, seed: int) -> np.ndarray:
    """The seeded X of a node, time-major (steps, batch, input), float32."""
    rng = np.random.default_rng([seed, zlib.crc32(path.encode("utf-8"))])
    return rng.standard_normal((steps, batch, input_dim)).astype(np.float32)


def _run_node(node: Mapping[str, Any], steps: int, batch: int, seed: int) -> dict[str, Any]:
    """onnxruntime's outputs of the node itself, or why it could not run."""
    if node["missing"]:
        return {"error": node["missing"].removeprefix(f"{node['path']} ")}
    tensors = node["tensors"]
    x = node_input(node["path"], int(tensors["W"].shape[-1]), steps, batch, seed)
    try:
        outputs = run_one_node(node["op_type"], node["attributes"], tensors, x)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's refusal, reported for this node's directions
        return {"error": f"onnxruntime could not run the node: {type(exc).__name__}: {_one_line(exc)}"}
    return {"x": x, "outputs": outputs}


def run_one_node(op_type: str, attributes: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                 x: np.ndarray) -> list[np.ndarray]:
    """Y, Y_h (and Y_c) of a one-node model: the node's attributes (layout 0), W/R/B/P as initializers."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    roles = [r for r in _WEIGHT_ROLES if r in tensors]
    names = ["X", "W", "R", "B" if "B" in roles else "", "", "", "", "P" if "P" in roles else ""]
    while not names[-1]:  # trailing optional inputs are left out
        names.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if op_type == "LSTM" else [])
    attrs = {k: attributes[k] for k in ("direction", "hidden_size", "activations", "activation_alpha",
                                        "activation_beta", "clip", "input_forget", "linear_before_reset")
             if attributes.get(k) not in (None, [])}
    node = helper.make_node(op_type, names, outputs, **attrs)
    dtype = np.float32
    inits = [numpy_helper.from_array(np.ascontiguousarray(tensors[r], dtype=dtype), r) for r in roles]
    graph = helper.make_graph([node], "verify", [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lstm-inspect")
    model.ir_version = IR_VERSION
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(a, dtype=np.float64) for a in session.run(outputs, {"X": x})]


def _direction_outputs(outputs: list[np.ndarray], k: int, backwards: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """Direction k of a node's outputs as the reference gives them: the sequence (batch, time, hidden) in
    processing order (a reverse direction's Y is aligned with the input: read it last step first), and
    the final states."""
    seq = np.transpose(outputs[0][:, k], (1, 0, 2))
    if backwards:
        seq = seq[:, ::-1]
    return seq, [state[k] for state in outputs[1:]]


def _max_diff(a: tuple[np.ndarray, list[np.ndarray]], b: tuple[np.ndarray, list[np.ndarray]]) -> float:
    if a[0].shape != b[0].shape or len(a[1]) != len(b[1]) or any(x.shape != y.shape for x, y in zip(a[1], b[1])):
        raise ValueError(f"output shapes differ: {a[0].shape} vs {b[0].shape}")
    parts = [a[0] - b[0]] + [x - y for x, y in zip(a[1], b[1])]
    return float(max(np.max(np.abs(p)) if p.size else 0.0 for p in parts))


def _check_one(f: Mapping[str, Any], node: Mapping[str, Any], run: Mapping[str, Any],
               tolerance: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": f["path"], "node": f["node"], "kind": f["kind"], "class": f["class"], "units": f["units"],
        "input_dim": f["input_dim"], "activation": f["activation"],
        "recurrent_activation": f["recurrent_activation"], "go_backwards": f["go_backwards"],
        "input_shape": None, "max_abs_file_numpy": None, "status": "error",
        "reason": None, "notes": _run_notes(f, node),
    }
    if f.get("unavailable"):
        row["reason"] = f["unavailable"].removeprefix(f"{f['node']} ")
        return row
    if "error" in run:
        row["reason"] = run["error"]
        return row
    x = run["x"]
    row["input_shape"] = [x.shape[1], x.shape[0], x.shape[2]]
    spec = dict(f)
    if f["activation"] is None or (f["kind"] != "SimpleRNN" and f["recurrent_activation"] is None):
        row["reason"] = "the node's activations have no NumPy reference (see the notes)"
        return row
    try:
        expected = ref.run(spec, f["blocks"], np.transpose(x, (1, 0, 2)), f.get("hard_sigmoid") or "keras2")
    except ref.ReferenceUnsupported as exc:
        row["reason"] = str(exc)
        return row
    got = _direction_outputs(run["outputs"], f["index"], f["go_backwards"])
    row["max_abs_file_numpy"] = _max_diff(got, expected)
    failed = row["max_abs_file_numpy"] > tolerance
    row["status"] = "fail" if failed else "pass"
    row["reason"] = (f"onnxruntime running the node and the NumPy cell differ by {row['max_abs_file_numpy']:.3g}: "
                     "the split blocks do not match the file") if failed else None
    return row


def _run_notes(f: Mapping[str, Any], node: Mapping[str, Any]) -> list[str]:
    notes = []
    attributes = node.get("attributes") or {}
    if attributes.get("layout") == 1:
        notes.append("layout=1: run as layout=0 (time-major input), which onnxruntime runs; the weights are the same")
    widened = sorted({d for d in (node.get("dtypes") or {}).values() if d not in ("float32",)})
    if widened:
        notes.append(f"{', '.join(widened)} weights run in float32 by onnxruntime")
    return notes


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
