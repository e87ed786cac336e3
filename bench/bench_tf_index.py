#!/usr/bin/env python3
"""TF checkpoints: `lstm-inspect summary` vs `tf.train.list_variables`, same run; split-gates of a big one.

    python bench/bench_tf_index.py [--reps 5] [--tf-reps 2] [--no-big] [--strict]

Checkpoints, built once with TF in a subprocess under bench/.cache/tf/:
  corpus TF1         the corpus checkpoint (24 tensors, 3.5 MB; MultiRNNCell of two LSTMCell(128))
  12,000 variables   a TF2 object-based checkpoint of 12,000 variables (a ~600 KB index in several
                     blocks, and a 12,001-node object graph the summary parses)
  big TF1 LSTM       a TF1 Saver checkpoint of MultiRNNCell([LSTMCell(2048)] * 2) with Adam slots
                     (input 1024): 3 x 300 MB of float32 (weights and two slots)
Each command is its own subprocess (interpreter start and imports included; see _runner.py):
  summary            python -m lstm_inspect summary --format json <prefix>   (this worktree's code)
  open+list          open_bundle(p) and every entry's name, dtype, shape (the bare reader)
  TF list            python -c "import tensorflow as tf; tf.train.list_variables(p)"
  split-gates        python -m lstm_inspect split-gates <big> -o out.npz (blocks streamed by row band)
  cp                 cp of the big checkpoint's data shard (the copy anchor)
Targets: summary >= 10x faster than TF list and <= 60 MiB peak RSS.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runner import PY, RSS_NOTE, fmt_ratio, repeat, table, warm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache" / "tf"
CORPUS = ROOT.parent / "shared" / "corpus" / "char-rnn-tensorflow-laurajul__model.ckpt-248399"
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
BUILD_MANY = """
import sys, numpy as np, tensorflow as tf
variables = {f"v{i:05d}": tf.Variable(np.full((4,), i, np.float32)) for i in range(12000)}
tf.train.Checkpoint(**variables).write(sys.argv[1])
"""
BUILD_BIG = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf
v1 = tf.compat.v1
with tf.Graph().as_default(), v1.Session() as sess:
    x = v1.placeholder(tf.float32, [1, 2, 1024])
    cell = v1.nn.rnn_cell.MultiRNNCell([v1.nn.rnn_cell.LSTMCell(2048) for _ in range(2)])
    y = v1.nn.dynamic_rnn(cell, x, dtype=tf.float32)[0]
    train = v1.train.AdamOptimizer(0.01).minimize(tf.reduce_sum(y))
    sess.run(v1.global_variables_initializer())
    v1.train.Saver().save(sess, sys.argv[1], write_meta_graph=False)
"""
LIST = ("import sys\nfrom lstm_inspect.formats.tf.bundle import open_bundle\n"
        "with open_bundle(sys.argv[1]) as b:\n    rows = [(n, e.dtype, e.shape) for n, e in b.entries.items()]\n")
TF_LIST = "import sys, tensorflow as tf; tf.train.list_variables(sys.argv[1])"
TARGET_RATIO, TARGET_MIB = 10.0, 60.0


def build(prefix: Path, script: str) -> Path:
    if not Path(f"{prefix}.index").exists():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([PY, "-c", script, str(prefix)], check=True, env={**os.environ, **TF_ENV})
    return prefix


def checkpoints(big: bool) -> dict[str, Path]:
    found = {}
    if Path(f"{CORPUS}.index").exists():
        found["corpus TF1 (24 tensors)"] = CORPUS
    found["12,000 variables (TF2)"] = build(CACHE / "many" / "ckpt", BUILD_MANY)
    if big:
        found["big TF1 LSTM (2 x 2048, Adam)"] = build(CACHE / "big" / "model.ckpt", BUILD_BIG)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tf-reps", type=int, default=2)
    parser.add_argument("--no-big", action="store_true", help="skip the 0.9 GB checkpoint")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    env = {"PYTHONPATH": str(ROOT)}
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "lstm_inspect")], check=False)
    rows, verdicts = [], []
    found = checkpoints(not args.no_big)
    for label, prefix in found.items():
        summary = repeat("summary", [PY, "-m", "lstm_inspect", "summary", "--format", "json", str(prefix)],
                         args.reps, env=env)
        listing = repeat("open+list", [PY, "-c", LIST, str(prefix)], args.reps, env=env)
        tf_list = repeat("TF list", [PY, "-c", TF_LIST, str(prefix)], args.tf_reps, env=TF_ENV)
        for series in (summary, listing, tf_list):
            if not series.ok:
                sys.exit(f"{series.label} failed on {prefix}: {series.error()}")
        ratio = tf_list.wall / summary.wall
        ok = ratio >= TARGET_RATIO and summary.rss_mib <= TARGET_MIB
        verdicts.append(ok)
        index_kib = Path(f"{prefix}.index").stat().st_size / 1024
        rows.append([label, f"{index_kib:.0f} KiB", f"{summary.wall:.3f} s / {summary.rss_mib:.0f} MiB",
                     f"{listing.wall:.3f} s / {listing.rss_mib:.0f} MiB",
                     f"{tf_list.wall:.2f} s / {tf_list.rss_mib:.0f} MiB", fmt_ratio(ratio), "PASS" if ok else "FAIL"])
    crc = subprocess.run([PY, "-c", "from lstm_inspect.formats.tf.crc32c import IMPLEMENTATION as i; print(i)"],
                         env={**os.environ, **env}, capture_output=True, text=True).stdout.strip()
    print(table(["checkpoint", "index", "summary", "open+list", "TF list_variables", "TF / summary",
                 f"target >= {TARGET_RATIO:g}x, <= {TARGET_MIB:g} MiB"], rows))
    print(f"\nmedian wall of {args.reps} runs (TF: {args.tf_reps}); {RSS_NOTE}; CRC-32C: {crc}")
    if not args.no_big:
        split_rows(found["big TF1 LSTM (2 x 2048, Adam)"], env)
    if args.strict and not all(verdicts):
        sys.exit(1)


def split_rows(prefix: Path, env: dict) -> None:
    """split-gates of the big checkpoint: model tensors only (the Adam slots are not read)."""
    shard = Path(f"{prefix}.data-00000-of-00001")
    warm(shard)
    out = Path(tempfile.mkdtemp(prefix="tfbench-", dir=str(CACHE)))
    try:
        cp = repeat("cp", ["cp", str(shard), str(out / "copy")], 3)
        split = repeat("split-gates", [PY, "-m", "lstm_inspect", "split-gates", str(prefix), "-o", str(out / "g.npz"),
                                       "--force"], 3, env=env)
        if not split.ok:
            sys.exit(f"split-gates failed: {split.error()}")
        written = (out / "g.npz").stat().st_size / 2**20
    finally:
        shutil.rmtree(out, ignore_errors=True)
    shard_mib = shard.stat().st_size / 2**20
    print()
    print(table(["command", "wall", "peak RSS", "note"], [
        ["cp data shard", f"{cp.wall:.2f} s", f"{cp.rss_mib:.0f} MiB", f"{shard_mib:.0f} MiB shard (weights + Adam slots)"],
        ["split-gates", f"{split.wall:.2f} s", f"{split.rss_mib:.0f} MiB",
         f"{written:.0f} MiB of blocks written; the W and U row bands of each kernel read once"],
    ]))


if __name__ == "__main__":
    main()
