"""`verify` on `.tflite` files: TensorFlow's own interpreter against the NumPy cell of the split blocks.

The test process never imports TensorFlow: one driver subprocess runs every CLI call in-process (the first
with the guard, later ones with LSTM_INSPECT_NO_GUARD=1: forking after TensorFlow started its threads is
not safe). Oracles: the interpreter's own tensors; a mislabelled split (gates i and f swapped in the cell
builder) must fail, in float and quantized files alike."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .build_tflite import all_cases
from .conftest import CORPUS, ROOT

DRIVER = r'''
import dataclasses, json, os, sys

spec = json.load(open(sys.argv[1]))


from lstm_inspect.cells import layouts
original_cut = layouts.cut


def swapped_cut(*args, **kwargs):
    """Mislabel the split: blocks of gate i are called f and vice versa (GRU: z and r), in every layout."""
    other = {"i": "f", "f": "i", "z": "r", "r": "z"}
    out = []
    for b in original_cut(*args, **kwargs):
        kind, _, gate = b.name.partition("_")
        out.append(dataclasses.replace(b, name=f"{kind}_{other[gate]}") if gate in other else b)
    return out


from typer.testing import CliRunner
from lstm_inspect.cli import app

runner = CliRunner()
results = []
for job in spec["jobs"]:
    if job.get("no_guard"):
        os.environ["LSTM_INSPECT_NO_GUARD"] = "1"
    layouts.cut = swapped_cut if job.get("swap") else original_cut
    r = runner.invoke(app, job["args"], env={"COLUMNS": "200"})
    exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    results.append({"name": job["name"], "exit": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                    "exception": repr(exc) if exc else None})
with open(sys.argv[2], "w") as fh:
    json.dump(results, fh)
'''

CORPUS_FILES = ("tflite-micro__trained_lstm.tflite", "tflite-micro__trained_lstm_int8.tflite")


def job(name: str, path, *extra: str, **flags) -> dict:
    return {"name": name, "args": ["verify", str(path), "--format", "json", *extra], "no_guard": True, **flags}


@pytest.fixture(scope="module")
def runs(tflite_zoo, runnable_models, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("verify_tflite")
    ok = [c for c in all_cases() if tflite_zoo[c]["status"] == "ok"]
    jobs = [{"name": "guarded-table", "args": ["verify", str(CORPUS / CORPUS_FILES[0])]}]
    jobs += [job(f"zoo:{c}", tflite_zoo[c]["_path"]) for c in ok]
    jobs += [job(f"corpus:{n}", CORPUS / n) for n in CORPUS_FILES]
    jobs += [job(f"runnable:{n}", path) for n, (path, _) in runnable_models.items()]
    jobs.append(job("tolerance", CORPUS / CORPUS_FILES[0], "--tolerance", "1e-12"))
    jobs.append(job("layer", tflite_zoo["keras3-stacked-float32"]["_path"], "--layer", "lstm_b*"))
    for name in ("corpus:" + CORPUS_FILES[0], "corpus:" + CORPUS_FILES[1], "zoo:keras3-gru-dynamic",
                 "zoo:tf_keras-unroll-int8", "runnable:fancy_lstm"):
        source = next(j for j in jobs if j["name"] == name)
        jobs.append(dict(source, name=f"swap:{name}", swap=True))
    (tmp / "driver.py").write_text(DRIVER)
    (tmp / "spec.json").write_text(json.dumps({"jobs": jobs}))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LSTM_INSPECT_NO_GUARD", None)
    with open(tmp / "log.txt", "w") as log:
        proc = subprocess.run([sys.executable, str(tmp / "driver.py"), str(tmp / "spec.json"), str(tmp / "out.json")],
                              cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    assert proc.returncode == 0, (tmp / "log.txt").read_text()[-4000:]
    return {r["name"]: r for r in json.loads((tmp / "out.json").read_text())}


def report(result: dict) -> dict:
    assert result["exception"] is None, result["exception"]
    return json.loads(result["stdout"])


def test_every_converted_file_verifies(runs):
    """Every direction of every converted file passes; the Flex model cannot run in this interpreter."""
    for name, result in runs.items():
        if not name.startswith("zoo:"):
            continue
        if name.endswith("-flex"):
            assert result["exit"] == 2 and "custom operators (FlexTensorListSetItem)" in result["stderr"], name
            continue
        rows = report(result)["directions"]
        assert result["exit"] == 0 and rows and all(r["status"] == "pass" for r in rows), (name, result["stderr"])
        variant = name.rsplit("-", 1)[1]
        for r in rows:
            if variant in ("float32", "float16", "offset"):
                assert r["max_abs_file_numpy"] < 1e-5 and r["tolerance"] == 1e-5, (name, r)
            else:  # quantized: within the steps the tolerance allows, and stated in steps
                assert r["steps_off"] is not None and r["steps_off"] < 24, (name, r)
            assert r["compared"], name


def test_forms_compare_what_they_can(runs):
    rows = {name: report(r)["directions"] for name, r in runs.items() if name.startswith("zoo:") and r["exit"] == 0}
    assert rows["zoo:tf_keras-lstm-float32"][0]["compared"] == "the operator's output sequence [1, 6, 40]"
    assert rows["zoo:keras3-lstm-float32"][0]["compared"] == "the loop's final h and c"
    assert rows["zoo:tf_keras-gru-float32"][0]["compared"] == "the loop's final h"
    assert rows["zoo:tf_keras-unroll-int8"][0]["compared"] == "h after each of the first 5 steps"
    assert [r["fused"] for r in rows["zoo:tf_keras-bilstm-float32"]] == [True, True]
    assert [r["fused"] for r in rows["zoo:keras3-bilstm-float32"]] == [False, False]


def test_corpus_and_hand_built_operators_verify(runs):
    for name, result in runs.items():
        if name.startswith(("corpus:", "runnable:")):
            rows = report(result)["directions"]
            assert result["exit"] == 0 and all(r["status"] == "pass" for r in rows), (name, result["stderr"])
    fancy = report(runs["runnable:fancy_lstm"])["directions"][0]
    assert fancy["max_abs_file_numpy"] < 1e-6  # peepholes, projection, clipping and layer norm in the reference
    int8 = report(runs["corpus:" + CORPUS_FILES[1]])["directions"][0]
    assert int8["tolerance_from"].startswith("24 steps of the output's scale 0.00782")


def test_a_mislabelled_split_fails(runs):
    for name, result in runs.items():
        if name.startswith("swap:"):
            assert result["exit"] == 1, (name, result["stderr"])
            assert "verify FAILED" in result["stderr"]
            rows = report(result)["directions"]
            assert all(r["steps_off"] is None or r["steps_off"] > 30 for r in rows if r["status"] == "fail")


def test_options(runs):
    assert runs["tolerance"]["exit"] == 1
    assert [r["path"] for r in report(runs["layer"])["directions"]] == ["lstm_b_1"]
    table = runs["guarded-table"]
    assert table["exit"] == 0 and "UNIDIRECTIONAL_SEQUENCE_LSTM (op 0)" in table["stdout"]
    assert "tf.lite.Interpreter (TensorFlow" in table["stdout"]


def test_no_tensorflow_here():
    assert "tensorflow" not in sys.modules
