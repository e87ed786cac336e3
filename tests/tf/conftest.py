"""The TensorFlow zoo for tests/tf: built once per builder version by `build_tf_zoo.py` in a subprocess
(the test process never imports TensorFlow), cached under tests/.zoo_cache/tf-<hash>/."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILDER = HERE / "build_tf_zoo.py"
CACHE = ROOT / "tests" / ".zoo_cache"
CORPUS = ROOT.parent / "shared" / "corpus"
CORPUS_PREFIX = CORPUS / "char-rnn-tensorflow-laurajul__model.ckpt-248399"


def build_tf_zoo() -> Path:
    out = CACHE / f"tf-{hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:16]}"
    if (out / "truth.json").exists():
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, str(BUILDER), "--out", str(tmp)]
    if Path(f"{CORPUS_PREFIX}.index").exists():
        command += ["--corpus-prefix", str(CORPUS_PREFIX)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"TF zoo build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class Zoo:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.truth = json.loads((folder / "truth.json").read_text())
        self.cases = self.truth["cases"]

    def path(self, rel: str) -> Path:
        return self.folder / rel

    def case(self, name: str) -> dict:
        return self.cases[name]


@pytest.fixture(scope="session")
def tfzoo() -> Zoo:
    return Zoo(build_tf_zoo())
