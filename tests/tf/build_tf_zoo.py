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


def tf1_cells_graph():
    """Every TF1 cell and wrapper the reader knows, each fed the same x; returns (x, train op, runs).
    A run is one output tensor of TF's forward pass and the cells (by scope) that computed it."""
    rnn = v1.nn.rnn_cell
    x = v1.placeholder(tf.float32, [2, 3, 3], name="x")
    runs = []

    def run(name, output, chain, forget_bias=None, **extra):
        runs.append(dict(name=name, tensor=output, chain=chain, forget_bias=forget_bias, **extra))

    with v1.variable_scope("basic"):
        run("basic", v1.nn.dynamic_rnn(rnn.BasicLSTMCell(5, forget_bias=0.5), x, dtype=tf.float32)[0],
            ["basic/rnn/basic_lstm_cell"], 0.5)
    with v1.variable_scope("proj"):
        cell = rnn.LSTMCell(5, num_proj=4, use_peepholes=True)
        run("proj", v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)[0], ["proj/rnn/lstm_cell"], 1.0)
    with v1.variable_scope("peep"):
        cell = rnn.LSTMCell(4, use_peepholes=True)
        run("peep", v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)[0], ["peep/rnn/lstm_cell"], 1.0)
    with v1.variable_scope("projonly"):
        cell = rnn.LSTMCell(6, num_proj=3)
        run("projonly", v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)[0], ["projonly/rnn/lstm_cell"], 1.0)
    with v1.variable_scope("static"):
        steps = tf.unstack(x, axis=1)
        out, _ = v1.nn.static_rnn(rnn.BasicLSTMCell(4, forget_bias=0.25), steps, dtype=tf.float32)
        run("static", tf.stack(out, axis=1), ["static/rnn/basic_lstm_cell"], 0.25)
    with v1.variable_scope("gru"):
        run("gru", v1.nn.dynamic_rnn(rnn.GRUCell(6), x, dtype=tf.float32)[0], ["gru/rnn/gru_cell"])
    with v1.variable_scope("simple"):
        run("simple", v1.nn.dynamic_rnn(rnn.BasicRNNCell(3), x, dtype=tf.float32)[0], ["simple/rnn/basic_rnn_cell"])
    with v1.variable_scope("stack"):
        multi = rnn.MultiRNNCell([rnn.LSTMCell(5), rnn.GRUCell(4)])
        run("stack", v1.nn.dynamic_rnn(multi, x, dtype=tf.float32)[0],
            ["stack/rnn/multi_rnn_cell/cell_0/lstm_cell", "stack/rnn/multi_rnn_cell/cell_1/gru_cell"], 1.0)
    (fw, bw), _ = v1.nn.bidirectional_dynamic_rnn(rnn.LSTMCell(5), rnn.LSTMCell(4), x, dtype=tf.float32)
    run("bidi_fw", fw, ["bidirectional_rnn/fw/lstm_cell"], 1.0)
    run("bidi_bw", bw, ["bidirectional_rnn/bw/lstm_cell"], 1.0, reverse=True)
    stacked = stack_bidirectional([rnn.LSTMCell(3), rnn.LSTMCell(2)], [rnn.LSTMCell(3), rnn.LSTMCell(2)], x)
    run("stack_bidi", stacked, [], 1.0, stack_bidi=[
        ["stack_bidirectional_rnn/cell_0/bidirectional_rnn/fw/lstm_cell",
         "stack_bidirectional_rnn/cell_0/bidirectional_rnn/bw/lstm_cell"],
        ["stack_bidirectional_rnn/cell_1/bidirectional_rnn/fw/lstm_cell",
         "stack_bidirectional_rnn/cell_1/bidirectional_rnn/bw/lstm_cell"]])
    emb = v1.get_variable("emb/part", shape=(10, 6), partitioner=v1.fixed_size_partitioner(3))
    wide = v1.get_variable("wide/part", shape=(4, 9), partitioner=v1.fixed_size_partitioner(3, axis=1))
    embedding = v1.get_variable("embedding", shape=(20, 3))
    soft_w, soft_b = v1.get_variable("softmax/w", shape=(5, 7)), v1.get_variable("softmax/b", shape=(7,))
    outputs = [r["tensor"] for r in runs]
    loss = sum(tf.reduce_sum(tf.square(o)) for o in outputs)
    loss += tf.reduce_sum(tf.square(emb.as_tensor())) + tf.reduce_sum(tf.square(wide.as_tensor()))
    loss += tf.reduce_sum(tf.square(embedding)) + tf.reduce_sum(tf.square(fw[:, -1] @ soft_w + soft_b))
    global_step = v1.train.get_or_create_global_step()
    optimizer = v1.train.AdamOptimizer(0.01)
    train = optimizer.minimize(loss, global_step=global_step)
    odd_dtypes()
    return x, train, runs, list(optimizer.variables()) + [global_step]


def variable_kinds(optimizer_variables) -> dict:
    """TF's own account of which saved variables are the model's and which the optimizer's (by the name
    the Saver gives them: a partitioned variable's full name), with their sizes."""
    def full(v):
        info = getattr(v, "_save_slice_info", None)
        return info.full_name if info else v.op.name

    def size(v):
        info = getattr(v, "_save_slice_info", None)
        return int(np.prod(info.full_shape if info else v.shape.as_list()))

    opt = {id(v) for v in optimizer_variables}
    model = {full(v): size(v) for v in v1.global_variables() if id(v) not in opt and v.dtype.base_dtype != tf.string}
    optimizer = {full(v): size(v) for v in optimizer_variables}
    return {"model_variables": model, "optimizer_variables": optimizer}


def stack_bidirectional(forward, backward, x):
    """contrib's stack_bidirectional_dynamic_rnn (gone in TF 2): its scopes and its wiring, by hand."""
    out = x
    with v1.variable_scope("stack_bidirectional_rnn"):
        for i, (fw, bw) in enumerate(zip(forward, backward)):
            with v1.variable_scope(f"cell_{i}"):
                (a, b), _ = v1.nn.bidirectional_dynamic_rnn(fw, bw, out, dtype=tf.float32)
                out = tf.concat([a, b], axis=-1)
    return out


def save_runs(sess, runs, feed, out: Path, case: str) -> list[dict]:
    """TF's forward pass of every run, with the values just saved: the truth of the cells."""
    folder = out / case / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    x = next(iter(feed.values()))
    np.save(folder / "x.npy", x)
    values = sess.run([r["tensor"] for r in runs], feed)
    items = []
    for r, value in zip(runs, values):
        np.save(folder / f"{r['name']}.npy", value)
        item = {k: v for k, v in r.items() if k != "tensor"}
        item.update(x=str((folder / "x.npy").relative_to(out)), y=str((folder / f"{r['name']}.npy").relative_to(out)))
        items.append(item)
    return items


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
        x, train, runs, optimizer_variables = tf1_cells_graph()
        kinds = variable_kinds(optimizer_variables)
        sess.run(v1.global_variables_initializer())
        saver = v1.train.Saver(max_to_keep=5)
        feed = {x: RNG.standard_normal((2, 3, 3)).astype(np.float32)}
        first = second = None
        for step in (1, 2):  # two saves: a folder must open the latest
            randomize(sess, [v for v in v1.global_variables() if "Adam" not in v.name])
            sess.run(train, feed)
            path = saver.save(sess, str(folder / "model.ckpt"), global_step=step)
            first, second = (path, None) if step == 1 else (first, path)
        recorded = save_runs(sess, runs, feed, out, "tf1_cells")
    truth["cases"]["tf1_cells"] = {
        "prefix": rel(second, out), "older_prefix": rel(first, out),
        "variables": dump_checkpoint(Path(second), out, "tf1_cells"),
        "data_files": data_files(Path(second)), "runs": recorded, **kinds,
    }


def build_tf1_more(out: Path, truth: dict) -> None:
    """No .meta (the forget bias cannot be read back), RMSProp slots, and a tf_keras LSTM layer in a
    TF1 graph saved by a TF1 Saver (Keras names: klstm/lstm_cell/kernel beside recurrent_kernel)."""
    import tf_keras

    folder = out / "tf1_more"
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, [2, 4, 3], name="x")
        runs = []
        with v1.variable_scope("enc"):
            y = v1.nn.dynamic_rnn(v1.nn.rnn_cell.LSTMCell(4, forget_bias=0.7), x, dtype=tf.float32)[0]
            runs.append(dict(name="enc", tensor=y, chain=["enc/rnn/lstm_cell"], forget_bias=0.7))
        k = tf_keras.layers.LSTM(3, name="klstm", return_sequences=True)(x)
        runs.append(dict(name="klstm", tensor=k, chain=["klstm"], forget_bias=None))
        loss = tf.reduce_sum(tf.square(y)) + tf.reduce_sum(tf.square(k))
        optimizer = v1.train.RMSPropOptimizer(0.01, momentum=0.5)
        train = optimizer.minimize(loss)
        kinds = variable_kinds(optimizer.variables())
        sess.run(v1.global_variables_initializer())
        feed = {x: RNG.standard_normal((2, 4, 3)).astype(np.float32)}
        randomize(sess, [v for v in v1.global_variables() if "RMSProp" not in v.name and "Momentum" not in v.name])
        sess.run(train, feed)
        path = v1.train.Saver().save(sess, str(folder / "model.ckpt"), write_meta_graph=False)
        recorded = save_runs(sess, runs, feed, out, "tf1_more")
    truth["cases"]["tf1_more"] = {"prefix": rel(path, out), "variables": dump_checkpoint(Path(path), out, "tf1_more"),
                                  "runs": recorded, **kinds}


# ----------------------------------------------------------------------------------------- hand-made TF1
# contrib cells (gone in TF 2) and TF 0.x / 1.0 variable names: variables created with the exact names
# and shapes of beyond-keras.md §0.2 / §2, their forward pass computed by TensorFlow itself (the raw
# LSTMBlockCell / BlockLSTM / GRUBlockCell ops the contrib cells ran, or today's cell classes loaded
# with the values under their old names).
def weights(*shape) -> np.ndarray:
    return (0.6 * RNG.standard_normal(shape)).astype(np.float32)


def raw_lstm_block(x, kernel, bias, forget_bias, peep=None):
    batch, units = x.shape[0], kernel.shape[1] // 4
    zero = np.zeros(units, np.float32)
    wci, wcf, wco = peep if peep is not None else (zero, zero, zero)
    c = h = tf.zeros((batch, units))
    outs = []
    for t in range(x.shape[1]):
        step = tf.raw_ops.LSTMBlockCell(x=x[:, t], cs_prev=c, h_prev=h, w=kernel, wci=wci, wcf=wcf, wco=wco, b=bias,
                                        forget_bias=forget_bias, cell_clip=-1.0, use_peephole=peep is not None)
        c, h = step.cs, step.h
        outs.append(h.numpy())
    return np.stack(outs, axis=1)


def raw_block_lstm(x, kernel, bias, forget_bias):
    """The fused op of LSTMBlockFusedCell: time-major, all steps at once."""
    batch, units = x.shape[0], kernel.shape[1] // 4
    zero = np.zeros(units, np.float32)
    result = tf.raw_ops.BlockLSTM(seq_len_max=np.int64(x.shape[1]), x=np.transpose(x, (1, 0, 2)),
                                  cs_prev=np.zeros((batch, units), np.float32), h_prev=np.zeros((batch, units), np.float32),
                                  w=kernel, wci=zero, wcf=zero, wco=zero, b=bias, forget_bias=forget_bias,
                                  cell_clip=-1.0, use_peephole=False)
    return np.transpose(result.h.numpy(), (1, 0, 2))


def raw_gru_block(x, w_ru, w_c, b_ru, b_c):
    h = tf.zeros((x.shape[0], w_c.shape[1]))
    outs = []
    for t in range(x.shape[1]):
        h = tf.raw_ops.GRUBlockCell(x=x[:, t], h_prev=h, w_ru=w_ru, w_c=w_c, b_ru=b_ru, b_c=b_c).h
        outs.append(h.numpy())
    return np.stack(outs, axis=1)


def modern_forward(make_cells, values_per_cell, x):
    """Today's TF1 cell classes (a MultiRNNCell when several), their variables loaded with `values_per_cell`
    (role → array per cell), run by dynamic_rnn: TF's forward pass of a checkpoint with old names."""
    with tf.Graph().as_default(), v1.Session() as sess:
        cells = [make() for make in make_cells]
        cell = cells[0] if len(cells) == 1 else v1.nn.rnn_cell.MultiRNNCell(cells)
        inputs = v1.placeholder(tf.float32, x.shape)
        y = v1.nn.dynamic_rnn(cell, inputs, dtype=tf.float32)[0]
        for var in v1.global_variables():
            k = int(var.op.name.split("/cell_")[1].split("/")[0]) if "/cell_" in var.op.name else 0
            role = next(r for r in sorted(values_per_cell[k], key=len, reverse=True) if var.op.name.endswith("/" + r))
            var.load(values_per_cell[k][role], sess)
        return sess.run(y, {inputs: x})


def build_tf1_handmade(out: Path, truth: dict) -> None:
    eager = tf.executing_eagerly()
    assert eager
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    variables: dict[str, np.ndarray] = {}
    runs = []

    def add(name, value):
        variables[name] = value
        return value

    # contrib LSTMBlockCell (scope lstm_cell, peepholes): the raw LSTMBlockCell op, forget_bias 1
    k, b = add("block/rnn/lstm_cell/kernel", weights(3 + 5, 20)), add("block/rnn/lstm_cell/bias", weights(20))
    peep = tuple(add(f"block/rnn/lstm_cell/w_{g}_diag", weights(5)) for g in "ifo")
    runs.append(dict(name="block", y=raw_lstm_block(x, k, b, 1.0, peep), chain=["block/rnn/lstm_cell"], forget_bias=1.0))
    # contrib LSTMBlockFusedCell: the fused BlockLSTM op
    k, b = add("fused/lstm_fused_cell/kernel", weights(3 + 4, 16)), add("fused/lstm_fused_cell/bias", weights(16))
    runs.append(dict(name="fused", y=raw_block_lstm(x, k, b, 1.0), chain=["fused/lstm_fused_cell"], forget_bias=1.0))
    # contrib CudnnCompatibleLSTMCell: LSTMBlockCell with forget_bias 0, gates i, c, f, o
    k = add("cudnn/cudnn_compatible_lstm_cell/kernel", weights(3 + 4, 16))
    b = add("cudnn/cudnn_compatible_lstm_cell/bias", weights(16))
    runs.append(dict(name="cudnn", y=raw_lstm_block(x, k, b, 0.0), chain=["cudnn/cudnn_compatible_lstm_cell"],
                     forget_bias=0.0))
    # contrib CudnnLSTM: the opaque buffer and the canonical copies beside it
    units, inputs = 4, 3
    scope = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
    k, b = add(f"{scope}/kernel", weights(inputs + units, 4 * units)), add(f"{scope}/bias", weights(4 * units))
    add("cudnn_lstm/opaque_kernel", cudnn_opaque(k, b, inputs, units))
    runs.append(dict(name="cudnn_lstm", y=raw_lstm_block(x, k, b, 0.0), chain=[scope], forget_bias=0.0))
    # contrib GRUBlockCell: w_ru (in+u, 2u), w_c (in+u, u); and a version that swapped the two names
    for name, swap in (("gblock", False), ("gswap", True)):
        w_ru, w_c, b_ru, b_c = weights(3 + 5, 10), weights(3 + 5, 5), weights(10), weights(5)
        add(f"{name}/rnn/gru_cell/{'w_c' if swap else 'w_ru'}", w_ru)
        add(f"{name}/rnn/gru_cell/{'w_ru' if swap else 'w_c'}", w_c)
        add(f"{name}/rnn/gru_cell/b_ru", b_ru)
        add(f"{name}/rnn/gru_cell/b_c", b_c)
        runs.append(dict(name=name, y=raw_gru_block(x, w_ru, w_c, b_ru, b_c), chain=[f"{name}/rnn/gru_cell"]))
    # TF 1.0-1.1 names: weights / biases
    rnn = v1.nn.rnn_cell
    k, b = add("v10a/rnn/basic_lstm_cell/weights", weights(3 + 4, 16)), add("v10a/rnn/basic_lstm_cell/biases", weights(16))
    runs.append(dict(name="v10a", y=modern_forward([lambda: rnn.BasicLSTMCell(4)], [{"kernel": k, "bias": b}], x),
                     chain=["v10a/rnn/basic_lstm_cell"], forget_bias=1.0))
    gk, gb = add("v10b/rnn/gru_cell/gates/weights", weights(3 + 4, 8)), add("v10b/rnn/gru_cell/gates/biases", weights(8))
    ck, cb = add("v10b/rnn/gru_cell/candidate/weights", weights(3 + 4, 4)), add("v10b/rnn/gru_cell/candidate/biases", weights(4))
    runs.append(dict(name="v10b", y=modern_forward([lambda: rnn.GRUCell(4)], [{"gates/kernel": gk, "gates/bias": gb,
                                                                             "candidate/kernel": ck, "candidate/bias": cb}], x),
                     chain=["v10b/rnn/gru_cell"]))
    k, b = add("v10c/rnn/basic_rnn_cell/weights", weights(3 + 2, 2)), add("v10c/rnn/basic_rnn_cell/biases", weights(2))
    runs.append(dict(name="v10c", y=modern_forward([lambda: rnn.BasicRNNCell(2)], [{"kernel": k, "bias": b}], x),
                     chain=["v10c/rnn/basic_rnn_cell"]))
    add("logits/weights", weights(4, 6))
    add("logits/biases", weights(6))
    folder = out / "tf1_handmade"
    path = save_variables(variables, folder / "model.ckpt", v1.train.SaverDef.V2)
    truth["cases"]["tf1_handmade"] = {"prefix": rel(path, out), "variables": dump_checkpoint(Path(path), out, "tf1_handmade"),
                                      "runs": save_arrays(runs, x, out, "tf1_handmade")}


def build_tf1_v0(out: Path, truth: dict) -> None:
    """TF 0.x: a V1 single-file checkpoint with Linear/Matrix, W_0/B, Gates/Candidate names."""
    x = RNG.standard_normal((2, 4, 3)).astype(np.float32)
    rnn = v1.nn.rnn_cell
    variables: dict[str, np.ndarray] = {}
    runs = []
    cells = []
    for i, size_in in enumerate((3, 4)):
        base = f"rnnlm/MultiRNNCell/Cell{i}/BasicLSTMCell/Linear"
        variables[f"{base}/Matrix"], variables[f"{base}/Bias"] = weights(size_in + 4, 16), weights(16)
        cells.append({"kernel": variables[f"{base}/Matrix"], "bias": variables[f"{base}/Bias"]})
    runs.append(dict(name="v0_multi", y=modern_forward([lambda: rnn.BasicLSTMCell(4)] * 2, cells, x),
                     chain=["rnnlm/MultiRNNCell/Cell0/BasicLSTMCell", "rnnlm/MultiRNNCell/Cell1/BasicLSTMCell"],
                     forget_bias=1.0))
    roles = {"W_0": weights(3 + 2, 12), "B": weights(12), "W_I_diag": weights(3), "W_F_diag": weights(3),
             "W_O_diag": weights(3), "W_P_0": weights(3, 2)}
    variables.update({f"old/LSTMCell/{k}": v for k, v in roles.items()})
    modern = {"kernel": roles["W_0"], "bias": roles["B"], "w_i_diag": roles["W_I_diag"], "w_f_diag": roles["W_F_diag"],
              "w_o_diag": roles["W_O_diag"], "projection/kernel": roles["W_P_0"]}
    runs.append(dict(name="v0_lstm", y=modern_forward([lambda: rnn.LSTMCell(3, use_peepholes=True, num_proj=2)],
                                                      [modern], x), chain=["old/LSTMCell"], forget_bias=1.0))
    gru = {"Gates/Linear/Matrix": weights(3 + 4, 8), "Gates/Linear/Bias": weights(8),
           "Candidate/Linear/Matrix": weights(3 + 4, 4), "Candidate/Linear/Bias": weights(4)}
    variables.update({f"oldgru/GRUCell/{k}": v for k, v in gru.items()})
    runs.append(dict(name="v0_gru", y=modern_forward([lambda: rnn.GRUCell(4)], [{
        "gates/kernel": gru["Gates/Linear/Matrix"], "gates/bias": gru["Gates/Linear/Bias"],
        "candidate/kernel": gru["Candidate/Linear/Matrix"], "candidate/bias": gru["Candidate/Linear/Bias"]}], x),
        chain=["oldgru/GRUCell"]))
    variables["oldrnn/BasicRNNCell/Linear/Matrix"], variables["oldrnn/BasicRNNCell/Linear/Bias"] = weights(3 + 3, 3), weights(3)
    runs.append(dict(name="v0_rnn", y=modern_forward([lambda: rnn.BasicRNNCell(3)], [{
        "kernel": variables["oldrnn/BasicRNNCell/Linear/Matrix"], "bias": variables["oldrnn/BasicRNNCell/Linear/Bias"]}], x),
        chain=["oldrnn/BasicRNNCell"]))
    variables["softmax_w"], variables["softmax_b"] = weights(4, 9), weights(9)
    folder = out / "tf1_v0"
    path = save_variables(variables, folder / "model.ckpt-100", v1.train.SaverDef.V1)
    truth["cases"]["tf1_v0"] = {"file": rel(path, out), "runs": save_arrays(runs, x, out, "tf1_v0"),
                                "values": save_values(variables, out, "tf1_v0")}


def cudnn_opaque(kernel, bias, inputs, units):
    """CudnnLSTM's opaque buffer of one unidirectional layer, from the canonical tensors (beyond-keras.md
    §2.2): W_i W_f W_c W_o (units × input each), R_i R_f R_c R_o (units × units), then the input-side and
    recurrent-side biases (each half of the canonical sum)."""
    gates = {g: kernel[:, k * units:(k + 1) * units].T for k, g in enumerate("icfo")}  # (units, in + units)
    w = [gates[g][:, :inputs].reshape(-1) for g in "ifco"]
    r = [gates[g][:, inputs:].reshape(-1) for g in "ifco"]
    b = {g: bias[k * units:(k + 1) * units] for k, g in enumerate("icfo")}
    halves = [b[g] / 2 for g in "ifco"]
    return np.concatenate(w + r + halves + halves).astype(np.float32)


def save_variables(variables: dict, prefix: Path, version) -> str:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default(), v1.Session() as sess:
        made = [v1.get_variable(name, initializer=tf.constant(value)) for name, value in variables.items()]
        sess.run(v1.global_variables_initializer())
        return v1.train.Saver(made, write_version=version).save(sess, str(prefix), write_meta_graph=False)


def save_arrays(runs: list[dict], x: np.ndarray, out: Path, case: str) -> list[dict]:
    folder = out / case / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "x.npy", x)
    items = []
    for r in runs:
        np.save(folder / f"{r['name']}.npy", r["y"])
        item = {k: v for k, v in r.items() if k != "y"}
        item.setdefault("forget_bias", None)
        item.update(x=str((folder / "x.npy").relative_to(out)), y=str((folder / f"{r['name']}.npy").relative_to(out)))
        items.append(item)
    return items


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
        truth["cases"][case]["optimizer_values"] = optimizer_values(model.optimizer)
        if framework == "tf_keras":
            build_two_shards(out, truth, model, names, weights)
            build_tf_keras_savedmodel(out, truth, model, names)
            model.save(str(out / "tf_keras_fit.h5"))  # the same weights as tf_keras_fit and the SavedModel
            build_tf_keras_save_weights(out, truth, model, names)
        else:
            build_keras3_export(out, truth, model, names)
            model.save(str(out / "keras3_fit.keras"))  # the same weights as keras3_fit and the export
        truth["cases"][f"{framework}_fit"]["keras_file"] = f"{framework}_fit." + ("h5" if framework == "tf_keras" else "keras")


def optimizer_values(optimizer) -> int:
    """Values of training state Keras keeps for the optimizer (tf_keras keeps the learning rate in a
    variable of its own, outside `variables`)."""
    values = sum(int(np.prod(v.shape)) for v in optimizer.variables)
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, tf.Variable) and all(rate is not v for v in optimizer.variables):
        values += int(np.prod(rate.shape))
    return values


def add_tf2_case(out: Path, truth: dict, case: str, prefix: str, names: list[str], weights: dict) -> None:
    truth["cases"][case] = {"prefix": rel(prefix, out), "variables": dump_checkpoint(Path(prefix), out, case),
                            "object_graph": object_graph(Path(prefix)), "model_variable_names": names,
                            "model_weights": save_values(weights, out, case), "data_files": data_files(Path(prefix))}


def build_tf_keras_save_weights(out: Path, truth: dict, model, names: list[str]) -> None:
    """tf_keras `save_weights` in TF format: the same keys without `model/`, optimizer state included."""
    case = "tf_keras_weights"
    prefix = out / case / "weights.ckpt"
    model.save_weights(str(prefix), save_format="tf")
    truth["cases"][case] = {"prefix": rel(prefix, out), "variables": dump_checkpoint(prefix, out, case),
                            "model_variable_names": names}


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
    build_tf1_more(out, truth)
    build_tf1_sharded(out, truth)
    build_tf1_v1(out, truth)
    build_tf1_handmade(out, truth)
    build_tf1_v0(out, truth)
    build_tf2(out, truth)
    for prefix in args.corpus_prefix:
        case = "corpus/" + prefix.name
        truth["cases"][case] = {"prefix": str(prefix), "variables": dump_checkpoint(prefix, out, case)}
    (out / "truth.json").write_text(json.dumps(truth, indent=1))


if __name__ == "__main__":
    main()
