"""Build the TFLite zoo: Keras recurrent models converted with TensorFlow's own converter, plus the truth.

Run by tests/tflite/conftest.py in a subprocess (the test process never imports TensorFlow):

    python tests/tflite/build_tflite.py --out DIR              # every case, two processes at a time
    python tests/tflite/build_tflite.py --out DIR --cases X,Y  # some cases in one process (one framework)

TF 2.21's converter segfaults on full-int8 quantization of WHILE loops (ISOLATED): each of those runs in
its own process. Every other case of a framework runs in one process (TensorFlow is imported once);
a case whose process dies before its record is complete is run again alone, so one crash costs no other
case. A failed case is recorded (return code and the end of stderr), never fatal. Per case the folder gets:
  <case>.tflite                     the converted model
  <case>/keras/<layer>__<k>.npy     the Keras layer's get_weights()[k]
  <case>/interp/<sg>_<tensor>.npy   the TF interpreter's value of every stored constant tensor
  <case>.json                       layer names, units, weight files, the interpreter's tensor and op details
and, once per (framework, model), the Keras model itself: <framework>-<model>.keras (Keras 3) or .h5
(tf_keras), written by the float32 case (every variant converts the same seeded weights). DIR/truth.json
lists every case's record.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

T, F, U = 6, 48, 40  # steps, features, units: every per-gate weight has >= 1024 elements, so
# dynamic-range quantization applies to all of them (TF leaves smaller constants in float)
MODELS = ("lstm", "bilstm", "gru", "gru_v1", "srnn", "rnn_lstmcell", "stacked", "unroll")
VARIANTS = ("float32", "dynamic", "float16", "int8")
FRAMEWORKS = ("keras3", "tf_keras")
EXTRA = (  # (framework, model, variant): layouts the main grid does not produce
    ("tf_keras", "lstm", "offset"),    # buffers stored after the flatbuffer (as in files over 2 GB)
    ("keras3", "gru", "offset"),
    ("tf_keras", "lstm_tm", "float32"),  # time_major=True
    ("keras3", "lstm_flex", "flex"),   # batch=None: TensorList kept as Flex custom ops
)


# Full-int8 conversions of the models that become WHILE loops: the converter crashes (SIGSEGV) on them.
LOOPS = {"keras3": ("lstm", "bilstm", "gru", "gru_v1", "srnn", "rnn_lstmcell", "stacked"),
         "tf_keras": ("gru", "gru_v1", "srnn", "rnn_lstmcell")}
ISOLATED = frozenset(f"{fw}-{m}-int8" for fw, models in LOOPS.items() for m in models)


def all_cases() -> list[str]:
    grid = [(fw, m, v) for fw in FRAMEWORKS for m in MODELS for v in VARIANTS]
    return ["-".join(c) for c in grid + list(EXTRA)]


def keras_file(framework: str, model: str) -> str:
    return f"{framework}-{model}.keras" if framework == "keras3" else f"{framework}-{model}.h5"


# ----------------------------------------------------------------------------------------------
# one case (runs with TensorFlow imported)


def keras_module(framework: str):
    if framework == "tf_keras":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as keras
    else:
        import keras
    return keras


def build_model(keras, model: str):
    """A small functional model with named layers; weights are random (zero biases would be folded away)."""
    L = keras.layers
    batch = None if model == "lstm_flex" else 1
    inp = keras.Input(shape=(T, F), batch_size=batch, name="x")
    if model in ("lstm", "lstm_flex"):
        y = L.LSTM(U, name="lstm")(inp)
    elif model == "lstm_tm":
        y = L.Lambda(lambda t: keras.backend.permute_dimensions(t, (1, 0, 2)), name="to_tm")(inp)
        y = L.LSTM(U, time_major=True, name="lstm")(y)
    elif model == "bilstm":
        y = L.Bidirectional(L.LSTM(U, name="lstm"), name="bidi")(inp)
    elif model == "gru":
        y = L.GRU(U, name="gru")(inp)
    elif model == "gru_v1":
        y = L.GRU(U, reset_after=False, name="gru")(inp)
    elif model == "srnn":
        y = L.SimpleRNN(U, name="srnn")(inp)
    elif model == "rnn_lstmcell":
        y = L.RNN(L.LSTMCell(U, name="cell"), name="rnn")(inp)
    elif model == "stacked":
        y = L.LSTM(U, return_sequences=True, name="lstm_a")(inp)
        y = L.LSTM(U, name="lstm_b")(y)
    elif model == "unroll":
        y = L.LSTM(U, unroll=True, name="lstm")(inp)
    else:
        raise SystemExit(f"unknown model {model}")
    m = keras.Model(inp, y, name=f"m_{model}")
    rng = np.random.default_rng(7)
    m.set_weights([(rng.standard_normal(w.shape) * 0.3).astype(np.float32) for w in m.get_weights()])
    return m


def convert(tf, model, variant: str) -> bytes:
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant in ("dynamic", "float16", "int8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        conv.target_spec.supported_types = [tf.float16]
    if variant == "int8":
        rng = np.random.default_rng(0)
        conv.representative_dataset = lambda: ([rng.standard_normal((1, T, F)).astype(np.float32)]
                                               for _ in range(16))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if variant == "offset":
        conv._experimental_use_buffer_offset = True
    if variant == "flex":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        conv._experimental_lower_tensor_list_ops = False
    return conv.convert()


def recurrent_layers(keras, model) -> list[dict]:
    """Every recurrent layer with its Keras weights, in model order (Bidirectional: both inner layers)."""
    out = []
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "Bidirectional":
            for direction, inner in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
                out.append(layer_record(inner, parent=layer.name, direction=direction))
        elif hasattr(layer, "cell"):
            out.append(layer_record(layer))
    return out


def layer_record(layer, parent: str | None = None, direction: str | None = None) -> dict:
    cell = layer.cell
    return {"name": layer.name, "class": type(layer).__name__, "cell_class": type(cell).__name__,
            "cell_name": cell.name, "parent": parent, "direction": direction, "units": int(cell.units),
            "reset_after": bool(getattr(cell, "reset_after", False)),
            "weights": [np.asarray(w) for w in layer.get_weights()]}


def interpreter_view(tf, path: Path, folder: Path, spg) -> dict:
    """The interpreter's tensor details for every subgraph, its op details, and every constant's value.
    Default delegates (XNNPACK) are kept out: they add DELEGATE nodes to the op list. (This interpreter has
    no Flex delegate, so a model with Flex ops cannot allocate: its constants are not recorded.)"""
    resolver = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        it = tf.lite.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    except (ValueError, RuntimeError) as err:
        return {"error": str(err)[:500]}
    buf = path.read_bytes()
    model = spg.Model.GetRootAsModel(buf, 0)
    subgraphs, constants = [], {}
    for sg in range(model.SubgraphsLength()):
        details = it.get_tensor_details(subgraph_index=sg)
        subgraphs.append([tensor_detail(d) for d in details])
    try:
        it.allocate_tensors()
    except RuntimeError as err:
        return {"subgraphs": subgraphs, "ops": ops_view(it), "constants": {}, "allocate_error": str(err)[:500]}
    (folder / "interp").mkdir(parents=True, exist_ok=True)
    for sg in range(model.SubgraphsLength()):
        graph = model.Subgraphs(sg)
        for t in range(graph.TensorsLength()):
            tensor, buffer = graph.Tensors(t), model.Buffers(graph.Tensors(t).Buffer())
            stored = buffer.DataLength() > 0 or (buffer.Offset() > 1 and buffer.Size() > 0)
            if tensor.IsVariable() or not stored:
                continue
            name = f"{sg}_{t}.npy"
            np.save(folder / "interp" / name, it.get_tensor(t, subgraph_index=sg))
            constants[f"{sg}/{t}"] = f"interp/{name}"
    return {"subgraphs": subgraphs, "ops": ops_view(it), "constants": constants}


def tensor_detail(d: dict) -> dict:
    q = d["quantization_parameters"]
    return {"name": d["name"], "index": int(d["index"]), "shape": [int(x) for x in d["shape"]],
            "shape_signature": [int(x) for x in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name,
            "scales": [float(x) for x in q["scales"]], "zero_points": [int(x) for x in q["zero_points"]],
            "quantized_dimension": int(q["quantized_dimension"])}


def ops_view(it) -> list[dict]:
    return [{"index": int(op["index"]), "op_name": op["op_name"], "inputs": [int(x) for x in op["inputs"]],
             "outputs": [int(x) for x in op["outputs"]]} for op in it._get_ops_details()]


def load_schema(tf):
    from tensorflow.lite.python import schema_py_generated as spg
    return spg


def run_case(case: str, out: Path) -> None:
    framework, model_kind, variant = case.split("-")
    keras = keras_module(framework)
    import tensorflow as tf

    clear = getattr(keras.backend, "clear_session", None) or keras.utils.clear_session
    clear()  # one process converts many models: start each from a fresh graph and fresh names
    keras.utils.set_random_seed(1)
    model = build_model(keras, model_kind)
    if variant == "float32" and model_kind in MODELS:  # (lstm_tm's Lambda cannot be saved: it holds a module)
        model.save(str(out / keras_file(framework, model_kind)))
    folder = out / case
    (folder / "keras").mkdir(parents=True, exist_ok=True)
    layers = recurrent_layers(keras, model)
    for layer in layers:
        files = []
        for k, w in enumerate(layer.pop("weights")):
            name = f"keras/{layer['name']}__{k}.npy"
            np.save(folder / name, w)
            files.append({"file": name, "shape": list(w.shape)})
        layer["weights"] = files
    record = {"case": case, "framework": framework, "model": model_kind, "variant": variant,
              "model_name": model.name, "layers": layers, "steps": T, "features": F,
              "keras_file": keras_file(framework, model_kind) if model_kind in MODELS else None}
    (out / f"{case}.json").write_text(json.dumps(record, indent=1))  # written before converting: a crash keeps it
    path = out / f"{case}.tflite"
    path.write_bytes(convert(tf, model, variant))
    record["file"] = path.name
    record["interpreter"] = interpreter_view(tf, path, folder, load_schema(tf))
    (out / f"{case}.json").write_text(json.dumps(record, indent=1))


# ----------------------------------------------------------------------------------------------
# every case: one process per framework, the crashing conversions each in their own


def jobs() -> list[list[str]]:
    """Cases grouped per process, longest first: each framework's convertible cases, then each ISOLATED one."""
    cases = all_cases()
    groups = [[c for c in cases if c.startswith(fw + "-") and c not in ISOLATED] for fw in FRAMEWORKS]
    return sorted(groups, key=len, reverse=True) + [[c] for c in cases if c in ISOLATED]


def run_all(out: Path, workers: int = 2) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:
        done = dict(kv for group in pool.map(lambda cases: run_group(cases, out), jobs()) for kv in group.items())
    records = [done[case] for case in all_cases()]
    (out / "truth.json").write_text(json.dumps(records, indent=1))
    print(f"{sum(r['status'] == 'ok' for r in records)} of {len(records)} conversions succeeded")


def run_group(cases: list[str], out: Path) -> dict[str, dict]:
    """Run the cases in one process; any case its process did not finish (a crash) runs again alone."""
    start = time.monotonic()
    proc = run_child(cases, out)
    print(f"{time.monotonic() - start:6.1f} s  {len(cases)} case(s) from {cases[0]}, exit {proc.returncode}",
          flush=True)
    records = {}
    for case in cases:
        record = read_record(out, case)
        if "done" not in record and len(cases) > 1:
            return {**records, **{c: r for c in cases[len(records):] for c, r in run_group([c], out).items()}}
        ok = proc.returncode == 0 and "file" in record or "done" in record and "file" in record
        record.update(status="ok" if ok else "failed", returncode=0 if "done" in record else proc.returncode,
                      stderr_tail="" if ok else proc.stderr[-1500:])
        records[case] = record
    return records


def read_record(out: Path, case: str) -> dict:
    info = out / f"{case}.json"
    return json.loads(info.read_text()) if info.exists() else {"case": case}


def run_child(cases: list[str], out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, __file__, "--out", str(out), "--cases", ",".join(cases)],
                          env=env, capture_output=True, text=True, timeout=3000)


def run_cases(cases: list[str], out: Path) -> None:
    for case in cases:
        run_case(case, out)
        record = read_record(out, case)
        record["done"] = True  # the case finished: a later crash of this process does not concern it
        (out / f"{case}.json").write_text(json.dumps(record, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cases", help="comma-separated cases, run in this process (one framework)")
    parser.add_argument("--case", help="one case (same as --cases with one)")
    args = parser.parse_args()
    if args.cases or args.case:
        run_cases((args.cases or args.case).split(","), args.out)
    else:
        run_all(args.out)


if __name__ == "__main__":
    main()
