#!/usr/bin/env python3
"""Listing a TF checkpoint: lstm-inspect's bundle reader vs `tf.train.list_variables`, same run.

    python bench/bench_tf_index.py [--reps 5] [--tf-reps 2]

Checkpoints: the corpus TF1 checkpoint (24 tensors, 3.5 MB) and a TF2 checkpoint of 12,000 variables
(a ~600 KB index in several data blocks), built once with TF in a subprocess under bench/.cache/tf/.
Each command is its own subprocess (interpreter start and imports included; see _runner.py):
  open+list     open_bundle(p) and every entry's name, dtype, shape (index blocks' CRCs checked)
  read all      the same, then every numeric value read with its CRC-32C checked
  TF list       python -c "import tensorflow as tf; tf.train.list_variables(p)"
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import PY, RSS_NOTE, fmt_ratio, repeat, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "tf"
CORPUS = ROOT.parent / "shared" / "corpus" / "char-rnn-tensorflow-laurajul__model.ckpt-248399"
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
BUILD_MANY = """
import sys, numpy as np, tensorflow as tf
variables = {f"v{i:05d}": tf.Variable(np.full((4,), i, np.float32)) for i in range(12000)}
tf.train.Checkpoint(**variables).write(sys.argv[1])
"""
LIST = ("import sys\nfrom lstm_inspect.formats.tf.bundle import open_bundle\n"
        "with open_bundle(sys.argv[1]) as b:\n    rows = [(n, e.dtype, e.shape) for n, e in b.entries.items()]\n")
READ_ALL = LIST + ("with open_bundle(sys.argv[1]) as b:\n"
                   "    [b.read(n) for n, e in b.entries.items() if e.is_numeric]\n")
TF_LIST = "import sys, tensorflow as tf; tf.train.list_variables(sys.argv[1])"


def checkpoints() -> dict[str, Path]:
    many = CACHE / "many" / "ckpt"
    if not Path(f"{many}.index").exists():
        many.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([PY, "-c", BUILD_MANY, str(many)], check=True, env={**os.environ, **TF_ENV})
    found = {"12,000 variables (TF2)": many}
    if Path(f"{CORPUS}.index").exists():
        found["corpus TF1 (24 tensors)"] = CORPUS
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tf-reps", type=int, default=2)
    args = parser.parse_args()
    env = {"PYTHONPATH": str(ROOT)}
    rows = []
    for label, prefix in checkpoints().items():
        ours = repeat("open+list", [PY, "-c", LIST, str(prefix)], args.reps, env=env)
        full = repeat("read all", [PY, "-c", READ_ALL, str(prefix)], args.reps, env=env)
        tf_list = repeat("TF list", [PY, "-c", TF_LIST, str(prefix)], args.tf_reps, env=TF_ENV)
        index_kib = Path(f"{prefix}.index").stat().st_size / 1024
        for series in (ours, full, tf_list):
            if not series.ok:
                sys.exit(f"{series.label} failed on {prefix}: {series.error()}")
        rows.append([label, f"{index_kib:.0f} KiB", f"{ours.wall:.3f} s / {ours.rss_mib:.0f} MiB",
                     f"{full.wall:.3f} s / {full.rss_mib:.0f} MiB", f"{tf_list.wall:.2f} s / {tf_list.rss_mib:.0f} MiB",
                     fmt_ratio(tf_list.wall / ours.wall)])
    crc = subprocess.run([PY, "-c", "from lstm_inspect.formats.tf.crc32c import IMPLEMENTATION as i; print(i)"],
                         env={**os.environ, **env}, capture_output=True, text=True).stdout.strip()
    print(table(["checkpoint", "index", "open+list", "read all + CRC", "TF list_variables", "TF / ours"], rows))
    print(f"\nmedian wall of {args.reps} runs (TF: {args.tf_reps}); {RSS_NOTE}; CRC-32C: {crc}")


if __name__ == "__main__":
    main()
