#!/usr/bin/env python3
"""`lstm-inspect stats` (and optionally `plot`) on the ~1 GB model: wall, CPU and peak RSS.

    python bench/bench_stats.py [--reps 1] [--plot] [--strict]

One run, page cache warm (the model is read once first):
  cat BIG > /dev/null                               anchor: reading every byte, median of 3
  lstm-inspect stats --format json BIG              median of reps, peak RSS (guarded child included)
  lstm-inspect plot BIG -o OUTDIR --force           with --plot (full spectra of 4096×4096 gates: slow)
Targets: memory bounded, independent of the model's size: stats peak RSS <= 400 MiB on the
1.07 GB model (the two 4096×4096 float64 Gram matrices of the spectral norms are 256 MiB of it).
No wall-time target (stats computes on every weight: Gram matrices, the probe); the figures
are printed with the CPU time, steadier than wall time on a shared machine.
Exit 0 unless --strict and a target FAILs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
from _runner import RSS_NOTE, lstm_inspect_cmd, repeat, run, status, table, warm  # noqa: E402

STATS_RSS_MIB = 400.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--plot", action="store_true", help="also time `plot` (several minutes)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target FAILs")
    a = ap.parse_args()

    big = models.big_model()
    cli = lstm_inspect_cmd()
    print(f"model   {big} ({big.stat().st_size / 1e6:,.1f} MB)")
    print(f"cli     {' '.join(cli)}")
    print(f"warm    read model once: {warm(big):.2f} s")
    env = {"LSTM_INSPECT_TIMEOUT": "600"}  # the guard's base limit: the figures, not the limit, are measured

    rows, checks = [], []
    cat = repeat("cat big.h5 > /dev/null", ["sh", "-c", 'cat "$1" > /dev/null', "sh", str(big)], 3)
    rows.append([cat.label, f"{cat.wall:.2f}", f"{cat.user:.2f}", f"{cat.sys:.2f}", f"{cat.rss_mib:.1f}", "-"])

    stats = repeat("lstm-inspect stats --format json", [*cli, "stats", "--format", "json", str(big)], a.reps,
                   env=env, keep_stdout=True)
    if stats.ok:
        data = json.loads(stats.runs[-1].stdout)
        methods = sorted({m["method"] for d in data["directions"] for m in d["spectral_method"].values()})
        sigma = ", ".join(f"{d['path']} σ₁(U) {d['spectral_norm']['U']:.6f}" for d in data["directions"])
        rows.append([stats.label, f"{stats.wall:.1f}", f"{stats.user:.1f}", f"{stats.sys:.1f}",
                     f"{stats.rss_mib:.1f}", f"{len(data['directions'])} directions; {sigma}; {'/'.join(methods)}"])
        checks.append((f"stats peak RSS {stats.rss_mib:.1f} MiB <= {STATS_RSS_MIB:.0f} MiB "
                       f"(model {big.stat().st_size / 2**20:,.0f} MiB)", stats.rss_mib <= STATS_RSS_MIB))
    else:
        rows.append([stats.label, "ERROR", "-", "-", "-", stats.error()])
        checks.append((f"stats runs ({stats.error()})", False))

    if a.plot:
        out = Path(tempfile.mkdtemp(prefix="lstm-inspect-plot-")) / "pictures"
        try:
            plot = run([*cli, "plot", str(big), "-o", str(out), "--force"], env=env)
            pictures = len(list(out.glob("*.png"))) if out.exists() else 0
            rows.append(["lstm-inspect plot -o OUT", f"{plot.wall:.1f}" if plot.rc == 0 else "ERROR",
                         f"{plot.user:.1f}", f"{plot.sys:.1f}", f"{plot.maxrss_kib / 1024:.1f}",
                         f"{pictures} PNGs" if plot.rc == 0 else plot.stderr.strip()[-200:]])
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)

    print()
    print(table(["command", "wall s", "user s", "sys s", "peak RSS MiB", "note"], rows))
    print(f"\n({RSS_NOTE}; wall = median of {a.reps})")
    print("\ntargets:")
    for text, ok in checks:
        print(f"  {status(ok)}  {text}")
    return 1 if a.strict and any(not ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
