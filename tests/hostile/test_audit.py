"""No code from a file, ever: an audit hook watches the reading path.

A separate process (audit hooks cannot be removed) imports the CLI, warms it up on the sample models,
installs `sys.addaudithook`, then runs `summary` (table, JSON, Markdown), `split-gates` and `explain`
in-process (LSTM_INSPECT_NO_GUARD=1, so the reading happens under the hook) on the sample models, the
damage seeds and the hand-built hostile files (all but the few that need patched limits or hit a known
reader bug). It fails on `marshal.loads`, `exec`/`eval`, `compile`, `pickle.find_class`, subprocesses,
`os.system`, sockets, ctypes, and on importing keras/tensorflow/torch/jax.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ._harness import ROOT
from .conftest import CANARY, CASES, SAMPLES


def test_reading_hostile_files_runs_no_code(hostile_files, seeds, tmp_path: Path) -> None:
    cases = [c for c in CASES if not c.limits and not c.xfail]
    paths = [str(hostile_files[c.id][0]) for c in cases]
    samples = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix in (".h5", ".keras"))
    spec = {"warmup": samples + [str(SAMPLES / "missing.h5"), str(seeds["weights"])],
            "paths": samples + [str(p) for p in seeds.values()] + paths,
            "formats": ["json"], "scratch": str(tmp_path), "controls": True}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.hostile._harness", "--audit", str(tmp_path / "spec.json"),
                           str(tmp_path / "report.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    report = json.loads((tmp_path / "report.json").read_text())
    print(f"\naudit: {report['paths']} files, exit codes {report['exit_codes']}, "
          f"modules imported under the hook: {report['new_modules']}")
    details = "\n".join(f"{v['event']}: {v['detail']}\n{''.join(v['stack'][-6:])}" for v in report["violations"][:5])
    assert not report["violations"], f"{len(report['violations'])} audit violations:\n{details}"
    assert not report["banned_loaded"], report["banned_loaded"]
    assert report["controls"] and all(seen for _, seen in report["controls"]), report["controls"]
    assert report["paths"] >= 150
    assert 3 not in {int(k) for k in report["exit_codes"]}, report["exit_codes"]
    for c in cases:
        assert not (hostile_files[c.id][1] / CANARY).exists(), c.id
