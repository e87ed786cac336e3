"""Shared fixtures: the corpus of real files, and the model zoo built at test time with Keras.

The zoo is built by `tests/zoo/build.py` in a subprocess (the test process never imports
TensorFlow) once per framework, cached under `tests/.zoo_cache/` keyed by the builder's hash.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
CRASHERS = ROOT.parent / "shared" / "fixtures" / "hdf5-crashers"
SAMPLES = ROOT / "sample_models"
ZOO_BUILDER = ROOT / "tests" / "zoo" / "build.py"
ZOO_CACHE = ROOT / "tests" / ".zoo_cache"
FRAMEWORKS = ("keras3", "tf_keras")


def corpus_manifest() -> list[dict]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _builder_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted((ROOT / "tests" / "zoo").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_zoo(framework: str) -> Path:
    """Build (or reuse) the zoo of one framework; returns its folder (holding truth.json)."""
    out = ZOO_CACHE / f"{framework}-{_builder_hash()}"
    if (out / "truth.json").exists():
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(ZOO_BUILDER), "--framework", framework, "--out", str(tmp)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"zoo build for {framework} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session", params=FRAMEWORKS)
def zoo(request):
    """(folder, truth entries) for one framework; tests using it run once per framework."""
    folder = build_zoo(request.param)
    return folder, json.loads((folder / "truth.json").read_text())


def zoo_entries(framework: str) -> list[dict]:
    folder = build_zoo(framework)
    entries = json.loads((folder / "truth.json").read_text())
    for e in entries:
        e["_abs"] = str(folder / e["file"])
        e["_root"] = str(folder)
    return entries


@pytest.fixture(scope="session")
def zoo_keras3() -> list[dict]:
    return zoo_entries("keras3")


@pytest.fixture(scope="session")
def zoo_tf_keras() -> list[dict]:
    return zoo_entries("tf_keras")


@pytest.fixture(scope="session")
def all_zoo(zoo_keras3, zoo_tf_keras) -> list[dict]:
    return zoo_keras3 + zoo_tf_keras
