"""The TFLite zoo (converted at test time by build_tflite.py in a subprocess, cached by the builder's hash)
and TF's own generated schema module, loaded from its file so the test process never imports TensorFlow.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BUILDER = HERE / "build_tflite.py"
CACHE = ROOT / "tests" / ".zoo_cache"
CORPUS = ROOT.parent / "shared" / "corpus"


def build_tflite_zoo() -> Path:
    """Build (or reuse) the zoo; returns its folder, holding truth.json."""
    digest = hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:16]
    out = CACHE / f"tflite-{digest}"
    if (out / "truth.json").exists():
        return out
    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(BUILDER), "--out", str(tmp)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"TFLite zoo build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def tflite_zoo() -> dict[str, dict]:
    """case name -> its record (with `_path` to the .tflite and `_dir` to its weight files)."""
    folder = build_tflite_zoo()
    records = {}
    for record in json.loads((folder / "truth.json").read_text()):
        record["_dir"] = folder / record["case"]
        record["_path"] = folder / record["file"] if "file" in record else None
        records[record["case"]] = record
    return records


def load_schema_module():
    """tensorflow/lite/python/schema_py_generated.py, executed on its own (it needs only flatbuffers)."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorflow is not installed (its generated schema is the oracle)")
    path = Path(spec.submodule_search_locations[0]) / "lite" / "python" / "schema_py_generated.py"
    module_spec = importlib.util.spec_from_file_location("tflite_schema_oracle", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def spg():
    return load_schema_module()


@pytest.fixture(scope="session")
def runnable_models(spg, tmp_path_factory) -> dict:
    """The hand-built fused-operator models of runnable.py: name -> (path, truth)."""
    from .runnable import write_all
    return write_all(spg, tmp_path_factory.mktemp("tflite_runnable"))


def converted(tflite_zoo: dict, case: str) -> dict:
    """A case's record; skips when the converter failed on it (asserted in test_schema)."""
    record = tflite_zoo[case]
    if record["status"] != "ok":
        pytest.skip(f"the converter failed on {case} (asserted in test_schema)")
    return record
