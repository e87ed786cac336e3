"""The commands on `.tflite` files through the CLI (no TensorFlow here): summary, split-gates, explain,
snapshot/check, diff against the Keras model the file was converted from, convert to PyTorch and ONNX."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_inspect import api, reference
from lstm_inspect.cells import directions
from lstm_inspect.cli import app

from .build_tflite import MODELS, VARIANTS
from .conftest import CORPUS, converted
from .test_model import assert_block, keras_layer_of, truth_blocks
from .test_recurrent import keras_weights

FLOAT_FILE = CORPUS / "tflite-micro__trained_lstm.tflite"
INT8_FILE = CORPUS / "tflite-micro__trained_lstm_int8.tflite"


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# ----------------------------------------------------------------------------------------------
# summary


def test_summary_table_states_fused_or_not(tflite_zoo):
    fused = run("summary", FLOAT_FILE)
    assert fused.exit_code == 0, fused.stderr
    text = fused.stdout
    assert "Recurrent layer lstm: fused UNIDIRECTIONAL_SEQUENCE_LSTM (operator 0)" in text
    assert "Keras parameters: 9,530 (recurrent 3,920, other layers 5,610)" in text
    assert "Stored constants: 9,532 values in 15 buffers" in text  # 12 of the LSTM, 2 of Dense, 1 shape
    assert "cell_clip 10" in text
    loop = run("summary", converted(tflite_zoo, "keras3-bilstm-dynamic")["_path"]).stdout
    assert re.search(r"Recurrent layer backward_lstm_1: NOT fused: WHILE loop \(operator \d+, backward side of bidi_1",
                     loop)
    assert re.search(r"stored W: int8, scale i [0-9.]+–[0-9.]+ \(40 channels\)", loop)
    unrolled = run("summary", converted(tflite_zoo, "tf_keras-unroll-float32")["_path"]).stdout
    assert "Recurrent layer lstm: NOT fused: unrolled over 6 steps" in unrolled


def test_summary_json_and_markdown():
    out = run("summary", "--format", "json", FLOAT_FILE, INT8_FILE)
    data = json.loads(out.stdout)
    assert [d["framework"] for d in data] == ["tflite", "tflite"]
    assert [d["recurrent"][0]["path"] for d in data] == ["lstm", "op0"]
    facts = data[1]["tflite"]
    assert facts["operators"] == {"total": 4, "by_kind": {"FULLY_CONNECTED": 1, "RESHAPE": 1, "SOFTMAX": 1,
                                                          "UNIDIRECTIONAL_SEQUENCE_LSTM": 1}}
    assert facts["recurrent_layers"][0]["fused"] is True
    md = run("summary", "--format", "markdown", INT8_FILE).stdout
    assert "stored U: int8, scale i 0.009285, f 0.005783, c 0.004945, o 0.008227, zero point 0" in md


# ----------------------------------------------------------------------------------------------
# split-gates


@pytest.mark.parametrize("variant", VARIANTS)
def test_split_gates_writes_the_blocks(tflite_zoo, tmp_path, variant):
    """Float32 blocks bit for bit, float16 as stored, quantized ones dequantized within half a step; the
    quantization of each block in __meta__."""
    record = converted(tflite_zoo, f"tf_keras-stacked-{variant}")
    out = tmp_path / "gates.npz"
    result = run("split-gates", record["_path"], "-o", out)
    assert result.exit_code == 0, result.stderr
    with api.open_model(record["_path"]) as m:
        dirs = directions(m)
        with np.load(out, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
            for k, d in enumerate(dirs):
                layer, arrays = keras_weights(record, keras_layer_of(record, k))
                truth = truth_blocks(d.kind.value, layer, arrays)
                entry = meta["directions"][d.path]
                assert entry["cell_clip"] == 10.0
                for block in d.blocks:
                    array = npz[entry["blocks"][block.name]["key"]]
                    assert array.dtype == np.dtype(block.dtype) and np.array_equal(array, block.read())
                    assert_block(block, truth[block.name], variant, block.name)
                    if variant in ("dynamic", "int8"):
                        assert entry["quantization"][block.name]["stored_dtype"] == block.source.dtype
                if variant in ("float32", "float16"):
                    assert ("quantization" in entry) == (variant == "float16")


# ----------------------------------------------------------------------------------------------
# explain


def test_explain_fused_lstm_with_cell_clip():
    text = run("explain", FLOAT_FILE).stdout
    assert "c_t = clip(f_t ⊙ c_{t-1} + i_t ⊙ c̃_t, −10, 10)" in text
    assert "parameters: 4 × (20·(28+20) + 20) = 3,920" in text
    assert "fused: TFLite runs it as one UNIDIRECTIONAL_SEQUENCE_LSTM operator" in text


def test_explain_extras(runnable_models):
    fancy = run("explain", runnable_models["fancy_lstm"][0]).stdout
    assert "i_t = σ(LN(x_t W_i + h_{t-1} U_i + p_i ⊙ c_{t-1}) ⊙ ln_i + b_i)" in fancy
    assert "h_t ← clip(h_t P + bP, −0.5, 0.5)" in fancy
    assert "4 × (4·(3+3) + 4) + 3·4 (peepholes) + 4·4 (layer-norm coefficients) + 4·3 (projection) + 3 " \
           "(projection bias) = 155" in fancy
    cifg = run("explain", runnable_models["cifg_lstm"][0]).stdout
    assert "i_t = 1 − f_t" in cifg


def test_explain_loop(tflite_zoo):
    text = run("explain", converted(tflite_zoo, "keras3-gru_v1-float32")["_path"]).stdout
    assert "h_{t-1} [U_z | U_r] and (r_t ⊙ h_{t-1}) U_h" in text
    assert "not fused: the converter made a WHILE loop" in text


# ----------------------------------------------------------------------------------------------
# snapshot, check, diff


def test_snapshot_and_check(tmp_path):
    lock = tmp_path / "lock.json"
    assert run("snapshot", INT8_FILE, "-o", lock).exit_code == 0
    data = json.loads(lock.read_text())
    assert data["source"]["framework"] == "tflite" and data["recurrent"][0]["path"] == "op0"
    assert run("check", INT8_FILE, "--against", lock, "--weights").exit_code == 0
    assert run("check", INT8_FILE, "-e", "op0.units=20", "-e", "recurrent.count=1").exit_code == 0
    assert run("check", INT8_FILE, "-e", "op0.units=21").exit_code == 1
    assert run("check", FLOAT_FILE, "--against", lock).exit_code == 1  # another file: other names, dtypes


def keras_cases() -> list[str]:
    return [f"{fw}-{m}-{v}" for fw in ("keras3", "tf_keras") for m in MODELS for v in VARIANTS]


@pytest.mark.parametrize("case", keras_cases())
def test_diff_keras_against_its_tflite(tflite_zoo, case):
    """Same structure (exit 0); per gate, the change is the conversion error: 0 for float32, float16 rounding
    (relative ≤ 2^-11) for float16, a fraction of the quantization step for int8 weights."""
    record = converted(tflite_zoo, case)
    keras_file = record["_dir"].parent / record["keras_file"]
    result = run("diff", keras_file, record["_path"], "--format", "json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert not [f for f in report["findings"] if f["severity"] == "error"]
    n_dirs = 2 if record["model"] in ("bilstm", "stacked") else 1
    assert len(report["changes"]) == n_dirs
    variant = record["variant"]
    for change in report["changes"]:
        for gate, value in change["gate_change"].items():
            if variant == "float32":
                assert value == 0.0, (change["path"], gate)
            elif variant == "float16":
                assert 0 < value <= 2 ** -11, (change["path"], gate)
            else:
                assert value is not None and value < 0.02, (change["path"], gate, value)


# ----------------------------------------------------------------------------------------------
# convert


def small_input(units_in: int, steps: int = 5, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((batch, steps, units_in)) * 0.5


def test_convert_to_pytorch_computes_the_cell(tflite_zoo, tmp_path):
    """torch.nn.LSTM (bidirectional) loaded from the converted tensors gives the NumPy cell's outputs."""
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    record = converted(tflite_zoo, "keras3-bilstm-float32")
    out = tmp_path / "m.safetensors"
    assert run("convert", record["_path"], "--to", "pytorch", "-o", out).exit_code == 0
    tensors = load_file(str(out))
    module = torch.nn.LSTM(48, 40, batch_first=True, bidirectional=True).double()
    module.load_state_dict({k.split(".", 1)[1]: torch.from_numpy(v.astype(np.float64)) for k, v in tensors.items()})
    x = small_input(48)
    got = module(torch.from_numpy(x))[0].detach().numpy()
    with api.open_model(record["_path"]) as m:
        fw, bw = directions(m)
        spec = {"kind": "LSTM", "units": 40, "activation": "tanh", "recurrent_activation": "sigmoid"}
        forward, _ = reference.run(spec, {b.name: b.read() for b in fw.blocks}, x, "keras3")
        backward, _ = reference.run(dict(spec, go_backwards=True), {b.name: b.read() for b in bw.blocks}, x, "keras3")
    np.testing.assert_allclose(got[..., :40], forward, atol=1e-6)
    np.testing.assert_allclose(got[..., 40:], backward[:, ::-1], atol=1e-6)


def test_convert_to_onnx_computes_the_cell(tmp_path):
    """onnxruntime on the converted corpus LSTM (int8 weights, written dequantized) gives the NumPy cell."""
    ort = pytest.importorskip("onnxruntime")
    result = run("convert", INT8_FILE, "--to", "onnx", "-o", tmp_path / "onnx")
    assert result.exit_code == 0, result.stderr
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(tmp_path / "onnx" / "op0.onnx"))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == "lstm_inspect"))
    assert any("cell_clip" in note for note in meta["notes"])  # the clip ONNX cannot apply is stated
    session = ort.InferenceSession(str(tmp_path / "onnx" / "op0.onnx"))
    x = small_input(28)
    (y,) = session.run(None, {"X": x.astype(np.float32)})
    with api.open_model(INT8_FILE) as m:
        (d,) = directions(m)
        expected, _ = reference.run({"kind": "LSTM", "units": 20, "activation": "tanh",
                                     "recurrent_activation": "sigmoid"}, {b.name: b.read() for b in d.blocks}, x,
                                    "keras3")
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("name, reason", [("fancy_lstm", "peepholes"), ("cifg_lstm", "peepholes")])
def test_convert_refuses_what_no_target_computes(runnable_models, tmp_path, name, reason):
    result = run("convert", runnable_models[name][0], "--to", "pytorch", "-o", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and reason in result.stderr
    assert not (tmp_path / "x.safetensors").exists()
