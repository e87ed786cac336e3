"""Hand-built legacy Keras HDF5 files (Keras 1.x and pre-1.0), written with h5py only (no Keras).

Conventions copied from real files in shared/corpus (dl4j__*_theano_1.h5, dl4j__simple_lstm_*_keras_1_*.h5):
  * root attributes keras_version / model_config / training_config are variable-length UTF-8 strings
    (h5py `str`); the weights-only file has no root attribute except `layer_names`;
  * `layer_names` and `weight_names` are fixed-length byte-string arrays (numpy `|S<n>`); a layer without
    weights gets an empty float64 array as `weight_names` (what h5py makes of an empty list);
  * Keras 1 weight names are `<layer>_<param>` (`lstm_1_W_i`), with a `:0` suffix under the TF backend
    (`lstm_1_W_i:0`); datasets sit directly in the layer group; Bidirectional prefixes `forward_` /
    `backward_` to the wrapped layer's names (`forward_lstm_1_W_i`), all forward arrays first;
  * Keras 1 LSTM (consume_less cpu/mem) lists its 12 arrays i, c, f, o: W_i,U_i,b_i,W_c,U_c,b_c,W_f,...;
    with consume_less="gpu" it stores fused `lstm_1_W` (I,4H), `lstm_1_U`, `lstm_1_b` in i, f, c, o order;
  * the model_config is the Keras 1 Sequential dialect: `config` is a list of layers; recurrent keys
    `output_dim`, `inner_activation`, `consume_less`, `input_dim`, `batch_input_shape` (first layer).

Every writer returns a dict of expectations:
  {"path", "total_params", "layers": [{"name", "class", "params"}],
   "recurrent": [{"path", "kind", "class", "units", "input_dim", "gates", "blocks": {"W_i": array, ...},
                  "fused": [kernel, recurrent_kernel, bias] in the Keras 2 layout (x @ W, i f c o / z r h)}],
   "arrays": {hdf5 dataset path: array, in the order written}}
`path`s follow the zoo contract (layer name; Bidirectional sides "<layer>/forward" and "<layer>/backward").
"""
from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

LSTM_GATE_ORDER_K1 = ["i", "c", "f", "o"]  # how Keras 1 lists the per-gate arrays
LSTM_GATES = ["i", "f", "c", "o"]  # Keras 2 fused order
GRU_GATES = ["z", "r", "h"]

_TRAINING_CONFIG = {
    "optimizer_config": {"class_name": "Adam", "config": {"lr": 0.0010000000474974513, "beta_1": 0.8999999761581421,
                                                          "beta_2": 0.9990000128746033, "decay": 0.0, "epsilon": 1e-08}},
    "loss": "mse", "metrics": None, "sample_weight_mode": None, "loss_weights": None,
}


# ------------------------------------------------------------------------------------------------ helpers
def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.uniform(-0.6, 0.6, size=shape).astype(np.float32)


def _bytes_array(names: list[str]) -> np.ndarray:
    """Fixed-length byte strings like Keras 1 wrote them; empty list -> empty float64 array."""
    if not names:
        return np.array([], dtype=np.float64)
    return np.array([n.encode("utf8") for n in names])


def _recurrent_params_k1(kind: str, prefix: str, I: int, H: int, rng, consume_less: str):
    """Keras 1 arrays for one recurrent direction, as [(short name, array)] in the order Keras 1 lists them,
    plus per-gate blocks and the fused Keras 2 form."""
    if kind == "SimpleRNN":
        W, U, b = _rand(rng, I, H), _rand(rng, H, H), _rand(rng, H)
        listed = [("W", W), ("U", U), ("b", b)]
        return listed, {"W": W, "U": U, "b": b}, [W, U, b]
    gates = LSTM_GATES if kind == "LSTM" else GRU_GATES
    listed_order = LSTM_GATE_ORDER_K1 if kind == "LSTM" else GRU_GATES
    blocks: dict[str, np.ndarray] = {}
    listed = []
    for g in listed_order:  # generate in listing order so the values do not depend on the gate order
        for p, shape in (("W", (I, H)), ("U", (H, H)), ("b", (H,))):
            blocks[f"{p}_{g}"] = _rand(rng, *shape)
            listed.append((f"{p}_{g}", blocks[f"{p}_{g}"]))
    fused = [np.concatenate([blocks[f"{p}_{g}"] for g in gates], axis=-1) for p in ("W", "U", "b")]
    if consume_less == "gpu":
        listed = [("W", fused[0]), ("U", fused[1]), ("b", fused[2])]
    ordered_blocks = {f"{p}_{g}": blocks[f"{p}_{g}"] for g in gates for p in ("W", "U", "b")}
    return listed, ordered_blocks, fused


def _k1_recurrent_config(kind: str, name: str, H: int, input_dim, *, return_sequences: bool,
                         consume_less: str, batch_input_shape=None, go_backwards=False) -> dict:
    cfg: dict[str, Any] = {"name": name, "trainable": True}
    if batch_input_shape is not None:
        cfg["batch_input_shape"] = list(batch_input_shape)
        cfg["input_dtype"] = "float32"
    cfg.update({
        "return_sequences": return_sequences, "go_backwards": go_backwards, "stateful": False, "unroll": False,
        "consume_less": consume_less, "input_dim": input_dim, "input_length": None, "output_dim": H,
        "init": "glorot_uniform", "inner_init": "orthogonal",
    })
    if kind == "LSTM":
        cfg["forget_bias_init"] = "one"
    cfg["activation"] = "tanh"
    if kind != "SimpleRNN":
        cfg["inner_activation"] = "hard_sigmoid"
    cfg.update({"W_regularizer": None, "U_regularizer": None, "b_regularizer": None,
                "dropout_W": 0.0, "dropout_U": 0.0})
    return cfg


def _write_layer_group(parent: h5py.Group, layer_name: str, named_arrays: list[tuple[str, np.ndarray]],
                       arrays_out: dict, tf_suffix: bool) -> None:
    g = parent.create_group(layer_name)
    names = [n + (":0" if tf_suffix else "") for n, _ in named_arrays]
    g.attrs["weight_names"] = _bytes_array(names)
    for n, (_, a) in zip(names, named_arrays):
        g.create_dataset(n, data=a)
        arrays_out[g[n].name.lstrip("/")] = a


def _k1_sequential(layers_spec: list[dict], rng, consume_less: str):
    """Expand a small layer spec into (config list, [(layer name, [(weight name, array)])], expectations)."""
    config, groups, layers, recurrent = [], [], [], []
    for spec in layers_spec:
        t = spec["type"]
        name = spec["name"]
        if t in ("LSTM", "GRU", "SimpleRNN"):
            listed, blocks, fused = _recurrent_params_k1(t, name, spec["I"], spec["H"], rng, consume_less)
            cfg = _k1_recurrent_config(t, name, spec["H"], spec["I"], return_sequences=spec.get("rs", False),
                                       consume_less=consume_less, batch_input_shape=spec.get("bis"))
            config.append({"class_name": t, "config": cfg})
            groups.append((name, [(f"{name}_{n}", a) for n, a in listed]))
            n_params = sum(a.size for _, a in listed)
            layers.append({"name": name, "class": t, "params": int(n_params)})
            recurrent.append(_rec_expect(name, t, t, spec["H"], spec["I"], blocks, fused))
        elif t == "Bidirectional":
            inner_kind, inner = spec["inner"], spec["inner_name"]
            sides = []
            named = []
            for side in ("forward", "backward"):
                listed, blocks, fused = _recurrent_params_k1(inner_kind, inner, spec["I"], spec["H"], rng,
                                                             consume_less)
                named += [(f"{side}_{inner}_{n}", a) for n, a in listed]
                sides.append(_rec_expect(f"{name}/{side}", inner_kind, inner_kind, spec["H"], spec["I"],
                                         blocks, fused))
            inner_cfg = _k1_recurrent_config(inner_kind, inner, spec["H"], None,
                                             return_sequences=spec.get("rs", False), consume_less=consume_less)
            cfg: dict[str, Any] = {"name": name, "trainable": True}
            if spec.get("bis"):
                cfg["batch_input_shape"] = list(spec["bis"])
                cfg["input_dtype"] = "float32"
            cfg["layer"] = {"class_name": inner_kind, "config": inner_cfg}
            cfg["merge_mode"] = spec.get("merge_mode", "concat")
            config.append({"class_name": "Bidirectional", "config": cfg})
            groups.append((name, named))
            layers.append({"name": name, "class": "Bidirectional", "params": int(sum(a.size for _, a in named))})
            recurrent += sides
        elif t == "Dense":
            W, b = _rand(rng, spec["I"], spec["H"]), _rand(rng, spec["H"])
            config.append({"class_name": "Dense", "config": {
                "name": name, "trainable": True, "init": "glorot_uniform", "activation": "linear",
                "W_regularizer": None, "b_regularizer": None, "activity_regularizer": None,
                "W_constraint": None, "b_constraint": None, "bias": True, "input_dim": spec["I"],
                "output_dim": spec["H"]}})
            groups.append((name, [(f"{name}_W", W), (f"{name}_b", b)]))
            layers.append({"name": name, "class": "Dense", "params": int(W.size + b.size)})
        elif t == "Dropout":
            config.append({"class_name": "Dropout", "config": {"name": name, "trainable": True, "p": 0.2}})
            groups.append((name, []))
            layers.append({"name": name, "class": "Dropout", "params": 0})
        else:  # pragma: no cover
            raise ValueError(t)
    return config, groups, layers, recurrent


def _rec_expect(path, kind, klass, H, I, blocks, fused):
    return {"path": path, "kind": kind, "class": klass, "units": H, "input_dim": I,
            "gates": {"LSTM": LSTM_GATES, "GRU": GRU_GATES}.get(kind, []), "blocks": blocks, "fused": fused}


def _write_k1(path, layers_spec, *, full_model, keras_version, backend, tf_suffix, consume_less, seed,
              include_optimizer=False):
    rng = np.random.default_rng(seed)
    config, groups, layers, recurrent = _k1_sequential(layers_spec, rng, consume_less)
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "w") as f:
        if full_model:
            f.attrs["keras_version"] = keras_version  # str -> variable-length UTF-8, as in the corpus
            if backend is not None:
                f.attrs["backend"] = backend
            f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": config})
            f.attrs["training_config"] = json.dumps(_TRAINING_CONFIG)
            wg = f.create_group("model_weights")
        else:
            wg = f
        wg.attrs["layer_names"] = _bytes_array([n for n, _ in groups])
        for name, named in groups:
            _write_layer_group(wg, name, named, arrays, tf_suffix)
        if full_model and include_optimizer:
            og = f.create_group("optimizer_weights")
            opt = [(f"Variable_{k + 4}:0", np.zeros_like(a)) for k, a in enumerate(list(arrays.values()))]
            og.attrs["weight_names"] = _bytes_array([n for n, _ in opt])
            for n, a in opt:
                og.create_dataset(n, data=a)
    return {
        "path": str(path),
        "keras_version": keras_version if full_model else None,
        "backend": backend if full_model else None,
        "full_model": full_model,
        "total_params": int(sum(a.size for a in arrays.values())),
        "layers": layers,
        "recurrent": recurrent,
        "arrays": arrays,
    }


# ------------------------------------------------------------------------------------------------ Keras 1
def keras1_model_spec(consume_less: str = "cpu") -> list[dict]:
    """LSTM(3->4, seq) -> Dropout -> GRU(4->3, seq) -> SimpleRNN(3->2) -> Dense(2->1), 5 timesteps."""
    return [
        {"type": "LSTM", "name": "lstm_1", "I": 3, "H": 4, "rs": True, "bis": [None, 5, 3]},
        {"type": "Dropout", "name": "dropout_1"},
        {"type": "GRU", "name": "gru_1", "I": 4, "H": 3, "rs": True},
        {"type": "SimpleRNN", "name": "simplernn_1", "I": 3, "H": 2},
        {"type": "Dense", "name": "dense_1", "I": 2, "H": 1},
    ]


def write_keras1_model(path, *, consume_less: str = "cpu", backend: str | None = "theano",
                       tf_suffix: bool | None = None, include_optimizer: bool = False, seed: int = 1) -> dict:
    """Keras 1.2.2 full-model HDF5: Sequential LSTM, Dropout, GRU, SimpleRNN, Dense.

    backend=None omits the root `backend` attribute (as in the real Keras 1.2.2 corpus files).
    tf_suffix (default: backend == "tensorflow") appends ":0" to weight names.
    """
    if tf_suffix is None:
        tf_suffix = backend == "tensorflow"
    return _write_k1(path, keras1_model_spec(consume_less), full_model=True, keras_version="1.2.2",
                     backend=backend, tf_suffix=tf_suffix, consume_less=consume_less, seed=seed,
                     include_optimizer=include_optimizer)


def write_keras1_weights(path, *, consume_less: str = "cpu", tf_suffix: bool = False, seed: int = 2) -> dict:
    """Keras 1 `save_weights` file: root attr `layer_names` only, one group per layer at the root."""
    return _write_k1(path, keras1_model_spec(consume_less), full_model=False, keras_version="1.2.2",
                     backend=None, tf_suffix=tf_suffix, consume_less=consume_less, seed=seed)


def write_keras1_bidirectional(path, *, backend: str | None = None, tf_suffix: bool = False,
                               merge_mode: str = "concat", seed: int = 3) -> dict:
    """Keras 1.2.2 Sequential: Bidirectional(LSTM(4), input (5, 3)) -> Dense(8 -> 2).

    Weight names as in dl4j__bidirectional_lstm_theano_1.h5: forward_lstm_1_W_i ... backward_lstm_1_b_o.
    """
    H = 4
    spec = [
        {"type": "Bidirectional", "name": "bidirectional_1", "inner": "LSTM", "inner_name": "lstm_1",
         "I": 3, "H": H, "bis": [None, 5, 3], "merge_mode": merge_mode},
        {"type": "Dense", "name": "dense_1", "I": 2 * H if merge_mode == "concat" else H, "H": 2},
    ]
    return _write_k1(path, spec, full_model=True, keras_version="1.2.2", backend=backend,
                     tf_suffix=tf_suffix, consume_less="cpu", seed=seed)


# ------------------------------------------------------------------------------------------------ pre-1.0
def write_keras0_weights(path, *, seed: int = 4) -> dict:
    """Keras 0.x `save_weights`: root attr `nb_layers`; groups layer_0..layer_{n-1}, each with attr `nb_params`
    and datasets param_0..param_{p-1} (get_weights order). No config, no layer names.

    Layers: LSTM(3->4) [12 params, Keras 1 listing i,c,f,o], Dropout [0], GRU(4->3) [9], SimpleRNN(3->2) [3],
    Dense(2->1) [2], Activation [0].
    """
    rng = np.random.default_rng(seed)
    plan = [("LSTM", 3, 4), ("Dropout", None, None), ("GRU", 4, 3), ("SimpleRNN", 3, 2), ("Dense", 2, 1),
            ("Activation", None, None)]
    per_layer: list[list[np.ndarray]] = []
    layers, recurrent = [], []
    for k, (t, I, H) in enumerate(plan):
        name = f"layer_{k}"
        if t in ("LSTM", "GRU", "SimpleRNN"):
            listed, blocks, fused = _recurrent_params_k1(t, name, I, H, rng, "cpu")
            params = [a for _, a in listed]
            recurrent.append(_rec_expect(name, t, t, H, I, blocks, fused))
        elif t == "Dense":
            params = [_rand(rng, I, H), _rand(rng, H)]
        else:
            params = []
        per_layer.append(params)
        layers.append({"name": name, "class": t, "params": int(sum(a.size for a in params))})
    arrays: dict[str, np.ndarray] = {}
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = len(plan)  # python int -> int64 scalar
        for k, params in enumerate(per_layer):
            g = f.create_group(f"layer_{k}")
            g.attrs["nb_params"] = len(params)
            for n, a in enumerate(params):
                ds = g.create_dataset(f"param_{n}", a.shape, dtype=a.dtype)
                ds[:] = a
                arrays[f"layer_{k}/param_{n}"] = a
    return {
        "path": str(path),
        "keras_version": None,
        "backend": None,
        "full_model": False,
        "total_params": int(sum(a.size for a in arrays.values())),
        "layers": layers,
        "recurrent": recurrent,
        "arrays": arrays,
    }


def write_all(out_dir) -> dict:
    """Write every legacy file into out_dir; returns {file name: expectations}."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    j = lambda n: os.path.join(out_dir, n)  # noqa: E731
    return {
        "keras1_model_theano.h5": write_keras1_model(j("keras1_model_theano.h5")),
        "keras1_model_tf.h5": write_keras1_model(j("keras1_model_tf.h5"), backend="tensorflow",
                                                 include_optimizer=True),
        "keras1_model_gpu.h5": write_keras1_model(j("keras1_model_gpu.h5"), consume_less="gpu", backend=None),
        "keras1_weights.h5": write_keras1_weights(j("keras1_weights.h5")),
        "keras1_bidirectional.h5": write_keras1_bidirectional(j("keras1_bidirectional.h5")),
        "keras0_weights.h5": write_keras0_weights(j("keras0_weights.h5")),
    }


if __name__ == "__main__":
    import sys

    for name, exp in write_all(sys.argv[1] if len(sys.argv) > 1 else "legacy_out").items():
        print(name, exp["total_params"], [(r["path"], r["kind"]) for r in exp["recurrent"]])
