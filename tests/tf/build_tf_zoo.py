#!/usr/bin/env python3
"""Build TensorFlow checkpoints and SavedModels for tests/tf, with TensorFlow's own answers beside them.

Run in its own process (it imports TensorFlow; the test process must not):

    python tests/tf/build_tf_zoo.py --out /tmp/tfzoo

Writes under OUT:
  <case>/...            the files TF wrote (TF1 Saver V2 / sharded / V1, TF2 tf.train.Checkpoint of
                        Keras 3 and tf_keras models, a 2-shard TF2 checkpoint, a tf_keras SavedModel,
                        a Keras 3 export)
  <case>/truth/k.npy    every variable's value as TF's reader returns it (`get_tensor`)
  corpus/<name>/truth   TF's values of each real checkpoint given with --corpus-prefix
  truth.json            per case: each variable's name, dtype, shape (tf.train.list_variables and the
                        reader's dtype map), its .npy or string list; the object graph and SavedModel
                        facts as TensorFlow's protobuf classes decode them; the model's own variable names

Values are random (seeded) so a misplaced block cannot pass by accident.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.compat.v1.nn.rnn_cell needs the legacy cells
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

v1 = tf.compat.v1
RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------------------- truth helpers
def dump_checkpoint(prefix: Path, out: Path, case: str) -> list[dict]:
    """Every variable of a checkpoint, as TF lists and reads it."""
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes = reader.get_variable_to_dtype_map()
    folder = out / case / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    variables = []
    for i, (name, shape) in enumerate(tf.train.list_variables(str(prefix))):
        dtype = dtypes[name]
        item = {"name": name, "dtype": dtype.name, "shape": list(shape)}
        item.update(dump_value(reader.get_tensor(name), dtype, folder / f"{i}.npy", out))
        variables.append(item)
    return variables


def dump_value(value, dtype, path: Path, out: Path) -> dict:
    if dtype == tf.string:
        flat = np.asarray(value, dtype=object).reshape(-1)
        return {"strings": [bytes(s).hex() for s in flat]}
    array = np.asarray(value)
    if dtype == tf.bfloat16:
        array = array.view(np.uint16)  # the exact bits; the test process has no bfloat16 dtype
    np.save(path, array)
    return {"npy": str(path.relative_to(out))}


def save_values(values: dict[str, np.ndarray], out: Path, case: str) -> dict[str, str]:
    folder = out / case / "session"
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for i, (name, value) in enumerate(sorted(values.items())):
        path = folder / f"{i}.npy"
        np.save(path, value)
        index[name] = str(path.relative_to(out))
    return index


def object_graph(prefix: Path) -> dict:
    """The checkpoint's object graph as TF's own protobuf class decodes it."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    raw = tf.train.load_checkpoint(str(prefix)).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(raw)
    return {"nodes": [{
        "children": [[c.node_id, c.local_name] for c in node.children],
        "attributes": [[a.name, a.full_name, a.checkpoint_key] for a in node.attributes],
        "slot_variables": [[s.original_variable_node_id, s.slot_name, s.slot_variable_node_id]
                           for s in node.slot_variables],
    } for node in graph.nodes]}


def saved_model_facts(folder: Path) -> dict:
    """saved_model.pb (and keras_metadata.pb when present) as TF's protobuf classes decode them."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString((folder / "saved_model.pb").read_bytes())
    meta = sm.meta_graphs[0]
    nodes = []
    for node in meta.object_graph_def.nodes:
        kind = node.WhichOneof("kind")
        item = {"kind": kind, "children": [[c.node_id, c.local_name] for c in node.children]}
        if kind == "variable":
            v = node.variable
            item["variable"] = {"name": v.name, "dtype": tf.as_dtype(v.dtype).name,
                                "shape": [d.size for d in v.shape.dim], "trainable": v.trainable}
        if kind == "user_object":
            item["user_object"] = {"identifier": node.user_object.identifier,
                                   "metadata": node.user_object.metadata}
        nodes.append(item)
    facts = {"schema_version": sm.saved_model_schema_version, "tags": list(meta.meta_info_def.tags),
             "tensorflow_version": meta.meta_info_def.tensorflow_version, "nodes": nodes}
    if (folder / "keras_metadata.pb").exists():
        from tf_keras.protobuf import saved_metadata_pb2

        km = saved_metadata_pb2.SavedMetadata.FromString((folder / "keras_metadata.pb").read_bytes())
        facts["keras_metadata"] = [{"node_id": n.node_id, "node_path": n.node_path, "identifier": n.identifier,
                                    "metadata": n.metadata} for n in km.nodes]
    return facts


def data_files(prefix: Path) -> list[str]:
    return sorted(p.name for p in prefix.parent.glob(prefix.name + ".data-*"))


# ----------------------------------------------------------------------------------------- TF1 graphs
def randomize(sess, variables) -> None:
    """Overwrite every float variable with random values (biases too) so each block is distinct."""
    for var in variables:
        dtype = var.dtype.base_dtype
        if dtype.is_floating:
            var.load(RNG.standard_normal(var.shape.as_list()).astype(dtype.as_numpy_dtype), sess)


def tf1_cells_graph() -> None:
    rnn = v1.nn.rnn_cell
    x = v1.placeholder(tf.float32, [2, 3, 3], name="x")
    outputs = []
    with v1.variable_scope("basic"):
        outputs.append(v1.nn.dynamic_rnn(rnn.BasicLSTMCell(5, forget_bias=0.5), x, dtype=tf.float32)[0])
    with v1.variable_scope("proj"):
        cell = rnn.LSTMCell(5, num_proj=4, use_peepholes=True)
        outputs.append(v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)[0])
    with v1.variable_scope("gru"):
        outputs.append(v1.nn.dynamic_rnn(rnn.GRUCell(6), x, dtype=tf.float32)[0])
    with v1.variable_scope("simple"):
        outputs.append(v1.nn.dynamic_rnn(rnn.BasicRNNCell(3), x, dtype=tf.float32)[0])
    with v1.variable_scope("stack"):
        multi = rnn.MultiRNNCell([rnn.LSTMCell(5), rnn.GRUCell(4)])
        outputs.append(v1.nn.dynamic_rnn(multi, x, dtype=tf.float32)[0])
    (fw, bw), _ = v1.nn.bidirectional_dynamic_rnn(rnn.LSTMCell(5), rnn.LSTMCell(4), x, dtype=tf.float32)
    outputs += [fw, bw]
    emb = v1.get_variable("emb/part", shape=(10, 6), partitioner=v1.fixed_size_partitioner(3))
    wide = v1.get_variable("wide/part", shape=(4, 9), partitioner=v1.fixed_size_partitioner(3, axis=1))
    loss = sum(tf.reduce_sum(tf.square(o)) for o in outputs)
    loss += tf.reduce_sum(tf.square(emb.as_tensor())) + tf.reduce_sum(tf.square(wide.as_tensor()))
    global_step = v1.train.get_or_create_global_step()
    train = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=global_step)
    odd_dtypes()
    return x, train


def odd_dtypes() -> None:
    """Every dtype a bundle stores by plain bytes, strings, an empty and a scalar tensor."""
    def const(name, value, dtype):
        v1.get_variable(name, initializer=tf.constant(value, dtype=dtype), trainable=False)

    const("types/bf16", RNG.standard_normal((3, 4)), tf.bfloat16)
    const("types/f16", RNG.standard_normal((2, 3)), tf.float16)
    const("types/f64", RNG.standard_normal(5), tf.float64)
    const("types/i8", [-128, -1, 0, 1, 127], tf.int8)
    const("types/i16", [-32768, 7, 32767], tf.int16)
    const("types/i32", [[-(2 ** 31), 5], [6, 2 ** 31 - 1]], tf.int32)
    const("types/i64", [-(2 ** 63), 3, 2 ** 63 - 1], tf.int64)
    const("types/u8", [0, 200, 255], tf.uint8)
    const("types/u16", [0, 65535], tf.uint16)
    const("types/bool", [True, False, True], tf.bool)
    const("types/c64", (RNG.standard_normal((2, 2)) + 1j * RNG.standard_normal((2, 2))), tf.complex64)
    const("types/c128", (RNG.standard_normal(3) + 1j * RNG.standard_normal(3)), tf.complex128)
    const("types/empty", np.zeros((0, 4)), tf.float32)
    const("types/scalar", 3.25, tf.float32)
    const("types/strings", [b"hello", b"", b"\x00\xff\x00", "gr\u00fc\u00df".encode(), b"x" * 300], tf.string)
    const("types/string_scalar", b"just one", tf.string)
    const("types/string_empty_list", np.array([], dtype=object).reshape(0, 2), tf.string)


def build_tf1_cells(out: Path, truth: dict) -> None:
    folder = out / "tf1_cells"
    with tf.Graph().as_default(), v1.Session() as sess:
        x, train = tf1_cells_graph()
        sess.run(v1.global_variables_initializer())
        saver = v1.train.Saver(max_to_keep=5)
        feed = {x: RNG.standard_normal((2, 3, 3)).astype(np.float32)}
        first = second = None
        for step in (1, 2):  # two saves: a folder must open the latest
            randomize(sess, [v for v in v1.global_variables() if "Adam" not in v.name])
            sess.run(train, feed)
            path = saver.save(sess, str(folder / "model.ckpt"), global_step=step)
            first, second = (path, None) if step == 1 else (first, path)
    truth["cases"]["tf1_cells"] = {
        "prefix": rel(second, out), "older_prefix": rel(first, out),
        "variables": dump_checkpoint(Path(second), out, "tf1_cells"),
        "data_files": data_files(Path(second)),
    }


def build_tf1_sharded(out: Path, truth: dict) -> None:
    """Saver(sharded=True) writes one shard per device: variables on two CPU devices."""
    folder = out / "tf1_sharded"
    folder.mkdir(parents=True, exist_ok=True)
    config = v1.ConfigProto(device_count={"CPU": 2})
    with tf.Graph().as_default(), v1.Session(config=config) as sess:
        with tf.device("/cpu:0"):
            v1.get_variable("dev0/kernel", shape=(6, 8))
            v1.get_variable("dev0/part", shape=(9, 2), partitioner=v1.fixed_size_partitioner(3))
        with tf.device("/cpu:1"):
            v1.get_variable("dev1/kernel", shape=(4, 5))
            v1.get_variable("dev1/name", initializer=tf.constant([b"a", b"bc"]), trainable=False)
        sess.run(v1.global_variables_initializer())
        randomize(sess, v1.global_variables())
        path = v1.train.Saver(sharded=True).save(sess, str(folder / "model.ckpt"), global_step=7)
    files = data_files(Path(path))
    if len(files) != 2:
        sys.exit(f"Saver(sharded=True) wrote {files}, not 2 shards")
    truth["cases"]["tf1_sharded"] = {"prefix": rel(path, out), "data_files": files,
                                     "variables": dump_checkpoint(Path(path), out, "tf1_sharded")}


def build_tf1_v1(out: Path, truth: dict) -> None:
    """The old single-file format. TF cannot read partitioned V1 variables back, so the session's own
    values are the truth for them (and for every variable, as a second oracle)."""
    folder = out / "tf1_v1"
    folder.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, [2, 3, 3])
        with v1.variable_scope("rnnlm"):
            cell = v1.nn.rnn_cell.MultiRNNCell([v1.nn.rnn_cell.BasicLSTMCell(4) for _ in range(2)])
            v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)
        part = v1.get_variable("emb/part", shape=(10, 6), partitioner=v1.fixed_size_partitioner(3))
        wide = v1.get_variable("wide/part", shape=(4, 9), partitioner=v1.fixed_size_partitioner(3, axis=1))
        v1.get_variable("types/i32", initializer=tf.constant([[-5, 6], [7, 2 ** 31 - 1]]), trainable=False)
        v1.get_variable("types/i64", initializer=tf.constant([-(2 ** 63), 2 ** 40], tf.int64), trainable=False)
        v1.get_variable("types/f16", initializer=tf.constant(RNG.standard_normal(4), tf.float16), trainable=False)
        v1.get_variable("types/f64", initializer=tf.constant(RNG.standard_normal(3), tf.float64), trainable=False)
        v1.get_variable("types/bool", initializer=tf.constant([True, False]), trainable=False)
        v1.get_variable("types/strings", initializer=tf.constant([b"v1", b"", b"\x00\xff"]), trainable=False)
        sess.run(v1.global_variables_initializer())
        randomize(sess, v1.global_variables())
        saver = v1.train.Saver(write_version=v1.train.SaverDef.V1)
        path = saver.save(sess, str(folder / "model.ckpt"), write_meta_graph=False)
        values = {v.op.name: sess.run(v) for v in v1.global_variables()
                  if "/part/part_" not in v.op.name and v.dtype.base_dtype != tf.string}
        strings = {v.op.name: [bytes(b).hex() for b in sess.run(v).reshape(-1)] for v in v1.global_variables()
                   if v.dtype.base_dtype == tf.string}
        values["emb/part"], values["wide/part"] = sess.run(part.as_tensor()), sess.run(wide.as_tensor())
        shapes = {name: list(v.shape) for name, v in values.items()}
    reader = tf.train.load_checkpoint(path)
    unpartitioned = [name for name in reader.get_variable_to_shape_map() if not name.endswith("/part")]
    truth["cases"]["tf1_v1"] = {
        "file": rel(path, out), "shapes": shapes,
        "dtypes": {k: v.name for k, v in reader.get_variable_to_dtype_map().items()},
        "session_values": save_values(values, out, "tf1_v1"), "session_strings": strings,
        "variables": dump_checkpoint_names(Path(path), out, "tf1_v1", unpartitioned),
    }


def dump_checkpoint_names(prefix: Path, out: Path, case: str, names: list[str]) -> list[dict]:
    """Like dump_checkpoint, for the names TF can list (V1 partitioned variables it cannot)."""
    reader = tf.train.load_checkpoint(str(prefix))
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    folder = out / case / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i, name in enumerate(sorted(names)):
        item = {"name": name, "dtype": dtypes[name].name, "shape": list(shapes[name])}
        try:
            item.update(dump_value(reader.get_tensor(name), dtypes[name], folder / f"{i}.npy", out))
        except tf.errors.OpError as exc:  # the V1 reader refuses some dtypes: the session values remain
            item["tf_error"] = exc.message
        items.append(item)
    return items


# ----------------------------------------------------------------------------------------- TF2 / Keras
def keras_model(K):
    """Input(7,3) → LSTM(5) → Bidirectional(GRU(4)) → SimpleRNN(6) → Dense(2), random weights."""
    L = K.layers
    inp = K.Input((7, 3))
    x = L.LSTM(5, return_sequences=True, name="enc_lstm")(inp)
    x = L.Bidirectional(L.GRU(4, return_sequences=True), name="bi_gru")(x)
    x = L.SimpleRNN(6, name="srnn")(x)
    out = L.Dense(2, name="head")(x)
    model = K.Model(inp, out)
    model.set_weights([RNG.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def fit_one_step(model) -> None:
    model.compile(optimizer="adam", loss="mse")
    model.fit(RNG.standard_normal((4, 7, 3)).astype(np.float32), RNG.standard_normal((4, 2)).astype(np.float32),
              epochs=1, batch_size=4, verbose=0)


def variable_names(framework: str, model) -> list[str]:
    """The names TF gives the model's variables (what the object graph's full_name should say)."""
    if framework == "tf_keras":
        return [w.name.rsplit(":", 1)[0] for w in model.weights]
    return [w.value.name.rsplit(":", 1)[0] for w in model.weights]


def build_tf2(out: Path, truth: dict) -> None:
    import keras
    import tf_keras

    for framework, K in (("keras3", keras), ("tf_keras", tf_keras)):
        model = keras_model(K)
        names = variable_names(framework, model)
        weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        case = f"{framework}_nofit"
        prefix = tf.train.Checkpoint(model=model).write(str(out / case / "ckpt"))
        add_tf2_case(out, truth, case, prefix, names, weights)
        fit_one_step(model)
        names = variable_names(framework, model)
        weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
        case = f"{framework}_fit"
        prefix = tf.train.Checkpoint(model=model).save(str(out / case / "ckpt"))  # save(): writes `checkpoint`
        add_tf2_case(out, truth, case, prefix, names, weights)
        if framework == "tf_keras":
            build_two_shards(out, truth, model, names, weights)
            build_tf_keras_savedmodel(out, truth, model, names)
        else:
            build_keras3_export(out, truth, model, names)


def add_tf2_case(out: Path, truth: dict, case: str, prefix: str, names: list[str], weights: dict) -> None:
    truth["cases"][case] = {"prefix": rel(prefix, out), "variables": dump_checkpoint(Path(prefix), out, case),
                            "object_graph": object_graph(Path(prefix)), "model_variable_names": names,
                            "model_weights": save_values(weights, out, case), "data_files": data_files(Path(prefix))}


def build_two_shards(out: Path, truth: dict, model, names: list[str], weights: dict) -> None:
    """TF2's sharding policy splits a checkpoint into data files of at most N bytes."""
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=600)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    case = "tf_keras_shards"
    prefix = tf.train.Checkpoint(model=model).write(str(out / case / "ckpt"), options=options)
    if len(data_files(Path(prefix))) < 2:
        sys.exit(f"the sharding policy wrote {data_files(Path(prefix))}")
    add_tf2_case(out, truth, case, prefix, names, weights)


def build_tf_keras_savedmodel(out: Path, truth: dict, model, names: list[str]) -> None:
    folder = out / "tf_keras_savedmodel"
    model.save(str(folder), save_format="tf")
    prefix = folder / "variables" / "variables"
    truth["cases"]["tf_keras_savedmodel"] = {
        "dir": rel(folder, out), "prefix": rel(prefix, out), "model_variable_names": names,
        "variables": dump_checkpoint(prefix, out, "tf_keras_savedmodel"),
        "object_graph": object_graph(prefix), "saved_model": saved_model_facts(folder)}


def build_keras3_export(out: Path, truth: dict, model, names: list[str]) -> None:
    folder = out / "keras3_export"
    model.export(str(folder), verbose=False)
    prefix = folder / "variables" / "variables"
    truth["cases"]["keras3_export"] = {
        "dir": rel(folder, out), "prefix": rel(prefix, out), "model_variable_names": names,
        "variables": dump_checkpoint(prefix, out, "keras3_export"),
        "object_graph": object_graph(prefix), "saved_model": saved_model_facts(folder)}


# ----------------------------------------------------------------------------------------- main
def dtype_names() -> dict[str, str]:
    """TF's name of every DataType enum value this TF knows."""
    names = {}
    for number in range(1, 64):
        try:
            names[str(number)] = tf.as_dtype(number).name
        except TypeError:
            pass
    return names


def rel(path, out: Path) -> str:
    return str(Path(path).resolve().relative_to(out.resolve()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--corpus-prefix", action="append", default=[], type=Path,
                        help="a real checkpoint to dump TF's truth of (repeatable)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    truth = {"tensorflow": tf.__version__, "cases": {},
             "dtype_names": dtype_names()}
    v1.set_random_seed(1)
    tf.random.set_seed(1)
    build_tf1_cells(out, truth)
    build_tf1_sharded(out, truth)
    build_tf1_v1(out, truth)
    build_tf2(out, truth)
    for prefix in args.corpus_prefix:
        case = "corpus/" + prefix.name
        truth["cases"][case] = {"prefix": str(prefix), "variables": dump_checkpoint(prefix, out, case)}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
