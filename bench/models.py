#!/usr/bin/env python3
"""Benchmark models: build once, cache under bench/.cache/, hand out paths.

    python bench/models.py            # build what is missing, print both paths
    python bench/models.py --big      # print (building if needed) the ~1 GB model path only
    python bench/models.py --small    # print the small sample path only
    python bench/models.py --rebuild  # rebuild the cached models

As a module (the bench scripts use it): `big_model()` / `small_model()` return paths.
This module imports only the standard library: building runs Keras in a *subprocess*
(`python bench/models.py _build ...`), so a benchmarking process never imports TensorFlow.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"
BIG = CACHE / "big_lstm.h5"
SMALL_SAMPLE = ROOT / "sample_models" / "lstm_classifier.h5"
SMALL_CACHED = CACHE / "lstm_classifier.h5"

UNITS = 4096  # Input(None, 4096) -> LSTM(4096, seq) -> LSTM(4096) -> Dense(1)
# 2 x (kernel 4096x16384 + recurrent 4096x16384 + bias 16384) + Dense(4096 + 1), float32
BIG_PARAMS = 2 * (UNITS * 4 * UNITS * 2 + 4 * UNITS) + UNITS + 1
BIG_MIN, BIG_MAX = 0.95e9, 1.25e9  # "~1 GB" sanity bounds for the saved file, bytes

TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "",
          "PYTHONHASHSEED": "0"}


def _check_big(path: Path) -> None:
    size = path.stat().st_size
    if not BIG_MIN <= size <= BIG_MAX:
        raise SystemExit(f"{path}: {size / 1e9:.3f} GB, expected ~1 GB "
                         f"({BIG_PARAMS:,} float32 params = {BIG_PARAMS * 4 / 1e9:.3f} GB)")


def _build_in_subprocess(kind: str, out: Path) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".partial.h5")  # keras wants the .h5 suffix
    tmp.unlink(missing_ok=True)
    t0 = time.perf_counter()
    print(f"[models] building {kind} model -> {out} (Keras, in a subprocess) ...", file=sys.stderr,
          flush=True)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "_build", kind, str(tmp)],
                   check=True, env={**os.environ, **TF_ENV})
    os.replace(tmp, out)  # atomic: an interrupted build never leaves a half file behind
    os.replace(f"{tmp}.json", f"{out}.json")  # build stamp: keras version, parameter count
    print(f"[models] built {out} ({out.stat().st_size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def big_model(rebuild: bool = False) -> Path:
    """Path of the ~1 GB legacy .h5 with two LSTM(4096) layers (built on first use)."""
    if rebuild or not BIG.exists():
        _build_in_subprocess("big", BIG)
    _check_big(BIG)
    return BIG


def small_model(rebuild: bool = False) -> Path:
    """sample_models/lstm_classifier.h5 if present, else a cached equivalent built here."""
    if SMALL_SAMPLE.is_file() and not rebuild:
        return SMALL_SAMPLE
    if rebuild or not SMALL_CACHED.exists():
        _build_in_subprocess("small", SMALL_CACHED)
    return SMALL_CACHED


# ------------------------------------------------------------------ the Keras side (subprocess only)
def _build(kind: str, out: str) -> None:
    import numpy as np
    import keras

    keras.utils.set_random_seed(0)
    if kind == "big":
        # glorot_uniform for the recurrent kernel too: the default orthogonal init runs a QR
        # of a 16384x4096 matrix per layer, which only costs build time. Weights are never trained.
        init = dict(kernel_initializer="glorot_uniform", recurrent_initializer="glorot_uniform")
        inp = keras.Input(shape=(None, UNITS), name="frames")
        x = keras.layers.LSTM(UNITS, return_sequences=True, name="lstm_1", **init)(inp)
        x = keras.layers.LSTM(UNITS, name="lstm_2", **init)(x)
        y = keras.layers.Dense(1, name="head")(x)
        model = keras.Model(inp, y, name="big_lstm")
        assert model.count_params() == BIG_PARAMS, (model.count_params(), BIG_PARAMS)
    elif kind == "small":
        inp = keras.Input(shape=(None, 5), name="features")
        x = keras.layers.LSTM(32, name="lstm")(inp)
        y = keras.layers.Dense(3, activation="softmax", name="classes")(x)
        model = keras.Model(inp, y, name="lstm_classifier")
        model(np.zeros((1, 7, 5), "float32"))
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    model.save(out)  # legacy HDF5 (the .h5 suffix), written by Keras 3
    json.dump({"kind": kind, "keras": keras.__version__, "params": model.count_params()},
              open(out + ".json", "w"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_build"]:
        _build(argv[1], argv[2])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--big", action="store_true", help="only the ~1 GB model")
    ap.add_argument("--small", action="store_true", help="only the small sample")
    ap.add_argument("--rebuild", action="store_true", help="rebuild cached models")
    a = ap.parse_args(argv)
    both = not (a.big or a.small)
    if a.big or both:
        p = big_model(a.rebuild)
        print(f"big\t{p}\t{p.stat().st_size / 1e9:.3f} GB")
    if a.small or both:
        p = small_model(a.rebuild)
        print(f"small\t{p}\t{p.stat().st_size / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
