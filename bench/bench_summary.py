#!/usr/bin/env python3
"""`lstm-inspect summary --format json` vs Keras `load_model(...).summary()`: wall time and peak RSS.

    python bench/bench_summary.py [--reps 5] [--keras-reps 1] [--strict] [--no-keras]

One run measures, each command as its own subprocess (see _runner.py for how):
  anchors:  python -c pass ; python -c "import h5py, numpy" ; python -c "import typer, rich.console"
  small:    lstm-inspect summary --format json SMALL  (x reps, median)  vs Keras (x keras-reps)
  big:      the same on the ~1 GB two-LSTM(4096) legacy .h5 from bench/models.py
Targets (checked on the median wall and the peak RSS of the lstm-inspect process tree's
largest process): small <= 0.35 s and <= 60 MiB; 1 GB <= 0.5 s and <= 100 MiB.
Exit status is 0 unless --strict and a target FAILs (or lstm-inspect errors).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
from _runner import PY, RSS_NOTE, TREE_NOTE, fmt_ratio, lstm_inspect_cmd, repeat, run, status, table, warm  # noqa: E402

TARGETS = {"small": (0.35, 60.0), "big": (0.5, 100.0)}  # (median wall s, peak RSS MiB)
FLOOR_RATIO = 1.4  # small summary's median wall against the h5py floor, measured in the same run
# The least any HDF5 summary must do: import h5py and NumPy, open the file, parse the model config and
# visit every dataset's shape and dtype.
FLOOR_SNIPPET = ("import sys, json, h5py, numpy\n"
                 "f = h5py.File(sys.argv[1], 'r')\n"
                 "json.loads(f.attrs['model_config']) if 'model_config' in f.attrs else None\n"
                 "f.visititems(lambda n, o: (o.shape, o.dtype) if isinstance(o, h5py.Dataset) else None)\n")
KERAS_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "KERAS_BACKEND": "tensorflow"}
KERAS_SNIPPET = ("import sys, keras; "
                 "keras.models.load_model(sys.argv[1], compile=False).summary()")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="lstm-inspect / anchor repetitions")
    ap.add_argument("--keras-reps", type=int, default=1, help="Keras repetitions (slow)")
    ap.add_argument("--no-keras", action="store_true", help="skip the Keras baseline rows")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any target FAILs")
    a = ap.parse_args()

    files = {"small": models.small_model(), "big": models.big_model()}
    cli = lstm_inspect_cmd()
    print(f"python     {PY}")
    print(f"cli        {' '.join(cli)}")
    for k, p in files.items():
        print(f"{k:<10} {p} ({p.stat().st_size / 1e6:,.1f} MB)")
        warm(p)
    warm(Path(cli[0]))

    rows, checks, errors = [], [], []
    anchors = [("python -c pass", [PY, "-c", "pass"]),
               ("python -c 'import h5py, numpy'", [PY, "-c", "import h5py, numpy"]),
               ("h5py floor: import + open + config + shapes <small>", [PY, "-c", FLOOR_SNIPPET,
                                                                         str(files["small"])]),
               ("python -c 'import typer, rich.console'",
                [PY, "-c", "import typer, rich.console"])]
    anchor_series = []
    for label, argv in anchors:
        run(argv)  # warm-up (pyc, page cache)
        s = repeat(label, argv, a.reps)
        anchor_series.append(s)
        rows.append([label, f"{s.wall:.3f}", f"{s.user:.3f}", f"{s.sys:.3f}", f"{s.rss_mib:.1f}", "-", "-",
                     "anchor"])
    startup, floor = anchor_series[0].wall, anchor_series[2]

    for kind, path in files.items():
        argv = [*cli, "summary", "--format", "json", str(path)]
        run(argv)  # warm-up
        ours = repeat(f"lstm-inspect summary --format json <{kind}>", argv, a.reps, keep_stdout=True)
        if ours.ok:
            try:
                json.loads(ours.runs[-1].stdout)
            except ValueError as e:
                ours.runs[-1].rc, ours.runs[-1].stderr = -1, f"stdout is not JSON: {e}"
        tree = run(argv, tree=True) if ours.ok else None  # one extra sampled run: summed tree RSS
        keras = None
        if not a.no_keras:
            keras = repeat(f"keras load_model().summary() <{kind}>",
                           [PY, "-c", KERAS_SNIPPET, str(path)], a.keras_reps, env=KERAS_ENV)
            if not keras.ok:
                errors.append(f"{keras.label}: {keras.error()}")
        kok = keras is not None and keras.ok
        if ours.ok:
            rows.append([ours.label, f"{ours.wall:.3f}", f"{ours.user:.3f}", f"{ours.sys:.3f}", f"{ours.rss_mib:.1f}",
                         f"{tree.tree_peak_kib / 1024:.1f}" if tree else "-",
                         f"wall {fmt_ratio(ours.wall / keras.wall) if kok else '-'} / "
                         f"RSS {fmt_ratio(ours.rss_mib / keras.rss_mib) if kok else '-'}",
                         f"{fmt_ratio(ours.wall / startup)} python startup, "
                         f"{fmt_ratio(ours.wall / floor.wall)} h5py floor (CPU {fmt_ratio(ours.cpu / floor.cpu)})"])
            wall_t, rss_t = TARGETS[kind]
            checks.append((f"{kind}: median wall {ours.wall:.3f} s <= {wall_t} s", ours.wall <= wall_t))
            checks.append((f"{kind}: peak RSS {ours.rss_mib:.1f} MiB <= {rss_t} MiB",
                           ours.rss_mib <= rss_t))
            if kind == "small":
                checks.append((f"small: median wall {ours.wall:.3f} s <= {FLOOR_RATIO} x h5py floor "
                               f"({FLOOR_RATIO * floor.wall:.3f} s)", ours.wall <= FLOOR_RATIO * floor.wall))
        else:
            rows.append([ours.label, "ERROR", "-", "-", "-", "-", "-", ours.error()])
            errors.append(f"{ours.label}: {ours.error()}")
            checks.append((f"{kind}: lstm-inspect summary runs", False))
        if keras is not None and kok:
            rows.append([keras.label, f"{keras.wall:.3f}", f"{keras.user:.3f}", f"{keras.sys:.3f}",
                         f"{keras.rss_mib:.1f}", "-", "1.000x",
                         f"n={len(keras.runs)}"])

    print()
    print(table(["command", "median wall s", "user s", "sys s", "peak RSS MiB", "tree PSS MiB",
                 "ratio to Keras", "note"], rows))
    print(f"\n({RSS_NOTE};\n {TREE_NOTE})")
    print("\ntargets:")
    for text, ok in checks:
        print(f"  {status(ok)}  {text}")
    for e in errors:
        print(f"  error: {e}")
    failed = any(not ok for _, ok in checks)
    return 1 if (a.strict and (failed or errors)) else 0


if __name__ == "__main__":
    sys.exit(main())
