"""`verify` on TF files: TensorFlow's own cells (and Keras layers) restored from the checkpoint by
TensorFlow's reader, against the NumPy cell from the split blocks.

The test process never imports TensorFlow: one driver subprocess runs every `verify` through the CLI
in-process (the first call guarded; later ones with LSTM_INSPECT_NO_GUARD=1, since forking after
TensorFlow has started its threads is unsafe) and hands back the JSON reports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "corpus/char-rnn-tensorflow-laurajul__model.ckpt-248399"

DRIVER = r'''
import json, os, sys
from typer.testing import CliRunner
from lstm_inspect.cli import app

jobs = json.load(open(sys.argv[1]))
results = {}
runner = CliRunner()
for k, (name, args) in enumerate(jobs):
    if k:
        os.environ["LSTM_INSPECT_NO_GUARD"] = "1"
    r = runner.invoke(app, ["verify", "--format", "json"] + args)
    results[name] = {"exit": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                     "exception": repr(r.exception) if r.exception and not isinstance(r.exception, SystemExit) else None}
json.dump(results, open(sys.argv[2], "w"))
'''


@pytest.fixture(scope="module")
def reports(tfzoo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tfverify")
    path = lambda case: str(tfzoo.path(tfzoo.case(case).get("dir") or tfzoo.case(case).get("prefix")  # noqa: E731
                                       or tfzoo.case(case)["file"]))
    jobs = [
        ("tf1_cells", [path("tf1_cells")]),
        ("basic_right_bias", [path("tf1_cells"), "-l", "basic/*", "--forget-bias", "0.5"]),
        ("static_right_bias", [path("tf1_cells"), "-l", "static/*", "--forget-bias", "0.25"]),
        ("tf1_handmade", [path("tf1_handmade")]),
        ("tf1_v0", [path("tf1_v0")]),
        ("tf1_v1", [path("tf1_v1")]),
        ("tf1_more", [path("tf1_more")]),
        ("tf1_more_wrong_bias", [path("tf1_more"), "-l", "enc/*"]),
        ("tf_keras_savedmodel", [path("tf_keras_savedmodel")]),
        ("keras3_fit", [path("keras3_fit")]),
    ]
    if CORPUS in tfzoo.cases:
        jobs.append(("corpus", [tfzoo.case(CORPUS)["prefix"]]))
    spec, out = tmp / "jobs.json", tmp / "out.json"
    spec.write_text(json.dumps(jobs))
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LSTM_INSPECT_NO_GUARD", None)
    proc = subprocess.run([sys.executable, str(script), str(spec), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for name, r in results.items():
        assert r["exception"] is None, (name, r["exception"], r["stderr"][-2000:])
        r["report"] = json.loads(r["stdout"]) if r["stdout"].strip().startswith("{") else None
    return results


def rows(result) -> dict:
    return {row["path"]: row for row in result["report"]["directions"]}


def test_every_tf1_cell_passes_but_the_one_with_an_unstated_forget_bias(reports):
    """tf1_cells: BasicLSTMCell(forget_bias=0.5) under `basic`, static_rnn BasicLSTMCell(0.25): the .meta
    graph says so, the default assumption (1.0) does not, and the gap is far above the tolerance."""
    result = reports["tf1_cells"]
    assert result["exit"] == 1
    by_path = rows(result)
    assert len(by_path) == 15
    wrong = {"basic/rnn/basic_lstm_cell": 0.5, "static/rnn/basic_lstm_cell": 0.25}
    for path, row in by_path.items():
        if path in wrong:
            assert row["status"] == "fail" and row["max_abs_file_numpy"] >= 0.01, path
            assert f"give --forget-bias {wrong[path]:g}" in row["reason"]
        else:
            assert row["status"] == "pass", (path, row["reason"])
            assert row["max_abs_file_numpy"] <= 1e-5 and row["max_abs_keras_numpy"] <= 1e-5, path
            assert row["keras"].startswith("tensorflow ")
    assert by_path["proj/rnn/lstm_cell"]["built_as"] == "LSTMCell(5, use_peepholes=True, num_proj=4, forget_bias=1)"


@pytest.mark.parametrize("name,path,bias", [("basic_right_bias", "basic/rnn/basic_lstm_cell", 0.5),
                                            ("static_right_bias", "static/rnn/basic_lstm_cell", 0.25)])
def test_the_right_forget_bias_passes(reports, name, path, bias):
    result = reports[name]
    assert result["exit"] == 0
    row = rows(result)[path]
    assert row["status"] == "pass" and row["max_abs_file_numpy"] <= 1e-5
    assert f"forget_bias={bias:g}" in row["built_as"]


@pytest.mark.parametrize("name", ["tf1_handmade", "tf1_v0", "tf1_v1", "tf_keras_savedmodel", "keras3_fit", "corpus"])
def test_other_files_pass(reports, name):
    if name not in reports:
        pytest.skip("the corpus checkpoint is not present")
    result = reports[name]
    assert result["exit"] == 0, result["stderr"][-2000:]
    for row in result["report"]["directions"]:
        assert row["status"] == "pass" and row["max_abs_file_numpy"] <= 1e-5, row
    if name == "tf1_handmade":
        built = {p: r["built_as"] for p, r in rows(result).items()}
        assert built["cudnn/cudnn_compatible_lstm_cell"] == "raw op LSTMBlockCell(forget_bias=0, use_peephole=False)"
        assert built["gswap/rnn/gru_cell"] == "raw op GRUBlockCell"


def test_without_a_meta_graph_the_assumption_cannot_be_checked(reports):
    """tf1_more was saved without its graph: the cell used forget_bias 0.7, TF's side takes the same
    assumption as the NumPy side (1.0) and passes; the note says the check cannot tell."""
    row = rows(reports["tf1_more_wrong_bias"])["enc/rnn/lstm_cell"]
    assert row["status"] == "pass"
    assert any("forget_bias not found in a .meta graph" in n for n in row["notes"])
