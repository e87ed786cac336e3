"""`verify` for TensorFlow checkpoints and SavedModels: TensorFlow's own loader and cells against the
NumPy cell built from the split blocks.

Two halves, like `verify.py`:

* `add_facts()` runs in the guarded child (no TensorFlow): for each direction, the checkpoint key of
  every tensor role of its gate layout, and the checkpoint prefix.
* `check()` runs in the parent and imports TensorFlow. For a TF1 cell it builds the real TF class
  (tf.compat.v1.nn.rnn_cell BasicLSTMCell, LSTMCell with peepholes and num_proj, GRUCell, BasicRNNCell;
  the raw `LSTMBlockCell` / `GRUBlockCell` ops for the contrib cells, which TF 2.21 no longer ships)
  and runs it twice on a seeded input: with the checkpoint's tensors as `tf.train.load_checkpoint`
  reads them ("file − numpy"), and with the split blocks fused back into TF's tensors through the
  TF1 gate layout ("blocks − numpy"). The run-time forget bias of the TF side is the one the graph
  in `PREFIX.meta` adds, when TensorFlow finds it there (so a wrong `--forget-bias` fails), else the
  same as the NumPy side's. Keras layers of TF2 files go through the Keras check of `verify.py`,
  with their file tensors read by TensorFlow's checkpoint reader.

TensorFlow is imported only inside functions of this module.
"""
from __future__ import annotations

import os
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from lstm_inspect import reference as ref
from lstm_inspect.cells import layouts
from lstm_inspect.errors import MissingExtraError

# ============================================================================================
# Child side (no TensorFlow)
# ============================================================================================


def add_facts(data: dict, path: str, dirs: Sequence[Any]) -> None:
    """The checkpoint prefix, and per direction its class and the checkpoint key of each tensor role."""
    from lstm_inspect.formats.tf.bundle import resolve

    resolved = resolve(path)
    data["tf_prefix"] = resolved.prefix or resolved.index_path
    for f, d in zip(data["directions"], dirs):
        layout = layouts.LAYOUTS[d.source_layout]
        roles: dict[str, str] = {}
        for block in d.blocks:
            role = layouts.tensor_of(layout, block.name)
            if role is not None:
                roles[role] = block.source.location
        f["tf"] = {"layout": d.source_layout, "roles": roles, "tf1": d.source_layout.startswith("tf1-")}


# ============================================================================================
# Parent side
# ============================================================================================

_TF = {}


def _tensorflow():
    """TensorFlow, imported once; TF1 cells need the tf_keras legacy cells (TF_USE_LEGACY_KERAS)."""
    if "tf" not in _TF:
        import sys
        if "tensorflow" not in sys.modules:
            os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from lstm_inspect.commands.verify import _quiet_native_stderr
        with _quiet_native_stderr():
            try:
                import tensorflow as tf
            except ImportError as exc:
                raise MissingExtraError(f"verify needs TensorFlow: pip install 'lstm-inspect[tf]' ({exc})") from None
        import logging
        import warnings
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        tf.get_logger().setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="tf_keras")
        warnings.filterwarnings("ignore", category=UserWarning, module=__name__)
        _TF["tf"] = tf
    return _TF["tf"]


def check(data: Mapping[str, Any], *, steps: int = 7, batch: int = 3, seed: int = 0,
          tolerance: float = 1e-5) -> dict[str, Any]:
    """TensorFlow against the NumPy reference on every collected direction (the `--format json` data)."""
    from lstm_inspect.commands import verify as keras_verify
    from lstm_inspect.errors import UsageError

    if steps < 1 or batch < 1:
        raise UsageError("--steps and --batch must be at least 1")
    tf = _tensorflow()
    prefix = data["tf_prefix"]
    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as exc:  # noqa: BLE001 - TensorFlow's own refusal: every direction says why
        reader = _Refused(exc)
    flavor = ref.hard_sigmoid_flavor(data.get("producer"))
    graph_biases = forget_biases_from_meta(prefix)
    impls = {"keras": keras_verify._Keras("keras"), "tf_keras": keras_verify._Keras("tf_keras")}
    results = []
    for f in data["directions"]:
        if f["tf"]["tf1"]:
            results.append(_check_tf1(f, reader, graph_biases, steps, batch, seed, tolerance))
            continue
        try:
            f = dict(f, file_tensors=_keras_file_tensors(f, reader),
                     file_tensors_note="the file's tensors as TensorFlow's checkpoint reader returns them")
        except Exception as exc:  # noqa: BLE001 - checked against the blocks only, and said so
            f = dict(f, file_tensors=None, file_tensors_note=f"not checked: TensorFlow's checkpoint reader "
                                                             f"refused them ({_one_line(exc)})")
        results.append(keras_verify._check_one(f, impls, flavor, steps, batch, seed, tolerance))
    statuses = [r["status"] for r in results]
    overall = "fail" if "fail" in statuses else ("error" if "error" in statuses else "pass")
    return {
        "file": data["file"], "format": data["format"], "keras_version": data.get("keras_version"),
        "producer": f"TensorFlow {tf.__version__} reading the checkpoint", "framework": "tensorflow",
        "hard_sigmoid": ref.HARD_SIGMOID[flavor], "steps": steps, "batch": batch, "seed": seed,
        "tolerance": tolerance, "compute_dtype": "float64", "status": overall, "directions": results,
        "legend": [
            "blocks − numpy: TensorFlow's cell given the split blocks fused back into its own tensors "
            "(Keras layers: Keras given the blocks), against the NumPy cell built from the blocks",
            "file − numpy:  TensorFlow's cell (or Keras layer) given the checkpoint's tensors as "
            "tf.train.load_checkpoint reads them, against the same NumPy cell",
        ],
    }


class _Refused:
    """Stands for a checkpoint TensorFlow's reader cannot open (V1 partitioned variables, ...)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def get_tensor(self, name: str):
        raise RuntimeError(f"tf.train.load_checkpoint failed: {_one_line(self.exc)}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _keras_file_tensors(f: Mapping[str, Any], reader) -> list[np.ndarray]:
    roles = f["tf"]["roles"]
    names = [r for r in ("kernel", "recurrent_kernel", "bias") if r in roles]
    return [np.asarray(reader.get_tensor(roles[r]), dtype=np.float64) for r in names]


# --------------------------------------------------------------------------------------------
# The forget bias in the TF1 graph (`PREFIX.meta`), as TensorFlow's protobuf classes read it
# --------------------------------------------------------------------------------------------

def forget_biases_from_meta(prefix: str) -> dict[str, list[float]]:
    """Cell scope → the constants the graph adds to the forget gate (output 2 of the 4-way split of
    the cell's gate pre-activations). Control flow v1 (`rnn/while/...`), v2 (a While op whose body
    is a library function) and static_rnn graphs. Empty when there is no readable `.meta`."""
    path = f"{prefix}.meta"
    if not os.path.isfile(path):
        return {}
    _tensorflow()
    from tensorflow.core.protobuf import meta_graph_pb2
    try:
        with open(path, "rb") as fh:
            meta = meta_graph_pb2.MetaGraphDef.FromString(fh.read())
    except Exception:  # noqa: BLE001 - an unreadable graph only costs this cross-check
        return {}
    graph = meta.graph_def
    found: dict[str, list[float]] = {}
    _scan(graph.node, False, "", found)
    bodies: dict[str, list[str]] = {}
    _while_bodies(graph.node, "", bodies)
    functions = {fn.signature.name: fn for fn in graph.library.function}
    pending = list(bodies.items())
    done: set[str] = set()
    while pending:
        name, scopes = pending.pop()
        if name in done or name not in functions:
            continue
        done.add(name)
        for scope in scopes:
            _scan(functions[name].node_def, True, scope, found)
            inner: dict[str, list[str]] = {}
            _while_bodies(functions[name].node_def, scope, inner)
            pending.extend(inner.items())
    return found


def _while_bodies(nodes, scope: str, out: dict[str, list[str]]) -> None:
    for node in nodes:
        if node.op in ("While", "StatelessWhile"):
            parent = _join(scope, node.name).rpartition("/")[0]
            out.setdefault(node.attr["body"].func.name, []).append(parent)


def _join(scope: str, name: str) -> str:
    return f"{scope}/{name}" if scope else name


def _reference(text: str, in_function: bool) -> tuple[str, int]:
    parts = text.lstrip("^").split(":")
    if in_function:  # "node:output_arg:index"
        return parts[0], int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 0
    return parts[0], int(parts[1]) if len(parts) == 2 and parts[1].isdigit() else 0


def _scan(nodes, in_function: bool, scope: str, found: dict[str, list[float]]) -> None:
    tf = _tensorflow()
    by_name = {n.name: n for n in nodes}
    splits = {n.name for n in nodes if n.op in ("Split", "SplitV") and n.attr["num_split"].i == 4}
    for node in nodes:
        if node.op not in ("Add", "AddV2"):
            continue
        inputs = [_reference(i, in_function) for i in node.input if not i.startswith("^")]
        if len(inputs) != 2:
            continue
        for (source, index), (other, _) in (inputs, inputs[::-1]):
            const = by_name.get(other)
            if source in splits and index == 2 and const is not None and const.op == "Const":
                value = tf.make_ndarray(const.attr["value"].tensor)
                if value.size == 1:
                    cell = _normalise(_join(scope, source).rpartition("/")[0])
                    found.setdefault(cell, []).append(float(value.reshape(-1)[0]))


def _normalise(scope: str) -> str:
    """Op scopes → variable scopes: drop `while` components and repeated names (`fw/fw`, `rnn/rnn`)."""
    out: list[str] = []
    for part in scope.split("/"):
        if re.fullmatch(r"while(_\d+)?", part) or (out and out[-1] == part):
            continue
        out.append(part)
    return "/".join(out)


# --------------------------------------------------------------------------------------------
# One TF1 cell
# --------------------------------------------------------------------------------------------

_RAW_OPS = {"CudnnCompatibleLSTMCell": "LSTMBlockCell", "GRUBlockCell": "GRUBlockCell"}


def _check_tf1(f: Mapping[str, Any], reader, graph_biases: Mapping[str, list[float]], steps: int, batch: int,
               seed: int, tolerance: float) -> dict[str, Any]:
    tf = _tensorflow()
    row: dict[str, Any] = {
        "path": f["path"], "kind": f["kind"], "class": f["class"], "units": f["units"], "input_dim": f["input_dim"],
        "activation": f["activation"], "recurrent_activation": f["recurrent_activation"],
        "go_backwards": bool(f.get("go_backwards")), "hard_sigmoid": None, "keras": f"tensorflow {tf.__version__}",
        "built_as": None, "input_shape": [batch, steps, f["input_dim"]], "max_abs_keras_numpy": None,
        "max_abs_file_numpy": None, "file_tensors": "the checkpoint's tensors as tf.train.load_checkpoint reads them",
        "status": "error", "reason": None, "corrections": list(f.get("corrections") or []), "notes": [],
    }
    rng = np.random.default_rng([seed, zlib.crc32(f["path"].encode("utf-8"))])
    x = rng.standard_normal((batch, steps, f["input_dim"]))
    numpy_bias = f.get("forget_bias")
    tf_bias, note = _tf_forget_bias(f, graph_biases)
    if note:
        row["notes"].append(note)
    spec = dict(f, forget_bias=numpy_bias)
    try:
        expected = ref.run(spec, f["blocks"], x, "keras3")
    except ref.ReferenceUnsupported as exc:
        row["reason"] = str(exc)
        return row
    try:
        file_values = {role: np.asarray(reader.get_tensor(key)) for role, key in f["tf"]["roles"].items()}
    except Exception as exc:  # noqa: BLE001 - e.g. TF cannot read partitioned V1 variables
        row["reason"] = f"TensorFlow's checkpoint reader cannot read this cell's tensors: {_one_line(exc)}"
        return row
    layout = layouts.LAYOUTS[f["tf"]["layout"]]
    recurrent = f.get("projection_size")
    fused = layouts.fuse(layout, f["blocks"], layouts.Sizes(f["units"], f["input_dim"], recurrent))
    runner = _run_raw_op if f["class"] in _RAW_OPS else _run_cell
    try:
        got_file, row["built_as"] = runner(f, file_values, x, tf_bias)
        got_blocks, _ = runner(f, fused, x, tf_bias)
    except Exception as exc:  # noqa: BLE001 - TensorFlow's own refusal, reported for this direction
        row["reason"] = f"TensorFlow could not run the cell: {type(exc).__name__}: {_one_line(exc)}"
        return row
    if f["class"] in _RAW_OPS:
        row["notes"].append(f"TF 2.21 has no {f['class']} class: the raw {_RAW_OPS[f['class']]} op computes it, in "
                            "float32 (the op has no float64 kernel)")
    from lstm_inspect.commands.verify import _max_diff
    row["max_abs_keras_numpy"] = _max_diff(got_blocks, expected)
    row["max_abs_file_numpy"] = _max_diff(got_file, expected)
    failures = []
    for label, value in (("the split blocks fused back", row["max_abs_keras_numpy"]),
                         ("the checkpoint's tensors", row["max_abs_file_numpy"])):
        if value > tolerance:
            failures.append(f"TensorFlow's {f['class']} with {label} and the NumPy cell differ by {value:.3g}")
    if failures and tf_bias != numpy_bias and numpy_bias is not None:
        failures.append(f"the graph adds forget_bias {tf_bias:g} where the NumPy cell adds {numpy_bias:g} "
                        f"(give --forget-bias {tf_bias:g})")
    row["status"] = "fail" if failures else "pass"
    row["reason"] = "; ".join(failures) or None
    return row


def _tf_forget_bias(f: Mapping[str, Any], graph_biases: Mapping[str, list[float]]) -> tuple[float | None, str]:
    assumed = f.get("forget_bias")
    if f["kind"] != "LSTM":
        return None, ""
    values = sorted(set(graph_biases.get(f["path"], [])))
    if len(values) == 1:
        return values[0], f"forget_bias {values[0]:g}: what the graph in the .meta file adds (read by TensorFlow)"
    if len(values) > 1:
        return assumed, (f"the .meta graph adds several forget biases to this cell ({', '.join(map(str, values))}): "
                         f"TensorFlow's side uses {assumed:g}")
    return assumed, (f"forget_bias not found in a .meta graph: TensorFlow's side uses {assumed:g}, as the NumPy "
                     "cell does (the check cannot tell a wrong forget bias)")


def _inputs(f: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """The sequence in processing order: a bw cell of a bidirectional RNN reads it reversed."""
    return x[:, ::-1] if f.get("go_backwards") else x


def _run_cell(f: Mapping[str, Any], values: Mapping[str, np.ndarray], x: np.ndarray,
              forget_bias: float | None) -> tuple[tuple[np.ndarray, list[np.ndarray]], str]:
    """tf.compat.v1.nn.dynamic_rnn over the real TF1 cell class, in float64, variables set to `values`."""
    tf = _tensorflow()
    v1 = tf.compat.v1
    cells = v1.nn.rnn_cell
    units, kind = f["units"], f["kind"]
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        if kind == "LSTM" and f["class"] == "BasicLSTMCell":
            cell, built = cells.BasicLSTMCell(units, forget_bias=forget_bias), \
                f"BasicLSTMCell({units}, forget_bias={forget_bias:g})"
        elif kind == "LSTM":
            peep = "w_i_diag" in values
            kwargs = dict(use_peepholes=peep, num_proj=f.get("projection_size"), forget_bias=forget_bias,
                          cell_clip=f.get("cell_clip"), proj_clip=f.get("proj_clip"))
            cell = cells.LSTMCell(units, **kwargs)
            built = f"LSTMCell({units}, " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in kwargs.items() if v not in (None, False)) + ")"
        elif kind == "GRU":
            cell, built = cells.GRUCell(units), f"GRUCell({units})"
        else:
            cell, built = cells.BasicRNNCell(units), f"BasicRNNCell({units})"
        inputs = v1.placeholder(tf.float64, (x.shape[0], x.shape[1], x.shape[2]))
        outputs, state = v1.nn.dynamic_rnn(cell, inputs, dtype=tf.float64)
        for var in v1.global_variables():
            role = _role_of(var.op.name, values)
            var.load(np.asarray(values[role], dtype=np.float64), sess)
        seq, final = sess.run([outputs, state], {inputs: _inputs(f, x)})
    states = [final.h, final.c] if kind == "LSTM" else [final]
    return (np.asarray(seq, np.float64), [np.asarray(s, np.float64) for s in states]), built


def _role_of(variable: str, values: Mapping[str, np.ndarray]) -> str:
    """The tensor role of a variable the cell created (`rnn/lstm_cell/projection/kernel` → projection/kernel)."""
    for role in sorted(values, key=len, reverse=True):
        if variable.endswith("/" + role):
            return role
    raise ValueError(f"the TF cell created {variable}, which the checkpoint has no tensor for")


def _run_raw_op(f: Mapping[str, Any], values: Mapping[str, np.ndarray], x: np.ndarray,
                forget_bias: float | None) -> tuple[tuple[np.ndarray, list[np.ndarray]], str]:
    """contrib cells TF 2.21 no longer has, computed step by step by their raw ops (float32)."""
    tf = _tensorflow()
    xs = _inputs(f, x).astype(np.float32)
    batch, units = x.shape[0], f["units"]
    value = {k: tf.constant(np.asarray(v, np.float32)) for k, v in values.items()}
    h = tf.zeros((batch, units), tf.float32)
    outputs = []
    if f["kind"] == "LSTM":
        c = tf.zeros((batch, units), tf.float32)
        zero = tf.zeros((units,), tf.float32)
        peep = "w_i_diag" in value
        bias = 0.0 if forget_bias is None else forget_bias
        for t in range(xs.shape[1]):
            step = tf.raw_ops.LSTMBlockCell(
                x=xs[:, t], cs_prev=c, h_prev=h, w=value["kernel"], wci=value.get("w_i_diag", zero),
                wcf=value.get("w_f_diag", zero), wco=value.get("w_o_diag", zero),
                b=value.get("bias", tf.zeros((4 * units,))), forget_bias=bias,
                cell_clip=f.get("cell_clip") or -1.0, use_peephole=peep)
            c, h = step.cs, step.h
            outputs.append(h.numpy())
        states = [h.numpy(), c.numpy()]
        built = f"raw op LSTMBlockCell(forget_bias={bias:g}, use_peephole={peep})"
    else:
        for t in range(xs.shape[1]):
            step = tf.raw_ops.GRUBlockCell(x=xs[:, t], h_prev=h, w_ru=value["gates/kernel"],
                                           w_c=value["candidate/kernel"],
                                           b_ru=value.get("gates/bias", tf.zeros((2 * units,))),
                                           b_c=value.get("candidate/bias", tf.zeros((units,))))
            h = step.h
            outputs.append(h.numpy())
        states = [h.numpy()]
        built = "raw op GRUBlockCell"
    seq = np.stack(outputs, axis=1).astype(np.float64)
    return (seq, [s.astype(np.float64) for s in states]), built
