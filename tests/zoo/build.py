#!/usr/bin/env python3
"""Build the test-time model zoo: small recurrent Keras models saved in every dialect a framework writes.

Run from the repo root, in its own process (it imports TensorFlow; the test process must not):

    python tests/zoo/build.py --framework keras3   --out /tmp/zoo_keras3
    python tests/zoo/build.py --framework tf_keras --out /tmp/zoo_tf_keras

Writes under OUT only:
  <model>/<files>             the saved models, one per dialect (see DIALECTS)
  <model>/ref/<path>/k.npy    Keras's own get_weights() of each recurrent direction (kernel, recurrent
                              kernel, bias), path as in truth.json ("bidi/forward", "encoder/enc_lstm")
  <model>/ref_converted/...   CuDNN layers only: the same weights after tf_keras converted them into the
                              equivalent plain LSTM / GRU(reset_after=True)
  truth.json                  one entry per saved file (see tests/zoo/README.md)
  failures.json               dialects/models the framework refused to write, with the exact error
  verify.json                 (with --verify) whether the same framework reads each file back

Every expectation is taken from Keras objects (count_params, get_weights, units, kernel shapes,
symbolic output shapes), never from a hand formula. Deterministic: fixed seeds, weights overwritten
with values from a seeded numpy generator.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
import warnings
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

K = None  # the keras module in use (keras 3 or tf_keras)
L = None  # K.layers
FW = None  # "keras3" | "tf_keras"
CUDNN = {}  # tf_keras only: {"CuDNNLSTM": cls, "CuDNNGRU": cls}


# --------------------------------------------------------------------------------------------- framework
def load_framework(name: str) -> None:
    global K, L, FW
    FW = name
    if name == "keras3":
        import keras

        if not keras.__version__.startswith("3"):
            sys.exit(f"keras {keras.__version__} is not Keras 3")
        K = keras
    elif name == "tf_keras":
        import tf_keras

        K = tf_keras
        try:
            from tf_keras.api._v1.keras import layers as v1

            CUDNN["CuDNNLSTM"], CUDNN["CuDNNGRU"] = v1.CuDNNLSTM, v1.CuDNNGRU
        except Exception:  # pragma: no cover - depends on the tf_keras build
            from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
            from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM

            CUDNN["CuDNNLSTM"], CUDNN["CuDNNGRU"] = CuDNNLSTM, CuDNNGRU
    else:
        sys.exit(f"unknown framework {name!r}")
    L = K.layers
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except Exception:
        pass
    try:
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    except Exception:
        pass


def reset(seed: int) -> None:
    """Fresh name counters (so default names are lstm, lstm_1, ... inside each model) and seeds."""
    K.backend.clear_session()
    K.utils.set_random_seed(seed)


def model_seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# --------------------------------------------------------------------------------------------- models
# Each builder returns a built (never run) model. Sizes: units 3..8, inputs 2..6, timesteps 4..7.


def m_lstm_seq():
    # Sequential with the default Keras model name ("sequential") and default layer names.
    return K.Sequential([K.Input((6, 4)), L.LSTM(5), L.Dense(2)])


def m_gru_reset_after():
    i = K.Input((5, 3))
    x = L.GRU(4, reset_after=True, name="gru_ra_true")(i)
    return K.Model(i, L.Dense(1, name="head")(x), name="gru_reset_after")


def m_gru_no_reset_after():
    i = K.Input((4, 2))
    x = L.GRU(6, reset_after=False, return_sequences=True, name="gru_ra_false")(i)
    x = L.GRU(3, reset_after=False)(x)
    return K.Model(i, x, name="gru_no_reset_after")


def m_simple_rnn():
    i = K.Input((7, 2))
    x = L.SimpleRNN(3, return_sequences=True, go_backwards=True)(i)
    x = L.SimpleRNN(4, name="srnn_last")(x)
    return K.Model(i, x, name="simple_rnn")


def m_convlstm1d():
    i = K.Input((4, 6, 2))
    x = L.ConvLSTM1D(3, 3, padding="same", return_sequences=True)(i)
    x = L.ConvLSTM1D(4, 2, name="conv1d_last")(x)
    return K.Model(i, x, name="convlstm1d")


def m_convlstm2d():
    i = K.Input((4, 5, 5, 2))
    x = L.ConvLSTM2D(3, (3, 2), name="clstm2d")(i)
    x = L.Flatten()(x)
    return K.Model(i, L.Dense(2)(x), name="convlstm2d")


def m_convlstm3d():
    i = K.Input((4, 3, 3, 3, 1))
    x = L.ConvLSTM3D(2, (2, 2, 2))(i)
    return K.Model(i, x, name="convlstm3d")


def m_rnn_lstmcell():
    i = K.Input((5, 3))
    x = L.RNN(L.LSTMCell(4), return_sequences=True, name="rnn_lstm_cell")(i)
    return K.Model(i, x, name="rnn_lstmcell")


def m_rnn_grucell():
    i = K.Input((6, 2))
    x = L.RNN(L.GRUCell(3))(i)  # default name "rnn"
    return K.Model(i, x, name="rnn_grucell")


def m_rnn_simplecell():
    i = K.Input((4, 5))
    x = L.RNN(L.SimpleRNNCell(5), go_backwards=True)(i)
    return K.Model(i, x, name="rnn_simplecell")


def m_rnn_stacked():
    i = K.Input((5, 3))
    if FW == "keras3":  # Keras 3 idiom: a list of cells (wrapped in StackedRNNCells internally)
        layer = L.RNN([L.LSTMCell(4), L.GRUCell(3)], return_sequences=True, name="stacked")
    else:
        layer = L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.GRUCell(3)]), return_sequences=True, name="stacked")
    x = layer(i)
    x = L.RNN(L.StackedRNNCells([L.SimpleRNNCell(2), L.LSTMCell(3)]))(x)  # default name
    return K.Model(i, x, name="rnn_stacked")


def m_bidi_lstm():
    i = K.Input((6, 3))
    x = L.Bidirectional(L.LSTM(4, return_sequences=True), name="bidi")(i)
    x = L.Bidirectional(L.LSTM(3), merge_mode="sum")(x)  # default names
    return K.Model(i, L.Dense(2)(x), name="bidi_lstm")


def m_bidi_gru():
    i = K.Input((5, 4))
    x = L.Bidirectional(L.GRU(3, return_sequences=True))(i)
    # explicit backward layer with its own name and size-compatible config
    x = L.Bidirectional(
        L.GRU(4, name="fwd_gru"),
        backward_layer=L.GRU(4, go_backwards=True, name="my_back_gru"),
        name="bidi_explicit",
    )(x)
    return K.Model(i, x, name="bidi_gru")


def m_bidi_merge():
    i = K.Input((5, 3))
    x = L.Bidirectional(L.GRU(3, return_sequences=True, reset_after=False), merge_mode="ave", name="bidi_ave")(i)
    x = L.Bidirectional(L.SimpleRNN(2, return_sequences=True), merge_mode="mul", name="bidi_mul")(x)
    f, b = L.Bidirectional(L.LSTM(3), merge_mode=None, name="bidi_none")(x)
    x = L.Concatenate()([f, b])
    return K.Model(i, L.Dense(2)(x), name="bidi_merge")


def m_lstm_timedistributed():
    i = K.Input((5, 3))
    x = L.LSTM(4, return_sequences=True, name="enc")(i)
    x = L.TimeDistributed(L.Dense(2))(x)
    return K.Model(i, x, name="lstm_timedistributed")


def m_no_bias():
    i = K.Input((5, 3))
    x = L.LSTM(3, use_bias=False, return_sequences=True, name="lstm_nobias")(i)
    x = L.GRU(4, use_bias=False, return_sequences=True, name="gru_nobias")(x)
    x = L.SimpleRNN(2, use_bias=False)(x)
    return K.Model(i, x, name="no_bias")


def m_state_variants():
    i = K.Input((6, 3))
    seq, h, c = L.LSTM(4, return_sequences=True, return_state=True, name="lstm_state")(i)
    g = L.GRU(4, go_backwards=True, name="gru_back", trainable=False)(seq, initial_state=[h])
    x = L.Concatenate()([g, c])
    return K.Model(i, L.Dense(2)(x), name="state_variants")


def m_stateful():
    return K.Sequential(
        [
            K.Input(batch_shape=(2, 5, 3)),
            L.LSTM(3, stateful=True, return_sequences=True, name="stateful_lstm"),
            L.GRU(2, stateful=True),
        ],
        name="stateful",
    )


def m_nested():
    ei = K.Input((6, 3))
    eo = L.LSTM(4, return_sequences=True, name="enc_lstm")(ei)
    encoder = K.Model(ei, eo, name="encoder")
    i = K.Input((6, 3))
    x = encoder(i)
    x = L.GRU(3, name="dec_gru")(x)
    return K.Model(i, L.Dense(2, name="out")(x), name="nested")


def m_mixed_embed():
    m = K.Sequential(
        [
            K.Input((7,), dtype="int32"),
            L.Embedding(20, 4),
            L.Dropout(0.2),
            L.LSTM(5, dropout=0.1, recurrent_dropout=0.1, return_sequences=True),
            L.BatchNormalization(),
            L.GRU(3, dropout=0.2),
            L.Dense(3, activation="softmax"),
        ],
        name="mixed_embed",
    )
    # compiled with a built optimizer, so files carry optimizer state like files saved after training
    m.compile(optimizer="adam", loss="categorical_crossentropy")
    try:
        m.optimizer.build(m.trainable_variables)
    except Exception:
        pass
    return m


def m_dtypes():
    i = K.Input((5, 3))
    x = L.LSTM(4, dtype="float16", return_sequences=True, name="lstm_f16")(i)
    x = L.GRU(3, dtype="mixed_float16", name="gru_mixed")(x)
    return K.Model(i, L.Dense(2, dtype="float32")(x), name="dtypes")


def m_bf16():
    i = K.Input((4, 2))
    # TF has no bfloat16 QR, so the default orthogonal recurrent initializer cannot run in bfloat16
    x = L.SimpleRNN(3, dtype="bfloat16", recurrent_initializer="glorot_uniform", name="srnn_bf16")(i)
    return K.Model(i, x, name="bf16")


def m_activations():
    i = K.Input((5, 3))
    x = L.LSTM(3, activation="relu", recurrent_activation="hard_sigmoid", return_sequences=True, name="lstm_hard")(i)
    x = L.GRU(4, activation="softsign", recurrent_activation="hard_sigmoid", reset_after=False,
              return_sequences=True, name="gru_hard")(x)
    x = L.SimpleRNN(2, activation="relu")(x)
    return K.Model(i, x, name="activations")


# --- tf_keras CuDNN layers (no GPU: the models are built symbolically and never run) -----------------
def m_cudnn_lstm(plain=False):
    i = K.Input((5, 3))
    if plain:
        x = L.LSTM(4, name="cu_lstm")(i)
    else:
        x = CUDNN["CuDNNLSTM"](4, name="cu_lstm")(i)
    return K.Model(i, L.Dense(2, name="head")(x), name="cudnn_lstm")


def m_cudnn_gru(plain=False):
    i = K.Input((6, 2))
    if plain:
        x = L.GRU(3, reset_after=True, return_sequences=True, name="cu_dnngru")(i)
    else:
        x = CUDNN["CuDNNGRU"](3, return_sequences=True)(i)  # default name "cu_dnngru"
    return K.Model(i, x, name="cudnn_gru")


def m_cudnn_mixed(plain=False):
    i = K.Input((5, 3))
    if plain:
        x = L.LSTM(4, return_sequences=True, name="cu_dnnlstm")(i)
        x = L.Bidirectional(L.GRU(3, reset_after=True), name="cu_bidi")(x)
    else:
        x = CUDNN["CuDNNLSTM"](4, return_sequences=True)(i)  # default name "cu_dnnlstm"
        x = L.Bidirectional(CUDNN["CuDNNGRU"](3), name="cu_bidi")(x)
    return K.Model(i, L.Dense(2)(x), name="cudnn_mixed")


BOTH = ("keras3", "tf_keras")
ZOO = [
    # (zoo name, builder, frameworks); CuDNN builders take plain=True for their plain twin
    ("lstm_seq", m_lstm_seq, BOTH),
    ("gru_reset_after", m_gru_reset_after, BOTH),
    ("gru_no_reset_after", m_gru_no_reset_after, BOTH),
    ("simple_rnn", m_simple_rnn, BOTH),
    ("convlstm1d", m_convlstm1d, BOTH),
    ("convlstm2d", m_convlstm2d, BOTH),
    ("convlstm3d", m_convlstm3d, BOTH),
    ("rnn_lstmcell", m_rnn_lstmcell, BOTH),
    ("rnn_grucell", m_rnn_grucell, BOTH),
    ("rnn_simplecell", m_rnn_simplecell, BOTH),
    ("rnn_stacked", m_rnn_stacked, BOTH),
    ("bidi_lstm", m_bidi_lstm, BOTH),
    ("bidi_gru", m_bidi_gru, BOTH),
    ("bidi_merge", m_bidi_merge, BOTH),
    ("lstm_timedistributed", m_lstm_timedistributed, BOTH),
    ("no_bias", m_no_bias, BOTH),
    ("state_variants", m_state_variants, BOTH),
    ("stateful", m_stateful, BOTH),
    ("nested", m_nested, BOTH),
    ("mixed_embed", m_mixed_embed, BOTH),
    ("dtypes", m_dtypes, BOTH),
    ("bf16", m_bf16, BOTH),
    ("activations", m_activations, BOTH),
    ("cudnn_lstm", m_cudnn_lstm, ("tf_keras",)),
    ("cudnn_gru", m_cudnn_gru, ("tf_keras",)),
    ("cudnn_mixed", m_cudnn_mixed, ("tf_keras",)),
]
CUDNN_MODELS = {"cudnn_lstm", "cudnn_gru", "cudnn_mixed"}


# --------------------------------------------------------------------------------------------- weights
def var_name(v) -> str:
    return getattr(v, "path", None) or v.name


def randomize(model, seed: int) -> None:
    """Overwrite every weight (biases included) with seeded random values in its own dtype."""
    rng = np.random.default_rng(seed)
    new = []
    for v, cur in zip(model.weights, model.get_weights()):
        a = rng.uniform(-0.6, 0.6, size=cur.shape)
        if "variance" in var_name(v):
            a = np.abs(a) + 0.1
        new.append(a.astype(cur.dtype))
    model.set_weights(new)


def n_elems(variables) -> int:
    return int(sum(math.prod(tuple(int(d) for d in v.shape)) for v in variables))


# --------------------------------------------------------------------------------------------- shapes
def norm_shape(s):
    """A shape, a tensor, or a list of either -> JSON list(s) with None for unknown dims."""
    if s is None:
        return None
    if hasattr(s, "as_list") and not hasattr(s, "dtype"):  # TensorShape
        try:
            return s.as_list()
        except ValueError:
            return None
    if hasattr(s, "shape") and not isinstance(s, (list, tuple)):
        return norm_shape(s.shape)
    if isinstance(s, (list, tuple)):
        if all(x is None or isinstance(x, (int, np.integer)) for x in s):
            return [None if x is None else int(x) for x in s]
        return [norm_shape(x) for x in s]
    return None


def layer_output_shape(layer):
    try:
        return norm_shape(layer.output)
    except Exception:
        pass
    try:
        return norm_shape(layer.output_shape)
    except Exception:
        return None


def layer_input_shape(layer):
    try:
        inp = layer.input
        if isinstance(inp, (list, tuple)):
            inp = inp[0]
        return tuple(norm_shape(inp))
    except Exception:
        return None


# --------------------------------------------------------------------------------------------- directions
GATES = {"LSTM": ["i", "f", "c", "o"], "ConvLSTM": ["i", "f", "c", "o"], "GRU": ["z", "r", "h"], "SimpleRNN": []}


def kind_of(class_name: str) -> str | None:
    if "ConvLSTM" in class_name:
        return "ConvLSTM"
    if "LSTM" in class_name:
        return "LSTM"
    if "GRU" in class_name:
        return "GRU"
    if "SimpleRNN" in class_name:
        return "SimpleRNN"
    return None


def cfg_get(obj, key, default=None):
    try:
        cfg = obj.get_config()
    except Exception:
        return default
    v = cfg.get(key, default)
    if isinstance(v, dict):  # Keras 3 may serialise activations as dicts
        v = v.get("config", {}).get("name") or v.get("class_name")
    return v


def make_direction(*, path, klass, holder, cell, rnn, own_shape, layer_shape, cudnn=False):
    """holder: object whose get_weights() are this direction's weights (cell or layer);
    cell: object carrying units/activations (the cell, or the CuDNN layer itself);
    rnn: the layer carrying return_sequences/... flags."""
    cell_class = type(cell).__name__
    kind = kind_of(klass) if cudnn else kind_of(cell_class)
    weights = holder.get_weights()
    kernel, rec = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    gates = GATES[kind]
    ng = max(1, len(gates))
    units = getattr(cell, "units", None)
    if units is None:
        units = getattr(cell, "filters", None)
    blocks = {}
    wshape = list(kernel.shape[:-1]) + [kernel.shape[-1] // ng]
    ushape = list(rec.shape[:-1]) + [rec.shape[-1] // ng]
    if bias is not None:
        if bias.ndim == 2:  # GRU reset_after=True: (2, 3H), row 0 input, row 1 recurrent
            bshape, bushape = [bias.shape[1] // ng], [bias.shape[1] // ng]
        elif cudnn:  # (8H,) / (6H,): input biases then recurrent biases
            bshape, bushape = [bias.shape[0] // (2 * ng)], [bias.shape[0] // (2 * ng)]
        else:
            bshape, bushape = [bias.shape[0] // ng], None
    for g in gates or [None]:
        sfx = f"_{g}" if g else ""
        blocks["W" + sfx] = [int(d) for d in wshape]
        blocks["U" + sfx] = [int(d) for d in ushape]
        if bias is not None:
            blocks["b" + sfx] = [int(d) for d in bshape]
            if bushape is not None:
                blocks["bU" + sfx] = [int(d) for d in bushape]
    params = int(holder.count_params())
    block_sum = sum(math.prod(s) for s in blocks.values())
    weight_sum = sum(int(w.size) for w in weights)
    if not (block_sum == params == weight_sum):
        raise AssertionError(f"{path}: blocks {block_sum} != count_params {params} (weights {weight_sum})")
    if cudnn:
        activation, rec_activation, use_bias = "tanh", "sigmoid", True  # fixed by cuDNN
    else:
        activation = cfg_get(cell, "activation")
        rec_activation = cfg_get(cell, "recurrent_activation") if kind != "SimpleRNN" else None
        use_bias = bool(getattr(cell, "use_bias", bias is not None))
    d = {
        "path": path,
        "kind": kind,
        "class": klass,
        "units": int(units),
        "input_dim": int(kernel.shape[-2]),
        "gates": gates,
        "blocks": blocks,
        "params": params,
        "dtype": str(kernel.dtype),
        "return_sequences": bool(getattr(rnn, "return_sequences", False)),
        "return_state": bool(getattr(rnn, "return_state", False)),
        "stateful": bool(getattr(rnn, "stateful", False)),
        "go_backwards": bool(getattr(rnn, "go_backwards", False)),
        "activation": activation,
        "recurrent_activation": rec_activation,
        "use_bias": use_bias,
        "output_shape": own_shape,
        "layer_output_shape": layer_shape,
    }
    if kind == "ConvLSTM":
        d["kernel_size"] = [int(k) for k in kernel.shape[:-2]]
    if kind == "GRU":
        d["reset_after"] = True if cudnn else bool(getattr(cell, "reset_after", False))
    d["_weights"] = weights
    return d


def is_model(layer) -> bool:
    return hasattr(layer, "layers") and isinstance(getattr(layer, "layers"), list) and layer.__class__.__name__ in (
        "Functional", "Sequential", "Model")


def directions(layers, prefix=""):
    out = []
    for layer in layers:
        cls = type(layer).__name__
        if cls == "InputLayer":
            continue
        path = prefix + layer.name
        if is_model(layer):
            out += directions(layer.layers, path + "/")
        elif cls == "Bidirectional":
            in_shape = layer_input_shape(layer)
            lshape = layer_output_shape(layer)
            for side_name, side in (("forward", layer.forward_layer), ("backward", layer.backward_layer)):
                try:
                    own = norm_shape(side.compute_output_shape(in_shape))
                except Exception:
                    own = None
                out += recurrent_dirs(side, f"{path}/{side_name}", own, lshape)
        elif cls == "TimeDistributed":
            continue  # TimeDistributed(Dense) only in this zoo
        else:
            shape = layer_output_shape(layer)
            out += recurrent_dirs(layer, path, shape, shape)
    return out


def recurrent_dirs(layer, path, own_shape, layer_shape):
    cls = type(layer).__name__
    if cls in ("CuDNNLSTM", "CuDNNGRU"):
        return [make_direction(path=path, klass=cls, holder=layer, cell=layer, rnn=layer,
                               own_shape=own_shape, layer_shape=layer_shape, cudnn=True)]
    cell = getattr(layer, "cell", None)
    if cell is None:
        return []
    if type(cell).__name__ == "StackedRNNCells":
        return [
            make_direction(path=f"{path}/cell_{k}", klass=type(c).__name__, holder=c, cell=c, rnn=layer,
                           own_shape=own_shape, layer_shape=layer_shape)
            for k, c in enumerate(cell.cells)
        ]
    if kind_of(type(cell).__name__) is None:
        return []
    return [make_direction(path=path, klass=cls, holder=layer, cell=cell, rnn=layer,
                           own_shape=own_shape, layer_shape=layer_shape)]


# --------------------------------------------------------------------------------------------- dialects
def _sharded(model, p):
    sizes = [int(w.nbytes) for w in model.get_weights()]
    shard = max(max(sizes), sum(sizes) // 3 + 1)
    model.save_weights(p, max_shard_size=shard / 1024**3)


DIALECTS = {
    "keras3": [
        ("keras-zip", "{m}.keras", lambda model, p: model.save(p)),
        ("keras-dir", "{m}_keras_dir", lambda model, p: model.save(p, zipped=False)),
        ("hdf5-legacy", "{m}.h5", lambda model, p: model.save(p)),
        ("keras-weights-h5", "{m}.weights.h5", lambda model, p: model.save_weights(p)),
        ("keras-weights-sharded", "{m}.weights.json", _sharded),
    ],
    "tf_keras": [
        ("hdf5-legacy", "{m}.h5", lambda model, p: model.save(p)),
        ("hdf5-weights", "{m}_weights.h5", lambda model, p: model.save_weights(p)),
        ("keras-zip", "{m}.keras", lambda model, p: model.save(p)),
        ("keras-weights-h5", "{m}.weights.h5", lambda model, p: model.save_weights(p)),
    ],
}
WEIGHTS_ONLY = {"hdf5-weights", "keras-weights-h5", "keras-weights-sharded"}


def err_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip()[:2000]


def files_written(before: set, root: str) -> list:
    now = set()
    for dp, _, fns in os.walk(root):
        for fn in fns:
            now.add(os.path.relpath(os.path.join(dp, fn), root))
    return sorted(now - before)


def all_files(root):
    s = set()
    for dp, _, fns in os.walk(root):
        for fn in fns:
            s.add(os.path.relpath(os.path.join(dp, fn), root))
    return s


def save_npys(out, rel_dir, arrays):
    os.makedirs(os.path.join(out, rel_dir), exist_ok=True)
    for k, a in enumerate(arrays):
        a = np.asarray(a)
        if a.dtype.kind == "V" or str(a.dtype) == "bfloat16":  # ml_dtypes bfloat16: store as float32
            a = a.astype(np.float32)
        rel = f"{rel_dir}/{k}.npy"
        np.save(os.path.join(out, rel), a, allow_pickle=False)
        print(f"wrote {rel}")


def weights_equal(a_list, b_list) -> bool:
    if len(a_list) != len(b_list):
        return False
    return all(np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
               for a, b in zip(a_list, b_list))


def verify(builder, dialect, p, ref_weights):
    if dialect in WEIGHTS_ONLY:
        reset(0)
        m2 = builder()
        m2.load_weights(p)
    else:
        m2 = K.models.load_model(p, compile=False)
    return weights_equal(m2.get_weights(), ref_weights)


# --------------------------------------------------------------------------------------------- main
def build_one(out, name, builder, truth, failures, verified, do_verify):
    seed = model_seed(name)
    reset(seed)
    t0 = time.time()
    try:
        model = builder()
        randomize(model, seed)
    except Exception as e:
        failures.append({"model": name, "dialect": None, "stage": "build", "error": err_text(e)})
        print(f"FAILED build {name}: {err_text(e)}")
        return
    mdir = os.path.join(out, name)
    os.makedirs(mdir, exist_ok=True)

    dirs = directions(model.layers)
    for d in dirs:
        d["weights_dir"] = f"{name}/ref/{d['path']}"
        save_npys(out, d["weights_dir"], d.pop("_weights"))

    if name in CUDNN_MODELS:
        convert_cudnn(out, name, builder, model, dirs, failures)

    total = int(model.count_params())
    trainable = n_elems(model.trainable_weights)
    non_trainable = n_elems(model.non_trainable_weights)
    if trainable + non_trainable != total:
        raise AssertionError(f"{name}: trainable {trainable} + non-trainable {non_trainable} != {total}")
    layers = [
        {"name": layer.name, "class": type(layer).__name__, "params": int(layer.count_params())}
        for layer in model.layers if type(layer).__name__ != "InputLayer"
    ]
    ref_weights = model.get_weights()
    base = {
        "framework": FW,
        "keras_version": K.__version__,
        "model": name,
        "keras_model_name": model.name,
        "model_class": type(model).__name__,
        "total_params": total,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "layers": layers,
        "recurrent": dirs,
    }
    for dialect, pattern, save in DIALECTS[FW]:
        rel = f"{name}/{pattern.format(m=name)}"
        p = os.path.join(out, rel)
        before = all_files(out)
        try:
            save(model, p)
        except Exception as e:
            failures.append({"model": name, "dialect": dialect, "stage": "save", "error": err_text(e)})
            print(f"FAILED {dialect} {rel}: {err_text(e)}")
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
            continue
        new = files_written(before, out)
        for f in new:
            print(f"wrote {f}")
        entry = {"file": rel, "dialect": dialect, **base}
        if dialect in ("keras-weights-sharded", "keras-dir"):
            entry["files"] = new
        truth.append(entry)
        if do_verify:
            try:
                ok = verify(builder, dialect, p, ref_weights)
                verified.append({"file": rel, "dialect": dialect, "roundtrip": ok, "error": None})
            except Exception as e:
                verified.append({"file": rel, "dialect": dialect, "roundtrip": False, "error": err_text(e)})
            reset(seed)  # verification rebuilt models; keep the name counters tidy
    print(f"# {name}: {total} params, {len(dirs)} recurrent directions, {time.time() - t0:.2f}s", file=sys.stderr)


def convert_cudnn(out, name, builder, model, dirs, failures):
    """Let tf_keras convert CuDNN weights into the equivalent plain model (legacy h5 loading)."""
    tmp = os.path.join(out, name, "_cudnn_tmp_weights.h5")
    try:
        model.save_weights(tmp)
        K.backend.clear_session()
        plain = builder(plain=True)
        plain.load_weights(tmp)
        conv = {d["path"]: d for d in directions(plain.layers)}
        for d in dirs:
            c = conv[d["path"]]
            d["converted_weights_dir"] = f"{name}/ref_converted/{d['path']}"
            d["converted_class"] = c["class"]
            d["converted_params"] = c["params"]
            save_npys(out, d["converted_weights_dir"], c["_weights"])
    except Exception as e:
        failures.append({"model": name, "dialect": None, "stage": "cudnn-convert", "error": err_text(e)})
        print(f"FAILED cudnn conversion {name}: {err_text(e)}")
        traceback.print_exc()
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--framework", required=True, choices=["keras3", "tf_keras"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", help="build only these zoo models")
    ap.add_argument("--verify", action="store_true", help="reload every file with the same framework")
    args = ap.parse_args(argv)
    t_start = time.time()
    load_framework(args.framework)
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    truth, failures, verified = [], [], []
    for name, builder, fws in ZOO:
        if FW not in fws or (args.only and name not in args.only):
            continue
        build_one(out, name, builder, truth, failures, verified, args.verify)
    for fn, obj in (("truth.json", truth), ("failures.json", failures)) + (
            (("verify.json", verified),) if args.verify else ()):
        with open(os.path.join(out, fn), "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"wrote {fn}")
    print(f"# {FW} {K.__version__}: {len(truth)} files, {len(failures)} failures, "
          f"{time.time() - t_start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
