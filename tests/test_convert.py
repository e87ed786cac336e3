"""`convert --to pytorch|onnx`: the written weights reproduce the Keras layer.

Keras outputs come from one subprocess (the test process never imports TensorFlow) that loads the
zoo's own files, calls each layer on a seeded input and saves x and y as .npy. torch and
onnxruntime run in-process. Corpus files are compared with the NumPy reference instead (which
`verify` proves equal to Keras), so they need no Keras at all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_inspect import reference as ref
from lstm_inspect.cli import app
from lstm_inspect.commands.verify import collect

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
TOL = 1e-5

# name: (framework, zoo model, dialect, layer path, targets)
CASES = {
    "lstm": ("keras3", "lstm_seq", "keras-zip", "lstm", "pytorch onnx"),
    "gru": ("keras3", "gru_reset_after", "keras-zip", "gru_ra_true", "pytorch onnx"),
    "bidi_lstm": ("keras3", "bidi_lstm", "keras-zip", "bidi", "pytorch onnx"),
    "bidi_lstm_sum_last": ("keras3", "bidi_lstm", "keras-zip", "bidirectional", "pytorch onnx"),
    "bidi_gru": ("keras3", "bidi_gru", "keras-zip", "bidirectional", "pytorch onnx"),
    "simple_rnn_backwards": ("keras3", "simple_rnn", "keras-zip", "simple_rnn", "pytorch onnx"),
    "lstm_no_bias": ("keras3", "no_bias", "keras-zip", "lstm_nobias", "pytorch onnx"),
    "gru_no_bias": ("keras3", "no_bias", "keras-zip", "gru_nobias", "pytorch onnx"),
    "nested_lstm": ("keras3", "nested", "keras-zip", "encoder/enc_lstm", "pytorch onnx"),
    "tf_keras_bidi_lstm": ("tf_keras", "bidi_lstm", "hdf5-legacy", "bidi", "pytorch onnx"),
    "tf_keras_gru": ("tf_keras", "gru_reset_after", "hdf5-legacy", "gru_ra_true", "pytorch onnx"),
    "cudnn_lstm": ("tf_keras", "cudnn_lstm", "hdf5-legacy", "cu_lstm", "pytorch onnx"),
    "cudnn_gru": ("tf_keras", "cudnn_gru", "hdf5-legacy", "cu_dnngru", "pytorch onnx"),
    "gru_reset_before": ("keras3", "gru_no_reset_after", "keras-zip", "gru_ra_false", "onnx"),
    "keras3_hard_sigmoid_lstm": ("keras3", "activations", "keras-zip", "lstm_hard", "onnx"),
    "keras3_hard_sigmoid_gru": ("keras3", "activations", "keras-zip", "gru_hard", "onnx"),
    "keras2_hard_sigmoid_lstm": ("tf_keras", "activations", "hdf5-legacy", "lstm_hard", "onnx"),
    "keras2_hard_sigmoid_gru": ("tf_keras", "activations", "hdf5-legacy", "gru_hard", "onnx"),
}
TORCH_CASES = [n for n, c in CASES.items() if "pytorch" in c[4]]
ONNX_CASES = list(CASES)

KERAS_SCRIPT = r'''
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
jobs = json.load(open(sys.argv[1]))
out = sys.argv[2]
mods = {}
for job in jobs:
    fw = job["framework"]
    if fw not in mods:
        mods[fw] = __import__("keras" if fw == "keras3" else "tf_keras")
    K = mods[fw]
    x = np.random.default_rng(job["seed"]).standard_normal((2, 6, job["input_dim"])).astype("float32")
    plain = job.get("plain")
    if plain:  # a CuDNN layer cannot run on CPU: its plain twin with tf_keras's converted weights
        kw = {"reset_after": True, "recurrent_activation": "sigmoid"} if plain["class"] == "GRU" else {}
        layer = getattr(K.layers, plain["class"])(plain["units"], return_sequences=plain["return_sequences"], **kw)
        layer.build(x.shape)
        layer.set_weights([np.load(os.path.join(plain["weights_dir"], f"{j}.npy")) for j in range(3)])
    else:
        layer = K.models.load_model(job["file"], compile=False)
        for part in job["layer"].split("/"):
            layer = layer.get_layer(part)
    y = layer(x)
    if isinstance(y, (list, tuple)):
        y = y[0]
    np.save(os.path.join(out, job["name"] + "_x.npy"), x)
    np.save(os.path.join(out, job["name"] + "_y.npy"), np.asarray(y))
'''


def _entry(zoo: list[dict], model: str, dialect: str) -> dict:
    return next(e for e in zoo if e["model"] == model and e["dialect"] == dialect)


@pytest.fixture(scope="module")
def cases(zoo_keras3, zoo_tf_keras, tmp_path_factory):
    """name -> {file, layer, x, y (the Keras layer's output), recurrent truth}."""
    tmp = tmp_path_factory.mktemp("keras_outputs")
    jobs, info = [], {}
    for k, (name, (fw, model, dialect, layer, _)) in enumerate(CASES.items()):
        e = _entry(zoo_keras3 if fw == "keras3" else zoo_tf_keras, model, dialect)
        rec = [r for r in e["recurrent"] if r["path"] == layer or r["path"].startswith(layer + "/")]
        job = {"name": name, "framework": fw, "file": e["_abs"], "layer": layer, "seed": k,
               "input_dim": rec[0]["input_dim"]}
        if rec[0]["class"].startswith("CuDNN"):
            job["plain"] = {"class": rec[0]["kind"], "units": rec[0]["units"],
                            "return_sequences": rec[0]["return_sequences"],
                            "weights_dir": os.path.join(e["_root"], rec[0]["converted_weights_dir"])}
        jobs.append(job)
        info[name] = {"file": e["_abs"], "layer": layer, "recurrent": rec}
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    (tmp / "script.py").write_text(KERAS_SCRIPT)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(tmp / "script.py"), str(tmp / "jobs.json"), str(tmp)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in info:
        info[name]["x"] = np.load(tmp / f"{name}_x.npy")
        info[name]["y"] = np.load(tmp / f"{name}_y.npy")
    return info


def _convert(model: str, target: str, out: Path, *extra: str):
    return CliRunner().invoke(app, ["convert", model, "--to", target, "-o", str(out), *extra])


def _keras_view(seq: np.ndarray, keras: dict, bidirectional: bool) -> np.ndarray | list:
    """The Keras layer's output from the full (batch, time, D*units) sequence (the metadata's rule)."""
    H, rs = keras["units"], keras["return_sequences"]
    if not bidirectional:
        return seq if rs else seq[:, -1]
    fwd = seq[..., :H] if rs else seq[:, -1, :H]
    bwd = seq[..., H:] if rs else seq[:, 0, H:]
    return {"concat": np.concatenate([fwd, bwd], -1), "sum": fwd + bwd, "ave": (fwd + bwd) / 2,
            "mul": fwd * bwd}[keras["merge_mode"]]


# --- PyTorch -------------------------------------------------------------------------------------

def _torch_modules(path: Path) -> dict:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "np") as fh:
        meta = json.loads(fh.metadata()["lstm_inspect"])
    state = load_file(str(path))
    modules = {}
    for prefix, m in meta["modules"].items():
        assert m["kwargs"]["batch_first"] is True
        module = getattr(torch.nn, m["nn"].rsplit(".", 1)[1])(**m["kwargs"])
        own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        module.load_state_dict(own, strict=True)
        modules[prefix] = (module, m)
    return modules


def _run_torch(module, m: dict, x: np.ndarray) -> np.ndarray:
    import torch

    xt = torch.from_numpy(x)
    if m["keras"].get("go_backwards"):
        xt = xt.flip(1)
    with torch.no_grad():
        seq = module(xt)[0].numpy()
    return _keras_view(seq, m["keras"], m["kwargs"]["bidirectional"])


@pytest.mark.parametrize("name", TORCH_CASES)
def test_pytorch_reproduces_the_keras_layer(name, cases, tmp_path):
    c = cases[name]
    out = tmp_path / "w.safetensors"
    r = _convert(c["file"], "pytorch", out, "--layer", c["layer"])
    assert r.exit_code == 0, r.stderr
    modules = _torch_modules(out)
    prefix = c["layer"].replace("/", ".")
    assert list(modules) == [prefix]
    module, m = modules[prefix]
    got = _run_torch(module, m, c["x"])
    assert got.shape == c["y"].shape
    assert np.max(np.abs(got - c["y"])) <= TOL


def test_pytorch_names_and_metadata(zoo_keras3, tmp_path):
    from safetensors import safe_open

    e = _entry(zoo_keras3, "bidi_lstm", "keras-zip")
    out = tmp_path / "bidi.safetensors"
    r = _convert(e["_abs"], "pytorch", out)
    assert r.exit_code == 0, r.stderr
    with safe_open(str(out), "np") as fh:
        keys = set(fh.keys())
        meta = json.loads(fh.metadata()["lstm_inspect"])
        shapes = {k: fh.get_tensor(k).shape for k in keys}
    expected = {f"{p}.{w}_l0{s}" for p in ("bidi", "bidirectional")
                for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for s in ("", "_reverse")}
    assert keys == expected
    assert shapes["bidi.weight_ih_l0"] == (16, 3) and shapes["bidi.weight_hh_l0_reverse"] == (16, 4)
    m = meta["modules"]["bidi"]
    assert m["nn"] == "torch.nn.LSTM"
    assert m["kwargs"] == {"input_size": 3, "hidden_size": 4, "num_layers": 1, "bias": True,
                           "batch_first": True, "bidirectional": True}
    assert meta["modules"]["bidirectional"]["keras"]["merge_mode"] == "sum"
    assert meta["source"]["file"] == "bidi_lstm.keras" and len(meta["source"]["sha256"]) == 64


def test_pytorch_lstm_bias_split_sums_to_the_keras_bias(zoo_keras3, tmp_path):
    from safetensors.numpy import load_file

    e = _entry(zoo_keras3, "lstm_seq", "keras-zip")
    out = tmp_path / "lstm.safetensors"
    assert _convert(e["_abs"], "pytorch", out).exit_code == 0
    t = load_file(str(out))
    keras_bias = np.load(Path(e["_root"]) / e["recurrent"][0]["weights_dir"] / "2.npy")
    np.testing.assert_array_equal(t["lstm.bias_ih_l0"] + t["lstm.bias_hh_l0"], keras_bias)
    keras_kernel = np.load(Path(e["_root"]) / e["recurrent"][0]["weights_dir"] / "0.npy")
    np.testing.assert_array_equal(t["lstm.weight_ih_l0"], keras_kernel.T)  # i, f, c, o = i, f, g, o


def test_pytorch_gru_gate_order_is_r_z_n(zoo_keras3, tmp_path):
    from safetensors.numpy import load_file

    e = _entry(zoo_keras3, "gru_reset_after", "keras-zip")
    out = tmp_path / "gru.safetensors"
    assert _convert(e["_abs"], "pytorch", out).exit_code == 0
    t = load_file(str(out))
    kernel = np.load(Path(e["_root"]) / e["recurrent"][0]["weights_dir"] / "0.npy")
    z, r_, h = np.split(kernel, 3, axis=1)
    np.testing.assert_array_equal(t["gru_ra_true.weight_ih_l0"], np.concatenate([r_, z, h], axis=1).T)
    bias = np.load(Path(e["_root"]) / e["recurrent"][0]["weights_dir"] / "2.npy")  # (2, 3H)
    bz, br, bh = np.split(bias[1], 3)
    np.testing.assert_array_equal(t["gru_ra_true.bias_hh_l0"], np.concatenate([br, bz, bh]))


# --- ONNX ----------------------------------------------------------------------------------------

def _onnx_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _onnx_meta(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    return json.loads({p.key: p.value for p in model.metadata_props}["lstm_inspect"])


@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnxruntime_reproduces_the_keras_layer(name, cases, tmp_path):
    c = cases[name]
    out = tmp_path / "onnx"
    r = _convert(c["file"], "onnx", out, "--layer", c["layer"])
    assert r.exit_code == 0, r.stderr
    files = sorted(os.listdir(out))
    assert files == [c["layer"].replace("/", "__") + ".onnx"]
    meta = _onnx_meta(out / files[0])
    y_full = _onnx_session(out / files[0]).run(["Y"], {"X": c["x"]})[0]
    D = 2 if len(meta["keras"]["paths"]) == 2 else 1
    assert y_full.shape == (2, 6, D * meta["keras"]["units"])
    got = _keras_view(y_full, meta["keras"], D == 2)
    assert got.shape == c["y"].shape
    assert np.max(np.abs(got - c["y"])) <= TOL


def test_onnx_model_structure(zoo_keras3, tmp_path):
    import onnx

    out = tmp_path / "o"
    out.mkdir()
    files = {}
    for model in ("bidi_lstm", "gru_reset_after", "gru_no_reset_after", "activations"):
        folder = out / model
        r = _convert(_entry(zoo_keras3, model, "keras-zip")["_abs"], "onnx", folder)
        assert r.exit_code == 0, r.stderr
        for f in os.listdir(folder):
            files[f"{model}/{f}"] = onnx.load(str(folder / f))
    assert set(files) == {"bidi_lstm/bidi.onnx", "bidi_lstm/bidirectional.onnx", "gru_reset_after/gru_ra_true.onnx",
                          "gru_no_reset_after/gru_ra_false.onnx", "gru_no_reset_after/gru.onnx",
                          "activations/lstm_hard.onnx", "activations/gru_hard.onnx",
                          "activations/simple_rnn.onnx"}
    for name, m in files.items():
        onnx.checker.check_model(m, full_check=True)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 14
        rnn = [n for n in m.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
        assert len(rnn) == 1, name
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in rnn[0].attribute}
        assert attrs.get("layout", 0) == 0
        assert [i.name for i in m.graph.input] == ["X"] and [o.name for o in m.graph.output] == ["Y"]
        dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
        assert dims[:2] == ["batch", "time"]
        files[name] = (rnn[0], attrs)
    node, attrs = files["bidi_lstm/bidi.onnx"]
    assert node.op_type == "LSTM" and attrs["direction"] == b"bidirectional"
    assert files["gru_reset_after/gru_ra_true.onnx"][1]["linear_before_reset"] == 1
    assert files["gru_no_reset_after/gru_ra_false.onnx"][1]["linear_before_reset"] == 0
    node, attrs = files["activations/lstm_hard.onnx"]
    assert attrs["activations"] == [b"HardSigmoid", b"Relu", b"Relu"]
    assert attrs["activation_alpha"] == pytest.approx([1 / 6]) and attrs["activation_beta"] == pytest.approx([0.5])


def test_onnx_lstm_initializers_are_in_i_o_f_c_order(zoo_keras3, tmp_path):
    import onnx
    from onnx import numpy_helper

    e = _entry(zoo_keras3, "lstm_seq", "keras-zip")
    out = tmp_path / "o"
    assert _convert(e["_abs"], "onnx", out).exit_code == 0
    m = onnx.load(str(out / "lstm.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    kernel = np.load(Path(e["_root"]) / e["recurrent"][0]["weights_dir"] / "0.npy")
    i, f, c, o = np.split(kernel, 4, axis=1)
    np.testing.assert_array_equal(init["W"][0], np.concatenate([i, o, f, c], axis=1).T)
    assert init["B"].shape == (1, 8 * 5)


# --- corpus files, compared with the NumPy reference (no Keras needed) ----------------------------

def _reference_view(data: dict, layer: str, x: np.ndarray, bidirectional: bool) -> np.ndarray:
    dirs = [d for d in data["directions"] if d["path"] == layer or d["path"].startswith(layer + "/")]
    flavor = ref.hard_sigmoid_flavor(data["producer"])
    seqs = [ref.run(d, d["blocks"], x, flavor)[0] for d in dirs]
    if bidirectional:
        return np.concatenate([seqs[0], seqs[1][:, ::-1]], axis=-1)  # Bidirectional flips the backward side
    return seqs[0]


@pytest.mark.parametrize("file,layer,targets", [
    ("textgenrnn__textgenrnn_weights.hdf5", "rnn_1", "pytorch onnx"),      # CuDNNLSTM, weights only
    ("dl4j__bidirectional_lstm_theano_1.h5", "bidirectional_1", "onnx"),   # Keras 1, hard_sigmoid
    ("nifty__bilstm_model.keras", "bidirectional", "pytorch onnx"),
    ("circuitrnn__gru_model.h5", "gru", "pytorch onnx"),
])
def test_corpus_conversions_match_the_reference(file, layer, targets, tmp_path):
    path = CORPUS / file
    data = collect(str(path), (layer,))
    d0 = next(d for d in data["directions"] if d["path"].startswith(layer))
    bidirectional = d0["bidirectional"] is not None
    x = np.random.default_rng(0).standard_normal((2, 5, d0["input_dim"])).astype(np.float32)
    expected = _reference_view(data, layer, x, bidirectional)
    if "pytorch" in targets:
        out = tmp_path / "w.safetensors"
        r = _convert(str(path), "pytorch", out, "--layer", layer)
        assert r.exit_code == 0, r.stderr
        (module, _meta), = _torch_modules(out).values()
        import torch
        with torch.no_grad():  # float64, so that only the weight layout is tested, not rounding
            seq = module.double()(torch.from_numpy(x.astype(np.float64)))[0].numpy()
        assert np.max(np.abs(seq - expected)) <= 1e-9
    else:
        r = _convert(str(path), "pytorch", tmp_path / "refused.safetensors", "--layer", layer)
        assert r.exit_code == 2 and "hard_sigmoid" in r.stderr
        assert not (tmp_path / "refused.safetensors").exists()
    out = tmp_path / "onnx"
    r = _convert(str(path), "onnx", out, "--layer", layer)
    assert r.exit_code == 0, r.stderr
    (f,) = os.listdir(out)
    y = _onnx_session(out / f).run(["Y"], {"X": x})[0]
    assert np.max(np.abs(y - expected)) <= 2e-5


# --- refusals, atomic writes, --force ---------------------------------------------------------------

def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_refusals_write_nothing(zoo_keras3, tmp_path):
    cases = [
        ("gru_no_reset_after", "pytorch", "reset_after=False"),
        ("convlstm2d", "pytorch", "no torch.nn module"),
        ("convlstm2d", "onnx", "no ONNX operator"),
        ("activations", "pytorch", "hard_sigmoid"),
        ("simple_rnn", "pytorch", None),  # allowed: tanh SimpleRNN -> nn.RNN
    ]
    for model, target, reason in cases:
        e = _entry(zoo_keras3, model, "keras-zip")
        out = tmp_path / f"{model}-{target}"
        r = _convert(e["_abs"], target, out)
        if reason is None:
            assert r.exit_code == 0, r.stderr
            continue
        assert r.exit_code == 2, (model, target, r.stderr)
        assert reason in r.stderr, r.stderr
        assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_force_and_atomic_replacement(zoo_keras3, tmp_path):
    lstm = _entry(zoo_keras3, "lstm_seq", "keras-zip")["_abs"]
    gru = _entry(zoo_keras3, "gru_reset_after", "keras-zip")["_abs"]
    st = tmp_path / "w.safetensors"
    st.write_bytes(b"keep me")
    r = _convert(lstm, "pytorch", st)
    assert r.exit_code == 2 and "--force" in r.stderr and st.read_bytes() == b"keep me"
    assert _convert(lstm, "pytorch", st, "--force").exit_code == 0 and st.read_bytes() != b"keep me"
    before = st.read_bytes()
    assert _convert(str(CORPUS / "dl4j__convlstm2d_0.h5"), "pytorch", st, "--force").exit_code == 2
    assert st.read_bytes() == before  # a refused conversion leaves the old output alone

    folder = tmp_path / "onnx"
    assert _convert(lstm, "onnx", folder).exit_code == 0
    assert os.listdir(folder) == ["lstm.onnx"]
    r = _convert(gru, "onnx", folder)
    assert r.exit_code == 2 and "--force" in r.stderr
    assert _convert(gru, "onnx", folder, "--force").exit_code == 0
    assert os.listdir(folder) == ["gru_ra_true.onnx"]  # replaced as a whole
    (folder / "notes.txt").write_text("mine")
    r = _convert(lstm, "onnx", folder, "--force")
    assert r.exit_code == 2 and "not .onnx" in r.stderr
    assert sorted(os.listdir(folder)) == ["gru_ra_true.onnx", "notes.txt"]
    assert _leftovers(tmp_path) == []


def test_onnx_file_names_cannot_escape():
    from lstm_inspect.commands.convert import onnx_file_name

    assert onnx_file_name("bidi") == "bidi.onnx"
    assert onnx_file_name("encoder/enc_lstm") == "encoder__enc_lstm.onnx"
    for hostile in ("../../etc/x", "..", "/abs", "a\\b", "a\x00b"):
        name = onnx_file_name(hostile)
        assert "/" not in name and "\\" not in name and not name.startswith(".") and "\x00" not in name


def test_test_process_stays_tensorflow_free():
    assert not any(m in sys.modules for m in ("tensorflow", "keras", "tf_keras"))
