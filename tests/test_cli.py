"""The command line: golden table, error paths (one line, exit 2, no traceback), and the reading path
never importing TensorFlow, Keras or torch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lstm_inspect.cli import app

from .conftest import CORPUS, ROOT, SAMPLES

GOLDEN = Path(__file__).parent / "golden"
SAMPLE_H5 = SAMPLES / "lstm_classifier.h5"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def check_golden(name: str, text: str) -> None:
    """Compare with tests/golden/<name>; UPDATE_GOLDEN=1 rewrites it (review the diff!)."""
    path = GOLDEN / name
    text = text.replace(str(SAMPLES) + os.sep, "sample_models/")
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def test_golden_table():
    result = run("summary", str(SAMPLE_H5))
    assert result.exit_code == 0, result.output
    check_golden("summary_lstm_classifier.txt", result.stdout)


def test_golden_markdown():
    result = run("summary", "--format", "markdown", str(SAMPLES / "gru_forecaster.keras"))
    assert result.exit_code == 0, result.output
    check_golden("summary_gru_forecaster.md", result.stdout)


def test_sample_models_numbers_match_their_readme():
    """sample_models/README.md records Keras's count_params() printed when the files were made."""
    readme = (SAMPLES / "README.md").read_text()
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix not in (".h5", ".keras"):
            continue
        data = json.loads(run("summary", "-f", "json", str(path)).stdout)
        assert f"{data['total_params']}" in readme or f"{data['total_params']:,}" in readme, path.name


def test_several_files_give_a_json_list():
    result = run("summary", "-f", "json", str(SAMPLE_H5), str(SAMPLES / "lstm_classifier.keras"))
    data = json.loads(result.stdout)
    assert isinstance(data, list) and len(data) == 2
    assert data[0]["total_params"] == data[1]["total_params"]
    assert data[0]["recurrent"][0]["blocks"] == data[1]["recurrent"][0]["blocks"]


def test_not_a_model(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a model\n")
    assert_one_line_error(run("summary", str(path)), str(path), "not a model")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.h5"
    path.write_bytes(b"")
    assert_one_line_error(run("summary", str(path)), str(path), "empty")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    assert_one_line_error(run("summary", str(path)), str(path))


def test_directory_that_is_not_a_model(tmp_path):
    assert_one_line_error(run("summary", str(tmp_path)), str(tmp_path))


def test_hdf5_that_is_not_keras(tmp_path):
    import h5py
    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1, 2, 3]
    assert_one_line_error(run("summary", str(path)), str(path), "not a Keras")


def test_missing_weight_named_by_the_config(tmp_path):
    import h5py
    import shutil
    path = tmp_path / "broken.h5"
    shutil.copy(SAMPLE_H5, path)
    with h5py.File(path, "r+") as f:
        group = f["model_weights/lstm"]
        name = group.attrs["weight_names"][1]
        del group[name]
    assert_one_line_error(run("summary", str(path)), str(path), "missing")


def test_pickled_npz_weights_are_refused(tmp_path):
    import zipfile
    path = tmp_path / "pickled.keras"
    with zipfile.ZipFile(SAMPLES / "lstm_classifier.keras") as src, zipfile.ZipFile(path, "w") as dst:
        dst.writestr("metadata.json", src.read("metadata.json"))
        dst.writestr("config.json", src.read("config.json"))
        dst.writestr("model.weights.npz", b"PK\x05\x06" + b"\0" * 18)
    assert_one_line_error(run("summary", str(path)), "pickled")


def test_debug_shows_the_traceback(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model")
    result = run("--debug", "summary", str(path))
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_one_bad_file_among_good_ones(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"junk")
    result = run("summary", "-f", "json", str(SAMPLE_H5), str(bad))
    assert result.exit_code == 2
    assert json.loads(result.stdout)[0]["total_params"] > 0
    assert str(bad) in result.stderr


def test_names_from_files_are_escaped(tmp_path):
    """A layer name holding terminal escapes or rich markup is printed inert."""
    import h5py
    import numpy as np
    path = tmp_path / "evil.h5"
    name = "lstm\x1b[31m[bold]red[/bold]\nnext"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode()])
        g = f.create_group("g")
        g.attrs["weight_names"] = np.array([])
    with h5py.File(path, "r+") as f:
        f.move("g", name)
    result = run("summary", str(path))
    assert "\x1b[31m" not in result.stdout
    assert "[bold]red[/bold]" in result.stdout.replace("\n", "") or "\\x1b" in result.stdout


ONNX_SAMPLE = CORPUS / "silero-vad__silero_vad_16k_op15.onnx"  # LSTMs in If branches, weights folded
TFLITE_SAMPLE = CORPUS / "tflite-micro__trained_lstm_int8.tflite"


@pytest.mark.parametrize("command", [
    ["summary", "{sample}"],
    ["summary", "--format", "json", "{sample}"],
    ["split-gates", "{sample}", "-o", "{tmp}/out.npz"],
    ["explain", "{sample}"],
    ["summary", "--format", "json", "{onnx}"],
    ["split-gates", "{onnx}", "-o", "{tmp}/out.npz"],
    ["explain", "{onnx}"],
    ["snapshot", "{onnx}", "-o", "-"],
    ["diff", "{onnx}", "{onnx}"],
    ["summary", "{ckpt}"],  # a TF1 checkpoint, by its prefix (more TF files in tests/tf/test_tf_commands.py)
    ["split-gates", "{ckpt}", "-o", "{tmp}/out.npz"],
    ["stats", "{sample}"],
    ["stats", "--format", "json", "{sample}"],
    ["diff", "--stats", "{sample}", "{sample}"],
    ["summary", "{tflite}"],
    ["summary", "--format", "json", "{tflite}"],
    ["split-gates", "{tflite}", "-o", "{tmp}/out.npz"],
    ["explain", "{tflite}"],
    ["snapshot", "{tflite}", "-o", "{tmp}/lock.json"],
])
def test_reading_path_never_imports_frameworks(tmp_path, command):
    """Run the real console command in a fresh interpreter and list what it imported: no ML framework,
    and for a non-HDF5 file not even h5py (each format's library only for that format)."""
    ckpt = ROOT.parent / "shared" / "corpus" / "char-rnn-tensorflow-laurajul__model.ckpt-248399"
    if "{ckpt}" in command and not Path(f"{ckpt}.index").exists():
        pytest.skip("the corpus TF checkpoint is not present")
    args = [a.format(sample=SAMPLE_H5, tmp=tmp_path, onnx=ONNX_SAMPLE, ckpt=ckpt, tflite=TFLITE_SAMPLE)
            for a in command]
    banned = ("tensorflow", "keras", "tf_keras", "torch", "jax", "onnx", "onnxruntime", "flatbuffers", "safetensors",
              "matplotlib") + (() if "{sample}" in command else ("h5py",))
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['lstm-inspect'] + {args!r}\n"
        "try:\n"
        "    runpy.run_module('lstm_inspect', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {banned!r})\n"
        "print('IMPORTED:' + ','.join(bad), file=sys.stderr)\n"
    )
    # Read in-process: a guarded child's imports would not show in this interpreter's sys.modules.
    env = dict(os.environ, LSTM_INSPECT_NO_GUARD="1")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED:\n" in proc.stderr or proc.stderr.rstrip().endswith("IMPORTED:"), proc.stderr


def test_console_script_and_module_entry_points():
    for argv in ([sys.executable, "-m", "lstm_inspect", "--version"], ["lstm-inspect", "--version"]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("lstm-inspect ")
