#!/usr/bin/env python3
"""`lstm-inspect split-gates` on the ~1 GB model vs `cp` (anchor) vs a naive h5py + np.savez baseline.

    python bench/bench_split.py [--reps 3] [--sync-reps 1] [--outdir /tmp] [--strict]

One run, page cache warm, every output on the same filesystem (--outdir, default /tmp):
  (outputs go to a fresh OUTDIR/lstm-inspect-bench-XXXX/, deleted at the end)
  cp BIG OUTDIR/x.h5                                          anchor, median of reps
  cp BIG OUTDIR/x.h5 && sync OUTDIR/x.h5                      durable-copy anchor (fsync), --sync-reps
  lstm-inspect split-gates BIG -o OUTDIR/OUT.npz --force      median of reps, peak RSS
  naive: python reads every dataset with h5py, np.savez()     median of reps, peak RSS
Before each timed run the previous output is deleted and `sync` flushes dirty pages (both
untimed), so every run writes a fresh file with no writeback of an earlier one in flight.
Targets (against plain cp): split-gates <= 1.3 x cp wall and <= 200 MiB peak RSS.
If `lstm-inspect split-gates --help` fails the row is skipped and the reason printed.
All outputs are removed at the end. Exit 0 unless --strict and a target FAILs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
from _runner import PY, RSS_NOTE, fmt_ratio, lstm_inspect_cmd, repeat, run, status, table, warm  # noqa: E402

WALL_X_CP, RSS_MIB = 1.3, 200.0

NAIVE = r"""
import sys, h5py, numpy as np
src, dst = sys.argv[1], sys.argv[2]
arrays = {}
with h5py.File(src, "r") as f:
    f.visititems(lambda name, obj: arrays.__setitem__(name.replace("/", "__"), obj[()])
                 if isinstance(obj, h5py.Dataset) else None)
np.savez(dst, **arrays)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--sync-reps", type=int, default=1,
                    help="reps of the durable cp+sync anchor (slow: disk writeback speed)")
    ap.add_argument("--outdir", type=Path, default=Path("/tmp"),
                    help="where outputs go (same filesystem for every row)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target FAILs or is skipped")
    a = ap.parse_args()

    big = models.big_model()
    outdir = Path(tempfile.mkdtemp(prefix="lstm-inspect-bench-", dir=a.outdir.resolve()))
    cp_out, ours_out, naive_out = outdir / "x.h5", outdir / "OUT.npz", outdir / "naive_OUT.npz"
    cli = lstm_inspect_cmd()
    print(f"model   {big} ({big.stat().st_size / 1e6:,.1f} MB)")
    print(f"outdir  {outdir}  (st_dev {os.stat(outdir).st_dev}; model st_dev {os.stat(big).st_dev})")
    print(f"cli     {' '.join(cli)}")
    print(f"warm    read model once: {warm(big):.2f} s")

    def fresh(path: Path):
        def before() -> None:
            path.unlink(missing_ok=True)
            os.sync()
        return before

    rows, checks = [], []
    try:
        cp = repeat("cp big.h5 x.h5", ["cp", str(big), str(cp_out)], a.reps, before=fresh(cp_out))
        if not cp.ok:
            print(f"cp failed: {cp.error()}")
            return 1
        rows.append([cp.label, f"{cp.wall:.3f}", f"{cp.user:.2f}", f"{cp.sys:.2f}", f"{cp.rss_mib:.1f}", "1.000x", "-",
                     f"{cp_out.stat().st_size / 1e6:,.1f}"])
        cp_out.unlink(missing_ok=True)
        # Second anchor: a durable copy (fsync of the output). A writer that fsyncs its output
        # pays the disk's writeback speed, which plain `cp` (page cache only) never does.
        cps = repeat("cp big.h5 x.h5 && sync x.h5", ["sh", "-c", 'cp "$1" "$2" && sync "$2"', "sh",
                                                      str(big), str(cp_out)], a.sync_reps,
                     before=fresh(cp_out))
        cps_wall = cps.wall if cps.ok else None
        rows.append([cps.label, f"{cps.wall:.3f}" if cps.ok else "ERROR", f"{cps.user:.2f}", f"{cps.sys:.2f}",
                     f"{cps.rss_mib:.1f}" if cps.ok else "-",
                     fmt_ratio(cps.wall / cp.wall) if cps.ok else "-", "1.000x" if cps.ok else "-",
                     cps.error() or f"{cp_out.stat().st_size / 1e6:,.1f}"])
        cp_out.unlink(missing_ok=True)
        sync_ratio = lambda w: fmt_ratio(w / cps_wall) if cps_wall else "-"  # noqa: E731

        probe = run([*cli, "split-gates", "--help"])
        if probe.rc != 0:
            why = (probe.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            msg = f"SKIPPED: `lstm-inspect split-gates --help` failed (rc={probe.rc}): {why}"
            rows.append(["lstm-inspect split-gates", "-", "-", "-", "-", "-", "-", msg])
            checks.append(("split-gates measured (command unavailable, row skipped)", False))
        else:
            ours = repeat("lstm-inspect split-gates -o OUT.npz --force",
                          [*cli, "split-gates", str(big), "-o", str(ours_out), "--force"],
                          a.reps, before=fresh(ours_out))
            if ours.ok and ours_out.exists():
                with zipfile.ZipFile(ours_out) as z:
                    n = len(z.namelist())
                size = ours_out.stat().st_size
                rows.append([ours.label, f"{ours.wall:.3f}", f"{ours.user:.2f}", f"{ours.sys:.2f}", f"{ours.rss_mib:.1f}",
                             fmt_ratio(ours.wall / cp.wall), sync_ratio(ours.wall),
                             f"{size / 1e6:,.1f} ({n} arrays)"])
                checks.append((f"split-gates wall {ours.wall:.3f} s <= {WALL_X_CP} x cp "
                               f"({WALL_X_CP * cp.wall:.3f} s)", ours.wall <= WALL_X_CP * cp.wall))
                checks.append((f"split-gates peak RSS {ours.rss_mib:.1f} MiB <= {RSS_MIB} MiB",
                               ours.rss_mib <= RSS_MIB))
            else:
                err = ours.error() or f"rc=0 but {ours_out} was not written"
                w = f"{ours.runs[-1].wall:.3f}"
                rows.append([ours.label, f"ERROR after {w} s", "-", "-", "-", "-", "-", err])
                checks.append((f"split-gates runs ({err})", False))
            ours_out.unlink(missing_ok=True)

        naive = repeat("naive h5py read-all + np.savez", [PY, "-c", NAIVE, str(big), str(naive_out)],
                       a.reps, before=fresh(naive_out))
        if naive.ok:
            rows.append([naive.label, f"{naive.wall:.3f}", f"{naive.user:.2f}", f"{naive.sys:.2f}", f"{naive.rss_mib:.1f}",
                         fmt_ratio(naive.wall / cp.wall), sync_ratio(naive.wall),
                         f"{naive_out.stat().st_size / 1e6:,.1f}"])
        else:
            rows.append([naive.label, "ERROR", "-", "-", "-", "-", "-", naive.error()])
    finally:
        shutil.rmtree(outdir, ignore_errors=True)

    print()
    print(table(["command", "median wall s", "user s", "sys s", "peak RSS MiB", "ratio to cp",
                 "ratio to cp+sync", "output MB"], rows))
    print(f"\n({RSS_NOTE}; wall = median of {a.reps}; outputs removed)")
    print("\ntargets:")
    for text, ok in checks:
        print(f"  {status(ok)}  {text}")
    return 1 if a.strict and any(not ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
