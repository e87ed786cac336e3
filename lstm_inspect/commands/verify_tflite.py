"""`verify` for `.tflite` files: TensorFlow's own `tf.lite.Interpreter` against the NumPy cell of the blocks.

Two halves, as for Keras (commands/verify.py):

* `collect_model()` runs in the guarded child (no TensorFlow): the split blocks of each selected direction,
  and where to look in the running model ("probes"): a fused operator's real input and output tensors; a
  WHILE loop's sequence input and its final h (and c) outputs; an unrolled graph's per-step inputs x_t and
  the previous h each step's recurrent FULLY_CONNECTED reads. Where no probe can be found, the reason.
* `check()` runs in the parent: the interpreter (reference kernels, no delegates) runs the whole model once
  on a seeded input with `experimental_preserve_all_tensors=True`; each direction's NumPy cell
  (reference.run) then runs on the very input its operator received (dequantized when it is an integer
  tensor) and is compared with what the operator produced (dequantized likewise).

Tolerance, unless --tolerance is given: 1e-5 where the operator computes in float (float32 and float16
weights: the blocks are exactly the values it uses). Quantized arithmetic rounds at every step, and the
rounding compounds over the sequence, so there the tolerance is counted in quantization steps of the
compared values: full integer, `INT8_STEPS` steps of the output tensor's scale; dynamic range (int8
weights, float activations the interpreter quantizes to int8 at run time), `DYNAMIC_STEPS` steps of 1/127
(h lies in [-1, 1]). Measured on every converted file of the test zoo and the corpus: correct blocks are
at most 15 (full integer) and 4.2 (dynamic range) steps off; blocks with two gates swapped at least 36.
The report gives every difference in steps too.
"""
from __future__ import annotations

import os
import zlib
from typing import Any, Mapping

import numpy as np

from lstm_inspect import reference as ref
from lstm_inspect.errors import MissingExtraError, UsageError

MISSING_TF = "verify of a .tflite file needs TensorFlow (tf.lite.Interpreter): pip install 'lstm-inspect[tf]'"
FLOAT_TOLERANCE = 1e-5
INT8_STEPS = 24  # allowed difference, in quantization steps of the compared values (see the docstring)
DYNAMIC_STEPS = 12
_SHAPE_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "DEQUANTIZE", "QUANTIZE"})
_MAX_TRACE = 32


# ============================================================================================
# Child side: the blocks and where to look (no TensorFlow)
# ============================================================================================

def collect_model(model, path: str, dirs, file_tensors: bool = True) -> dict[str, Any]:
    """What verify and convert need from a TFLite file, as plain data (runs guarded)."""
    from lstm_inspect.cells.tflite import direction_sources
    from lstm_inspect.commands.split import file_sha256
    from lstm_inspect.formats.tflite.recurrent import find_recurrent
    from lstm_inspect.formats.tflite.schema import read_tflite

    tfl = read_tflite(path)
    report = find_recurrent(tfl)
    sources = direction_sources(model)
    out = []
    for d in dirs:
        facts, side = sources[d.path]
        probe, why = (None, None)
        if file_tensors:
            try:
                probe = _probe(tfl, report, facts, side)
            except _NoProbe as exc:
                why = str(exc)
        out.append(_facts(d, facts, side, probe, why))
    return {"framework": "tflite", "file": str(path), "name": os.path.basename(os.path.normpath(str(path))),
            "format": model.format, "keras_version": None, "producer": model.producer, "sha256": file_sha256(path),
            "directions": out}


def _facts(d, facts: Mapping[str, Any], side: str | None, probe, why: str | None) -> dict[str, Any]:
    from lstm_inspect.cells.quant import direction_storage
    from lstm_inspect.commands.verify import _as_float

    bidi = facts.get("bidirectional")
    if side is not None:  # a side of one bidirectional operator
        bidirectional = {"side": "forward" if side == "fw" else "backward", "merge_mode": "concat",
                         "layer": d.path.rpartition("/")[0]}
    elif bidi:
        bidirectional = {"side": bidi["side"], "merge_mode": bidi["merge_mode"], "layer": bidi["layer"]}
    else:
        bidirectional = None
    return {
        "path": d.path, "kind": d.kind.value, "class": d.class_name, "units": d.units, "input_dim": d.input_dim,
        "use_bias": d.use_bias, "reset_after": d.reset_after, "activation": d.activation,
        "recurrent_activation": d.recurrent_activation, "activation_assumed": False,
        "return_sequences": None, "return_state": None, "stateful": None, "go_backwards": bool(d.go_backwards),
        "kernel_size": None, "conv": None, "is_cudnn": False, "dtype": d.blocks[0].source.dtype if d.blocks else None,
        "bidirectional": bidirectional, "stacked_cell": False,
        "blocks": {b.name: _as_float(b.read(), b.dtype) for b in d.blocks},
        "file_tensors": None, "file_tensors_note": None, "notes": [], "corrections": list(d.corrections),
        "cell_clip": d.cell_clip, "proj_clip": d.proj_clip, "projection_size": d.projection_size,
        "form": facts["form"], "fused": facts["fused"], "operator": facts["operator"], "op_index": facts["op_index"],
        "quantization": direction_storage(d), "probe": probe, "probe_note": why,
        "refuse": _refusal(d),
    }


def _refusal(d) -> str | None:
    """What convert cannot express (the collect data is shared with convert)."""
    names = {b.name for b in d.blocks}
    if any(n.startswith("p_") for n in names):
        return "LSTM with peepholes: convert writes torch.nn.LSTM and plain ONNX LSTM weights, which have none"
    if "P" in names:
        return "LSTM with a projection: not converted (torch.nn.LSTM's proj_size has no bias and no proj_clip)"
    if any(n.startswith("ln_") for n in names):
        return "layer-normalised LSTM: no torch.nn or ONNX operator computes layer normalisation of the gates"
    if d.kind.value == "LSTM" and "W_i" not in names:
        return "CIFG LSTM (no input gate): no torch.nn or ONNX operator couples i = 1 - f"
    return None


class _NoProbe(Exception):
    """No tensors of the running model to compare this direction with (the reason is the message)."""


def _probe(tfl, report, facts: Mapping[str, Any], side: str | None) -> dict[str, Any]:
    if facts["subgraph"] != 0:
        raise _NoProbe(f"the layer is in subgraph {facts['subgraph']}; the interpreter keeps only the main "
                       "graph's tensors")
    graph = tfl.subgraphs[0]
    op = graph.operators[facts["op_index"]]
    if facts["form"] == "fused-op":
        return _fused_probe(graph, op, facts, side)
    if facts["form"] == "while-loop":
        loop = next(w for w in report.loops if (w.subgraph, w.op_index) == (0, facts["op_index"]))
        return _loop_probe(tfl, graph, op, loop)
    unrolled = next(u for u in report.unrolled if (u.cell.subgraph, u.cell.kernel_ops[0]) == (0, facts["op_index"]))
    return _steps_probe(graph, unrolled.cell)


def _fused_probe(graph, op, facts: Mapping[str, Any], side: str | None) -> dict[str, Any]:
    options = facts.get("options") or {}
    time_major = bool(options.get("time_major", op.name.startswith("BIDIRECTIONAL")))
    if op.name in ("LSTM", "RNN"):
        raise _NoProbe(f"{op.name} is a one-step operator; verify compares sequence operators only")
    probe = {"kind": "sequence", "input": op.inputs[0], "output": op.outputs[0], "time_major": time_major,
             "columns": None, "backward": False, "note": _state_scale_note(graph, op)}
    if side is not None:
        units = facts.get("output_size") or facts.get("units")
        merged = bool(options.get("merge_outputs"))
        if side == "fw":
            probe["columns"] = [0, units] if merged else None
        else:
            probe["output"] = op.outputs[0] if merged else op.outputs[1]
            probe["columns"] = [units, 2 * units] if merged else None
            probe["backward"] = True
    return probe


def _state_scale_note(graph, op) -> str | None:
    """A quantized fused LSTM whose output tensor and output state are quantized differently (seen in
    full-integer Bidirectional conversions): worth knowing when its outputs look off."""
    roles = {"UNIDIRECTIONAL_SEQUENCE_LSTM": 18}
    position = roles.get(op.name)
    if position is None or len(op.inputs) <= position or op.inputs[position] < 0 or op.outputs[0] < 0:
        return None
    out, state = graph.tensors[op.outputs[0]].quantization, graph.tensors[op.inputs[position]].quantization
    if out is None or state is None or not out.scale or not state.scale:
        return None
    if (out.scale[:1], out.zero_point[:1]) == (state.scale[:1], state.zero_point[:1]):
        return None
    return (f"the operator's output is quantized with scale {out.scale[0]:.4g}, zero point {out.zero_point[0]}, "
            f"its output state with scale {state.scale[0]:.4g}, zero point {state.zero_point[0]}")


def _loop_probe(tfl, graph, op, loop) -> dict[str, Any]:
    if len(loop.cells) != 1 or loop.cells[0].kind == "unknown":
        raise _NoProbe("the loop's cell was not recognised")
    if loop.custom_ops:
        raise _NoProbe(f"the loop uses custom operators ({', '.join(loop.custom_ops)}), which this interpreter "
                       "cannot run")
    cell = loop.cells[0]
    body = tfl.subgraphs[loop.body.index]
    producers = {t: o for o in body.operators for t in o.outputs if t >= 0}
    kernel_fc = body.operators[cell.kernel.op_index]
    recurrent_fc = body.operators[cell.recurrent_kernel[0].op_index]
    j, axis = _to_body_input(body, producers, kernel_fc.inputs[0], through_gather=True)
    k, _ = _to_body_input(body, producers, recurrent_fc.inputs[0], through_gather=False)
    if j is None or axis is None or k is None:
        raise _NoProbe("the loop's sequence input or state could not be followed to the loop's inputs")
    probe = {"kind": "loop", "sequence": op.inputs[j], "time_axis": axis, "h": op.outputs[k],
             "h_initial": op.inputs[k], "c": None, "c_initial": None}
    if cell.kind == "lstm":
        m = _cell_state_input(body, k, j, cell.units)
        if m is not None:
            probe.update(c=op.outputs[m], c_initial=op.inputs[m])
    return probe


def _to_body_input(body, producers, t: int, through_gather: bool) -> tuple[int | None, int | None]:
    """(k, time axis): the body input t comes from (through shape ops, and one GATHER of the step)."""
    axis = None
    for _ in range(_MAX_TRACE):
        if t in body.inputs:
            return body.inputs.index(t), axis
        producer = producers.get(t)
        if producer is None or not producer.inputs:
            return None, None
        if producer.name == "GATHER" and through_gather and axis is None:
            axis = int(producer.options.get("axis", 0)) if producer.options is not None else 0
        elif producer.name not in _SHAPE_OPS:
            return None, None
        t = producer.inputs[0]
    return None, None


def _cell_state_input(body, h_index: int, x_index: int, units: int) -> int | None:
    """The LSTM's carried cell state: a float body input (not h, not x) of `units` features that a MUL reads."""
    found = []
    for m, t in enumerate(body.inputs):
        tensor = body.tensors[t]
        carried = m < len(body.outputs) and body.outputs[m] != t
        if m in (h_index, x_index) or not carried or tensor.type_name not in ("FLOAT32", "FLOAT16"):
            continue
        if tensor.shape and tensor.shape[-1] == units and any(o.name == "MUL" and t in o.inputs
                                                              for o in body.operators):
            found.append(m)
    return found[0] if len(found) == 1 else None


def _steps_probe(graph, cell) -> dict[str, Any]:
    """Per step of an unrolled cell: the kernel FC's input x_t and the h_{t-1} its recurrent FC reads, in
    step order (operator order need not be step order)."""
    consumers: dict[int, list] = {}
    for op in graph.operators:
        for t in set(op.inputs):
            if t >= 0:
                consumers.setdefault(t, []).append(op)
    first_recurrent = cell.recurrent_kernel[0].stored
    kernel_ops = [graph.operators[i] for i in cell.kernel_ops]
    recurrent_ops = [graph.operators[i] for i in cell.recurrent_ops
                     if _stored_weight(graph, graph.operators[i]) == first_recurrent]
    reach = {op.index: _reach(graph, consumers, op.outputs[0]) for op in kernel_ops}
    steps = len(kernel_ops)
    later = {op.index: sum(1 for r in recurrent_ops if r.inputs[0] in reach[op.index]) for op in kernel_ops}
    order = sorted(kernel_ops, key=lambda op: -later[op.index])  # step t reaches the T-1-t later steps
    h_prev: dict[int, int] = {}
    for r in recurrent_ops:
        step = sum(1 for op in kernel_ops if r.inputs[0] in reach[op.index])  # h_{t-1} depends on x_0..x_{t-1}
        if step in h_prev or not 1 <= step < steps:
            raise _NoProbe("the steps of the unrolled graph could not be ordered")
        h_prev[step] = r.inputs[0]
    if len(set(later.values())) != steps or sorted(h_prev) != list(range(1, steps)):
        raise _NoProbe("the steps of the unrolled graph could not be ordered")
    return {"kind": "steps", "x": [op.inputs[0] for op in order], "h_prev": [h_prev[t] for t in range(1, steps)]}


def _stored_weight(graph, op) -> int | None:
    t = op.inputs[1]
    tensor = graph.tensors[t]
    if tensor.has_data:
        return t
    for producer in graph.operators:
        if t in producer.outputs and producer.name == "DEQUANTIZE":
            return producer.inputs[0]
    return None


def _reach(graph, consumers, start: int) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        for op in consumers.get(todo.pop(), ()):
            for out in op.outputs:
                if out >= 0 and out not in seen:
                    seen.add(out)
                    todo.append(out)
    return seen


# ============================================================================================
# Parent side: the interpreter against NumPy
# ============================================================================================

def require_tensorflow() -> None:
    import importlib.util
    try:
        found = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtraError(MISSING_TF)


def _interpreter(path: str):
    from lstm_inspect.commands.verify import _quiet_native_stderr
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import warnings
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    with _quiet_native_stderr():
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise MissingExtraError(f"{MISSING_TF} ({exc})") from None
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = tf.lite.Interpreter(model_path=path, experimental_preserve_all_tensors=True,
                                      experimental_op_resolver_type=resolver)
    return interpreter, f"tf.lite.Interpreter (TensorFlow {tf.__version__}, reference kernels)"


def check(data: Mapping[str, Any], *, steps: int = 7, batch: int = 3, seed: int = 0,
          tolerance: float | None = None) -> dict[str, Any]:
    """Run the model in the interpreter and compare every direction with its NumPy cell."""
    if tolerance is not None and not tolerance >= 0:
        raise UsageError("--tolerance must be a non-negative number")
    rows = [_row(f) for f in data["directions"]]
    report = {"file": data["file"], "format": data["format"], "producer": data.get("producer") or "unknown",
              "runtime": None, "steps": steps, "batch": batch, "seed": seed, "tolerance": tolerance,
              "inputs": [], "status": "error", "directions": rows, "keras_version": None}
    try:
        interpreter, report["runtime"] = _interpreter(data["file"])
        report["inputs"] = _run(interpreter, steps, batch, seed)
    except MissingExtraError:
        raise
    except Exception as exc:  # noqa: BLE001 - the interpreter's refusal, reported per direction
        reason = f"the interpreter cannot run this model: {_one_line(exc)}"
        for row in rows:
            row["reason"] = row["reason"] or reason
    else:
        for f, row in zip(data["directions"], rows):
            if row["reason"] is None:
                _compare(f, row, interpreter, tolerance)
    statuses = [r["status"] for r in rows]
    report["status"] = "fail" if "fail" in statuses else ("error" if "error" in statuses else "pass")
    return report


def _row(f: Mapping[str, Any]) -> dict[str, Any]:
    row = {"path": f["path"], "kind": f["kind"], "class": f["class"], "form": f["form"], "fused": f["fused"],
           "operator": f["operator"], "op_index": f["op_index"], "units": f["units"], "input_dim": f["input_dim"],
           "compared": None, "input_shape": None, "max_abs_file_numpy": None, "tolerance": None,
           "tolerance_from": None, "steps_off": None, "status": "error", "reason": None, "notes": []}
    if f.get("probe") is None:
        row["reason"] = f"not checked: {f.get('probe_note') or 'no tensors to compare'}"
    for name in (f["activation"], f["recurrent_activation"]):
        if row["reason"] is None and name is not None and not ref.known_activation(name):
            row["reason"] = f"activation {name!r} has no NumPy reference"
    if row["reason"] is None and f["activation"] is None:
        row["reason"] = "the activation is not known"
    return row


def _run(interpreter, steps: int, batch: int, seed: int) -> list[dict[str, Any]]:
    """Fill every model input with seeded values (normal, quantized for integer inputs) and invoke once."""
    details = interpreter.get_input_details()
    for d in details:
        signature = [int(v) for v in d.get("shape_signature", d["shape"])]
        if any(v < 0 for v in signature):
            wanted = [batch if k == 0 and v < 0 else steps if v < 0 else v for k, v in enumerate(signature)]
            interpreter.resize_tensor_input(d["index"], wanted)
    interpreter.allocate_tensors()
    interpreter.reset_all_variables()  # the recurrent states start at zero (allocation does not promise it)
    used = []
    for d in interpreter.get_input_details():
        shape = tuple(int(v) for v in d["shape"])
        rng = np.random.default_rng([seed, zlib.crc32(d["name"].encode("utf-8"))])
        values = rng.standard_normal(shape)
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if dtype.kind in "iu":
            if not scale:
                raise UsageError(f"model input {d['name']} is {dtype.name} without a quantization scale")
            info = np.iinfo(dtype)
            values = np.clip(np.round(values / scale) + zero, info.min, info.max)
        interpreter.set_tensor(d["index"], values.astype(dtype))
        used.append({"name": d["name"], "shape": list(shape), "dtype": dtype.name})
    interpreter.invoke()
    return used


def _tensor(interpreter, index: int) -> tuple[np.ndarray, float | None]:
    """A tensor's value as float64 (dequantized when it is an integer tensor), and its scale if quantized."""
    value = np.asarray(interpreter.get_tensor(index))
    if not hasattr(interpreter, "_lstm_inspect_details"):  # one listing per run, not one per tensor
        interpreter._lstm_inspect_details = {d["index"]: d for d in interpreter.get_tensor_details()}
    details = interpreter._lstm_inspect_details[index]
    scales = details["quantization_parameters"]["scales"]
    if value.dtype.kind in "iu" and len(scales):
        zeros = details["quantization_parameters"]["zero_points"]
        return (value.astype(np.float64) - float(zeros[0])) * float(scales[0]), float(scales[0])
    return value.astype(np.float64), None


def _spec(f: Mapping[str, Any]) -> dict[str, Any]:
    """The reference cell's spec: the operator already receives its input in processing order."""
    return {"kind": f["kind"], "units": f["units"], "activation": f["activation"],
            "recurrent_activation": f["recurrent_activation"], "reset_after": f["reset_after"],
            "go_backwards": False, "cell_clip": f.get("cell_clip"), "proj_clip": f.get("proj_clip")}


def _compare(f: Mapping[str, Any], row: dict[str, Any], interpreter, tolerance: float | None) -> None:
    probe = f["probe"]
    if probe.get("note"):
        row["notes"].append(probe["note"])
    try:
        if probe["kind"] == "sequence":
            got, expected, scale, compared = _sequence(f, probe, interpreter)
        elif probe["kind"] == "loop":
            got, expected, scale, compared = _loop(f, probe, interpreter)
        else:
            got, expected, scale, compared = _steps(f, probe, interpreter)
    except ref.ReferenceUnsupported as exc:
        row["reason"] = str(exc)
        return
    except _NoProbe as exc:
        row["reason"] = f"not checked: {exc}"
        return
    row["compared"] = compared
    row["input_shape"] = list(expected[1])
    diff = float(np.max(np.abs(got - expected[0]))) if got.size else 0.0
    row["max_abs_file_numpy"] = diff
    limit, source = _tolerance(f, scale, tolerance)
    row["tolerance"], row["tolerance_from"] = limit, source
    step = scale if scale else (1 / 127 if _dynamic_range(f) else None)
    row["steps_off"] = diff / step if step else None
    row["status"] = "pass" if diff <= limit else "fail"
    if row["status"] == "fail":
        row["reason"] = f"the interpreter and the NumPy cell differ by {diff:.3g} (tolerance {limit:.3g})"


def _dynamic_range(f: Mapping[str, Any]) -> bool:
    storage = f.get("quantization") or {}
    return any(e.get("scale") for e in storage.values())


def _tolerance(f: Mapping[str, Any], scale: float | None, given: float | None) -> tuple[float, str]:
    if given is not None:
        return given, "--tolerance"
    if scale:
        return INT8_STEPS * scale, f"{INT8_STEPS} steps of the output's scale {scale:.3g} (full integer)"
    if _dynamic_range(f):
        return DYNAMIC_STEPS / 127, (f"{DYNAMIC_STEPS} steps of 1/127 (dynamic range: the interpreter quantizes "
                                     "the inputs of each matmul to int8 at run time)")
    return FLOAT_TOLERANCE, "float arithmetic"


def _sequence(f, probe, interpreter):
    x, _ = _tensor(interpreter, probe["input"])
    y, scale = _tensor(interpreter, probe["output"])
    if probe["time_major"]:
        x, y = np.swapaxes(x, 0, 1), np.swapaxes(y, 0, 1)
    if probe["columns"]:
        y = y[..., probe["columns"][0]:probe["columns"][1]]
    spec = _spec(f)
    if probe["backward"]:  # the operator reads backwards itself; its outputs stay aligned with the input
        spec["go_backwards"] = True
        seq, _ = ref.run(spec, f["blocks"], x, "keras3")
        seq = seq[:, ::-1]
    else:
        seq, _ = ref.run(spec, f["blocks"], x, "keras3")
    return y, (seq, x.shape), scale, f"the operator's output sequence {list(y.shape)}"


def _loop(f, probe, interpreter):
    x, _ = _tensor(interpreter, probe["sequence"])
    x = np.moveaxis(x, probe["time_axis"], 1)  # (time, batch, features) -> (batch, time, features)
    for key in ("h_initial", "c_initial"):
        if probe[key] is not None:
            initial, _ = _tensor(interpreter, probe[key])
            if np.any(initial != 0):
                raise _NoProbe("the loop starts from a non-zero state")
    _, states = ref.run(_spec(f), f["blocks"], x, "keras3")
    h, scale = _tensor(interpreter, probe["h"])
    got, expected = [h.reshape(states[0].shape)], [states[0]]
    what = "the loop's final h"
    if probe["c"] is not None and f["kind"] == "LSTM":
        c, _ = _tensor(interpreter, probe["c"])
        got.append(c.reshape(states[1].shape))
        expected.append(states[1])
        what += " and c"
    return np.concatenate([g.ravel() for g in got]), (np.concatenate([e.ravel() for e in expected]), x.shape), \
        scale, what


def _steps(f, probe, interpreter):
    xs = [_tensor(interpreter, t)[0] for t in probe["x"]]
    batch = xs[0].size // f["input_dim"]
    x = np.stack([v.reshape(batch, f["input_dim"]) for v in xs], axis=1)
    seq, _ = ref.run(_spec(f), f["blocks"], x, "keras3")
    hs = [_tensor(interpreter, t) for t in probe["h_prev"]]
    if not hs:
        raise _NoProbe("one step only: no recurrent input to compare")
    got = np.stack([h.reshape(batch, -1) for h, _ in hs], axis=1)
    scale = hs[0][1]
    return got, (seq[:, :len(hs)], x.shape), scale, f"h after each of the first {len(hs)} steps"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
