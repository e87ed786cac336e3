"""Every command on ONNX files, through the CLI: summary, split-gates, explain, snapshot/check/diff, verify and
convert, with their outputs checked against independent truths (onnx.numpy_helper, torch's modules,
onnxruntime, the Keras file a conversion came from); hostile files end in exit 2 with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from lstm_inspect.cli import app

from ..conftest import SAMPLES
from .conftest import CORPUS_ONNX, FEATURES, HIDDEN
from .helpers import model, out, save
from .recurrent_models import expected_blocks, recurrent_model, save_model


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _corpus(word):
    return next(p for p in CORPUS_ONNX if word in p.name)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --- summary, split-gates, explain --------------------------------------------------------------

def test_summary_formats():
    path = _corpus("DTLN")
    data = json.loads(run("summary", "-f", "json", path).stdout)
    assert (data["framework"], data["format"], data["producer"]) == ("onnx", "onnx", "OnnxMLTools 1.7.0")
    assert data["keras_version"] is None and data["total_params"] == 363_457
    table = run("summary", path)
    assert table.exit_code == 0
    assert "onnx · written by OnnxMLTools 1.7.0" in table.stdout and "lstm_4 — LSTM (LSTM), units 128, input 257" \
        in table.stdout
    markdown = run("summary", "-f", "markdown", _corpus("peepholes"))
    assert markdown.exit_code == 0 and "| peephole |" in markdown.stdout
    assert "the values of W, R, B, P are not in the file" in markdown.stdout


def test_summary_states_the_gate_clip(tmp_path):
    m, _ = recurrent_model("GRU", clip=2.5)
    path = save_model(m, tmp_path / "clip.onnx")
    data = json.loads(run("summary", "-f", "json", path).stdout)
    assert data["recurrent"][0]["gate_clip"] == 2.5 and "cell_clip" not in data["recurrent"][0]
    assert "gate_clip 2.5" in run("summary", path).stdout


def test_split_gates_writes_the_blocks(tmp_path):
    m, values = recurrent_model("LSTM", dirs=2, roles="WRBP", direction="bidirectional")
    path = save_model(m, tmp_path / "bi.onnx")
    result = run("split-gates", path, "-o", tmp_path / "gates.npz")
    assert result.exit_code == 0, result.output
    assert "wrote 38 blocks of 2 recurrent direction(s)" in result.stderr
    with np.load(tmp_path / "gates.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        assert meta["source"]["format"] == "onnx"
        for k, side in enumerate(("forward", "backward")):
            for name, truth in expected_blocks("LSTM", values, 3, k).items():
                np.testing.assert_array_equal(z[f"rnn/{side}/{name}"], truth)


def test_split_gates_of_folded_and_external_weights(tmp_path, torch_exports):
    for word, path in (("silero", _corpus("silero")), ("dynamo", torch_exports["lstm-dynamo"][0])):
        result = run("split-gates", path, "-o", tmp_path / f"{word}.npz")
        assert result.exit_code == 0, result.output
    path, module = torch_exports["lstm-dynamo"]
    params = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    with np.load(tmp_path / "dynamo.npz", allow_pickle=False) as z:
        first = json.loads(str(z["__meta__"]))["directions"]
        path0 = next(iter(first))
        np.testing.assert_array_equal(z[f"{path0}/W_f"], params["weight_ih_l0"][HIDDEN:2 * HIDDEN].T)
        np.testing.assert_array_equal(z[f"{path0}/bU_o"], params["bias_hh_l0"][3 * HIDDEN:])


def test_split_gates_refuses_weights_that_are_not_in_the_file(tmp_path):
    result = run("split-gates", _corpus("peepholes"), "-o", tmp_path / "x.npz")
    assert_one_line_error(result, "LSTM_0 W: the values are not in the file (graph input 'W'")
    assert not (tmp_path / "x.npz").exists()


def test_explain_shows_the_operator_equations(tmp_path):
    text = run("explain", _corpus("peepholes")).stdout
    assert "i_t = σ(x_t W_i + h_{t-1} U_i + p_i ⊙ c_{t-1} + b_i + bU_i)" in text
    assert "o_t = σ(x_t W_o + h_{t-1} U_o + p_o ⊙ c_t + b_o + bU_o)" in text
    assert "4 × (3·(4+3) + 2·3) + 3·3 (peepholes) = 117" in text
    text = run("explain", _corpus("gru")).stdout
    assert "h̃_t = tanh(x_t W_h + b_h + (r_t ⊙ h_{t-1}) U_h + bU_h)" in text
    m, _ = recurrent_model("LSTM", clip=3.0, input_forget=1, direction="reverse")
    text = run("explain", "-f", "markdown", save_model(m, tmp_path / "c.onnx")).stdout
    assert "σ(clip(x_t W_i + h_{t-1} U_i + b_i + bU_i, ±3))" in text and "f_t = 1 − i_t" in text
    assert "reads the sequence from the last step to the first" in text


# --- snapshot, check, diff ------------------------------------------------------------------------

def test_snapshot_and_check(tmp_path):
    path = tmp_path / "m.onnx"
    shutil.copy(_corpus("DTLN"), path)
    lock = tmp_path / "m.shapes.json"
    assert run("snapshot", path, "-o", lock).exit_code == 0
    data = json.loads(lock.read_text())
    assert data["source"]["framework"] == "onnx" and len(data["recurrent"]) == 2
    assert run("check", path, "--against", lock, "--weights", "--finite").exit_code == 0
    assert run("check", path, "-e", "lstm_4.units=128", "-e", "recurrent.count=2").exit_code == 0
    m = onnx.load(str(path))
    w = next(t for t in m.graph.initializer if t.name == "lstm_5_R")
    values = numpy_helper.to_array(w).copy()
    values[0, 300, 7] = np.nan  # gate f of lstm_5 (rows 256:384 in ONNX order i, o, f, c)
    w.CopyFrom(numpy_helper.from_array(values, "lstm_5_R"))
    onnx.save(m, str(path))
    result = run("check", path, "--against", lock, "--weights", "--finite")
    assert result.exit_code == 1
    assert "lstm_5_R" in result.stdout and "gate f (forget gate), block U_f" in result.stdout


@pytest.mark.parametrize("sample, layer", [("lstm_classifier.h5", "lstm"), ("gru_forecaster.keras", "gru")])
def test_diff_of_a_keras_model_and_its_onnx_conversion(tmp_path, sample, layer):
    folder = tmp_path / "onnx"
    assert run("convert", SAMPLES / sample, "--to", "onnx", "-o", folder).exit_code == 0
    converted = folder / f"{layer}.onnx"
    result = run("diff", "-f", "json", SAMPLES / sample, converted)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["identical_structure"]
    assert all(f["severity"] == "warning" for f in report["findings"])  # the Dense layer, the totals
    (change,) = report["changes"]
    assert change["path"] == layer and all(b["relative"] == 0.0 for b in change["blocks"].values())
    assert set(change["gate_change"].values()) == {0.0}
    assert "identical structure" in run("diff", SAMPLES / sample, converted).stdout


def test_diff_of_two_onnx_files(tmp_path):
    a = _corpus("DTLN")
    result = run("diff", "-f", "json", a, a)
    assert result.exit_code == 0 and json.loads(result.stdout)["findings"] == []
    b = tmp_path / "b.onnx"
    m = onnx.load(str(a))
    w = next(t for t in m.graph.initializer if t.name == "lstm_4_W")
    values = numpy_helper.to_array(w) * 1.5
    w.CopyFrom(numpy_helper.from_array(values, "lstm_4_W"))
    onnx.save(m, str(b))
    change = json.loads(run("diff", "-f", "json", a, b).stdout)["changes"][0]
    assert change["path"] == "lstm_4"
    assert {name: round(v["relative"], 6) for name, v in change["blocks"].items() if name.startswith("W")} == \
        {f"W_{g}": 0.5 for g in "ifco"}
    assert all(v["relative"] == 0.0 for name, v in change["blocks"].items() if not name.startswith("W"))
    no_values = json.loads(run("diff", "-f", "json", _corpus("gru"), _corpus("gru")).stdout)["changes"][0]
    assert all("not in the file" in v["note"] for v in no_values["blocks"].values())


# --- verify -------------------------------------------------------------------------------------

def test_verify_exit_codes_and_formats():
    result = run("verify", _corpus("DTLN"))
    assert result.exit_code == 0, result.output
    assert "max |file − numpy|" in result.stdout and "runtime: onnxruntime" in result.stdout
    assert "verify: 2 recurrent direction(s) within 0.0001" in result.stderr
    report = json.loads(run("verify", "-f", "json", "--steps", "3", "--batch", "2", "-l", "lstm_5",
                            _corpus("DTLN")).stdout)
    assert report["framework"] == "onnx" and [r["path"] for r in report["directions"]] == ["lstm_5"]
    assert report["directions"][0]["input_shape"] == [2, 3, 128] and report["tolerance"] == 1e-4
    result = run("verify", _corpus("gru"))
    assert result.exit_code == 2 and "verify could not check GRU_0: W: the values are not in the file" in result.stderr


def test_verify_fails_beyond_the_tolerance():
    result = run("verify", "--tolerance", "1e-12", _corpus("silero"))
    assert result.exit_code == 1 and "verify FAILED for" in result.stderr


def test_verify_without_onnxruntime(monkeypatch):
    import importlib.util

    from lstm_inspect.commands import verify_onnx
    real = importlib.util.find_spec
    monkeypatch.setattr(verify_onnx.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert_one_line_error(run("verify", _corpus("DTLN")), "needs onnx and onnxruntime")


# --- convert ------------------------------------------------------------------------------------

def _torch_modules(out_path: Path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out_path), "np") as fh:
        meta = json.loads(fh.metadata()["lstm_inspect"])["modules"]
    state = load_file(str(out_path))
    modules = []
    for prefix, entry in meta.items():
        nn = getattr(torch.nn, entry["nn"].rsplit(".", 1)[1])(**entry["kwargs"])
        nn.load_state_dict({k.removeprefix(prefix + "."): v for k, v in state.items() if k.startswith(prefix + ".")})
        modules.append(nn)
    return modules


def test_convert_to_pytorch_reproduces_the_exported_module(tmp_path, torch_exports):
    import torch

    x = torch.randn(3, 7, FEATURES)
    for kind in ("lstm", "gru", "rnn"):
        path, module = torch_exports[f"{kind}-ts"]
        target = tmp_path / f"{kind}.safetensors"
        result = run("convert", path, "--to", "pytorch", "-o", target)
        assert result.exit_code == 0, result.output
        y = x
        with torch.no_grad():
            for converted in _torch_modules(target):  # one module per node: the 2-layer LSTM is two
                y = converted(y)[0]
            expected = module(x.transpose(0, 1))[0].transpose(0, 1)
        np.testing.assert_allclose(y.numpy(), expected.numpy(), atol=1e-6)


def test_convert_to_onnx_from_onnx(tmp_path, torch_exports):
    import onnxruntime as ort
    import torch

    path, module = torch_exports["gru-ts"]
    result = run("convert", path, "--to", "onnx", "-o", tmp_path / "again")
    assert result.exit_code == 0, result.output
    (written,) = sorted((tmp_path / "again").iterdir())
    x = np.random.default_rng(0).standard_normal((2, 7, FEATURES)).astype(np.float32)
    y = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"]).run(["Y"], {"X": x})[0]
    with torch.no_grad():
        expected = module(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert run("diff", path, written).exit_code == 0  # lstm-inspect reads its own output


def test_convert_refuses_what_torch_and_the_writer_cannot_express(tmp_path):
    m, _ = recurrent_model("LSTM", roles="WRBP")
    path = save_model(m, tmp_path / "peep.onnx")
    for target in ("pytorch", "onnx"):
        assert_one_line_error(run("convert", path, "--to", target, "-o", tmp_path / f"out-{target}"),
                              "rnn: ONNX LSTM node: it has peepholes (P); not converted")
    m, _ = recurrent_model("GRU", clip=1.0, activations=["Sigmoid", "LeakyRelu"])
    assert_one_line_error(run("convert", save_model(m, tmp_path / "g.onnx"), "--to", "onnx", "-o", tmp_path / "g"),
                          "it clips its gates (clip=1)", "activations Sigmoid, LeakyRelu have no Keras equivalent")
    assert_one_line_error(run("convert", _corpus("gru"), "--to", "pytorch", "-o", tmp_path / "x.safetensors"),
                          "the values are not in the file")


# --- hostile files ------------------------------------------------------------------------------

def _cyclic(path: Path) -> Path:
    r = numpy_helper.from_array(np.ones((1, 4, 1), np.float32), "R")
    nodes = [helper.make_node("Identity", ["b"], ["a"]), helper.make_node("Identity", ["a"], ["W"]),
             helper.make_node("Identity", ["W"], ["b"]),
             helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=1)]
    return save(model(nodes, [r], [out("x", shape=[1, 1, 2])], [out("y")]), path)


def _claims_2_gib(path: Path) -> Path:
    tensor = onnx.TensorProto(name="W", data_type=onnx.TensorProto.FLOAT, dims=[1, 4, 2**27], raw_data=b"0" * 12)
    r = numpy_helper.from_array(np.ones((1, 4, 1), np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=1)
    return save(model([node], [tensor, r], [out("x", shape=[1, 1, 2])], [out("y")]), path)


def _dot_dot(path: Path) -> Path:
    secret = path.parent.parent / "secret.bin"
    secret.write_bytes(np.ones(8, np.float32).tobytes())
    m, _ = recurrent_model("LSTM", hidden=1, inputs=1, roles="WR")
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=key, value=value)
    return save(m, path)


HOSTILE = {"cyclic": (_cyclic, "the graph has a cycle"),
           "2 GiB claimed": (_claims_2_gib, "declares 536870912 float32 values but its raw_data holds 12 bytes"),
           "dot-dot external data": (_dot_dot, "external data file '../secret.bin' contains a '..' component")}
COMMANDS = (["summary"], ["split-gates", "-o", "{out}.npz"], ["explain"], ["snapshot", "-o", "{out}.json"],
            ["check", "--max-params", "10"], ["verify"], ["convert", "--to", "onnx", "-o", "{out}"])


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_hostile_files_end_in_one_line(tmp_path, case, command):
    folder = tmp_path / "models"
    folder.mkdir()
    build, words = HOSTILE[case]
    path = build(folder / "model.onnx")
    args = [command[0], path] + [a.format(out=tmp_path / "out") for a in command[1:]]
    assert_one_line_error(run(*args), str(path), words)
    assert not list(tmp_path.glob("out*"))


def test_hostile_files_in_diff(tmp_path):
    path = _cyclic(tmp_path / "c.onnx")
    assert_one_line_error(run("diff", path, _corpus("DTLN")), "cycle")
