#!/usr/bin/env python3
"""Regenerate the committed sample models (needs TensorFlow, Keras 3 and tf_keras; nothing else does).

    python sample_models/make_samples.py            # writes into sample_models/

The Keras 3 files are made in this process; the tf_keras file in a child process (the two Keras
packages are kept apart). Fixed seeds; every weight (biases included) is overwritten with seeded
random values so that gate/bias slicing mistakes are visible. Also rewrites sample_models/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def randomize(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-0.5, 0.5, size=w.shape).astype(w.dtype) for w in model.get_weights()])


def keras3_part(out):
    import keras
    from keras import layers as L

    made = []

    keras.utils.set_random_seed(11)
    i = keras.Input((10, 5), name="features")
    x = L.LSTM(16, name="lstm")(i)  # kernel (5, 64), recurrent_kernel (16, 64), bias (64,)
    o = L.Dense(3, activation="softmax", name="classes")(x)
    m = keras.Model(i, o, name="lstm_classifier")
    randomize(m, 11)
    for fn in ("lstm_classifier.h5", "lstm_classifier.keras"):
        m.save(os.path.join(out, fn))
        made.append((fn, f"Keras {keras.__version__}", "LSTM(16) on (10, 5) -> Dense(3)", m.count_params()))

    keras.backend.clear_session()
    keras.utils.set_random_seed(12)
    i = keras.Input((12, 5))
    x = L.GRU(16, name="gru")(i)  # reset_after=True (Keras 3 default): bias (2, 48)
    m = keras.Model(i, L.Dense(1, name="forecast")(x), name="gru_forecaster")
    randomize(m, 12)
    m.save(os.path.join(out, "gru_forecaster.keras"))
    made.append(("gru_forecaster.keras", f"Keras {keras.__version__}", "GRU(16) on (12, 5) -> Dense(1)",
                 m.count_params()))

    keras.backend.clear_session()
    keras.utils.set_random_seed(13)
    i = keras.Input((4, 8, 8, 1))
    x = L.ConvLSTM2D(4, (3, 3), padding="same", name="convlstm")(i)
    x = L.GlobalAveragePooling2D()(x)
    m = keras.Model(i, L.Dense(2, name="out")(x), name="convlstm2d")
    randomize(m, 13)
    m.save(os.path.join(out, "convlstm2d.keras"))
    made.append(("convlstm2d.keras", f"Keras {keras.__version__}",
                 "ConvLSTM2D(4, 3x3) on (4, 8, 8, 1) -> GAP -> Dense(2)", m.count_params()))
    return made


def tf_keras_part(out):
    import tf_keras as keras
    from tf_keras import layers as L

    keras.utils.set_random_seed(14)
    m = keras.Sequential(
        [
            keras.Input((8, 5)),
            L.Bidirectional(L.LSTM(16, return_sequences=True), name="bilstm"),
            L.Bidirectional(L.GRU(8), merge_mode="sum", name="bigru"),
            L.Dense(2, activation="softmax", name="out"),
        ],
        name="bidi_stack",
    )
    randomize(m, 14)
    m.save(os.path.join(out, "bidi_stack.h5"))
    return [("bidi_stack.h5", f"tf_keras {keras.__version__} (model.save, legacy HDF5)",
             "Bidirectional(LSTM(16), seq) -> Bidirectional(GRU(8), sum) -> Dense(2), input (8, 5)",
             m.count_params())]


def write_readme(out, made):
    lines = [
        "# Sample models",
        "",
        "Small recurrent Keras models for trying `lstm_inspect` by hand and in tests. Made by",
        "`python sample_models/make_samples.py` (fixed seeds; every weight, biases included, is seeded random).",
        "The counts are Keras's own `model.count_params()`.",
        "",
        "| file | made by | model | count_params |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{fn}` | {by} | {desc} | {n} |" for fn, by, desc, n in made]
    lines += ["", "`lstm_classifier.*`: input size 5, 16 units, so the LSTM kernel is (5, 64).", ""]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--part", choices=["all", "keras3", "tf_keras"], default="all")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.part == "tf_keras":
        print(json.dumps(tf_keras_part(args.out)))
        return
    made = keras3_part(args.out)
    if args.part == "all":
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--part", "tf_keras", "--out", args.out],
                             check=True, stdout=subprocess.PIPE, text=True)
        made += [tuple(x) for x in json.loads(res.stdout.strip().splitlines()[-1])]
        write_readme(args.out, made)
    for fn, by, desc, n in made:
        size = os.path.getsize(os.path.join(args.out, fn))
        print(f"{fn}: count_params={n} ({size} bytes) - {by}: {desc}")


if __name__ == "__main__":
    main()
