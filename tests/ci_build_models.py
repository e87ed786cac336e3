#!/usr/bin/env python3
"""Build the small Keras 3 models that tests/test_ci_commands.py checks, snapshots and diffs.

Run in its own process (it imports TensorFlow; the test process must not):

    python tests/ci_build_models.py OUT_DIR

Writes under OUT_DIR:
  base.h5, base.keras           Input(6, 5) -> LSTM(16, seq) "lstm" -> Bidirectional(GRU(8)) "bidi" -> Dense(3) "head"
  units.keras                   the LSTM with 24 units
  added.keras                   one more Dense "extra" after "head"
  renamed.keras                 the LSTM named "encoder" (same class and shapes, same position)
  merge_sum.keras               the Bidirectional merged with "sum" instead of "concat"
  reset_after.keras             the GRU with reset_after=False
  float16.keras                 every layer in float16
  trained.keras                 base after a few training steps on random data
  weights_before.npz / weights_after.npz   get_weights() of each layer of base / trained, keys "<layer>/<k>"
  done.json                     what was written
"""
from __future__ import annotations

import json
import os
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402


def main(out: str) -> None:
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(7)
    os.makedirs(out, exist_ok=True)

    def build(units=16, lstm_name="lstm", merge="concat", reset_after=True, dtype=None, extra=False):
        kw = {"dtype": dtype} if dtype else {}
        model = keras.Sequential(name="ci_model")
        model.add(keras.Input((6, 5)))
        model.add(L.LSTM(units, return_sequences=True, name=lstm_name, **kw))
        model.add(L.Bidirectional(L.GRU(8, reset_after=reset_after, **kw), merge_mode=merge, name="bidi", **kw))
        model.add(L.Dense(3, name="head", **kw))
        if extra:
            model.add(L.Dense(3, name="extra", **kw))
        return model

    written = []

    def save(model, name):
        path = os.path.join(out, name)
        model.save(path)
        written.append(name)

    base = build()
    save(base, "base.h5")
    save(base, "base.keras")
    np.savez(os.path.join(out, "weights_before.npz"),
             **{f"{layer.name}/{k}": w for layer in base.layers for k, w in enumerate(layer.get_weights())})
    save(build(units=24), "units.keras")
    save(build(extra=True), "added.keras")
    save(build(lstm_name="encoder"), "renamed.keras")
    save(build(merge="sum"), "merge_sum.keras")
    save(build(reset_after=False), "reset_after.keras")
    save(build(dtype="float16"), "float16.keras")

    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 5)).astype("float32")
    y = rng.normal(size=(32, 3)).astype("float32")
    base.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    base.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 4 steps
    save(base, "trained.keras")
    np.savez(os.path.join(out, "weights_after.npz"),
             **{f"{layer.name}/{k}": w for layer in base.layers for k, w in enumerate(layer.get_weights())})

    with open(os.path.join(out, "done.json"), "w") as fh:
        json.dump({"keras": keras.__version__, "files": written}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
