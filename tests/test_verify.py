"""`verify`: Keras against the NumPy reference built from the split blocks.

The test process never imports TensorFlow: Keras runs in two driver subprocesses (started together,
one per framework) that call the CLI in-process with CliRunner. Each driver's first call keeps the
guard on (TensorFlow is not imported yet, so forking is safe); later calls set
LSTM_INSPECT_NO_GUARD=1 because a fork after TensorFlow has started its threads is not.
The NumPy reference itself is also unit-tested here, in-process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"

from lstm_inspect import reference as ref
from lstm_inspect.cli import app

TF_MODULES = ("tensorflow", "keras", "tf_keras")

DRIVER = r'''
import dataclasses, importlib.abc, json, os, sys

spec = json.load(open(sys.argv[1]))
blocked = set(spec.get("block", []))


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


if blocked:
    sys.meta_path.insert(0, Block())


def swap_i_f_labels():
    """Mislabel the splitter: the LSTM blocks of gate i are called f and vice versa."""
    from lstm_inspect.cells import keras as cells
    original = cells._fused_blocks

    def swapped(layer, kind, path):
        blocks, *rest = original(layer, kind, path)
        if kind is cells.CellKind.LSTM:
            other = {"i": "f", "f": "i"}
            fixed = []
            for b in blocks:
                letter, _, gate = b.name.partition("_")
                fixed.append(dataclasses.replace(b, name=f"{letter}_{other[gate]}") if gate in other else b)
            blocks = fixed
        return (blocks, *rest)
    cells._fused_blocks = swapped


from typer.testing import CliRunner
from lstm_inspect.cli import app

runner = CliRunner()
results = []
for job in spec["jobs"]:
    if job.get("no_guard"):
        os.environ["LSTM_INSPECT_NO_GUARD"] = "1"
    if job.get("swap"):
        swap_i_f_labels()
    if job.get("exec"):  # build extra Keras models (after the guarded first call)
        exec(job["exec"], {"__name__": "extra"})
        continue
    r = runner.invoke(app, job["args"])
    exc = r.exception if r.exception is not None and not isinstance(r.exception, SystemExit) else None
    results.append({"name": job["name"], "exit": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                    "exception": repr(exc) if exc else None,
                    "tf_loaded": "tensorflow" in sys.modules})
with open(sys.argv[2], "w") as fh:
    json.dump(results, fh)
'''


# ConvLSTM configurations the zoo does not hold: strides, dilation, channels_first, go_backwards
EXTRA_CONV = r'''
import os, numpy as np, keras
L = keras.layers
OUT = {out!r}


def save(inputs, outputs, name):
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(w.dtype) for w in model.get_weights()])
    model.save(os.path.join(OUT, name))


i = keras.Input((4, 9, 2))
save(i, L.ConvLSTM1D(3, 3, strides=2, padding="same", return_sequences=True, go_backwards=True)(i),
     "conv1d_strided_backwards.keras")
i = keras.Input((3, 7, 7, 2))
save(i, L.ConvLSTM2D(2, (3, 2), dilation_rate=(2, 1), padding="same", activation="relu",
                     recurrent_activation="hard_sigmoid")(i), "conv2d_dilated.keras")
i = keras.Input((3, 2, 6, 6))
save(i, L.ConvLSTM2D(2, 3, data_format="channels_first", padding="valid")(i), "conv2d_channels_first.keras")
i = keras.Input((3, 2, 5, 6, 5))
save(i, L.ConvLSTM3D(2, 2, data_format="channels_first", padding="same", strides=(1, 2, 1))(i),
     "conv3d_channels_first_strided.keras")
'''
EXTRA_FILES = ("conv1d_strided_backwards.keras", "conv2d_dilated.keras", "conv2d_channels_first.keras",
               "conv3d_channels_first_strided.keras")


def _corpus_recurrent() -> list[Path]:
    import csv
    with open(CORPUS / "MANIFEST.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [CORPUS / r["file"] for r in rows if r.get("recurrent_directions(kind:units)", "").strip()]


def _start_driver(tmp: Path, name: str, spec: dict) -> tuple[subprocess.Popen, Path]:
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    spec_path, out = tmp / f"{name}.json", tmp / f"{name}.out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    env.pop("LSTM_INSPECT_NO_GUARD", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    with open(tmp / f"{name}.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, str(script), str(spec_path), str(out)], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    return proc, out


def _json_job(name: str, path: str, **extra) -> dict:
    return {"name": name, "args": ["verify", path, "--format", "json"], "no_guard": True, **extra}


@pytest.fixture(scope="module")
def runs(zoo_keras3, zoo_tf_keras, tmp_path_factory):
    """All Keras work of this module, in two driver subprocesses run side by side."""
    # keras-dir and sharded weights hold the same bytes as .keras and .weights.h5 (the readers' tests
    # cover those containers); every model is verified in every other dialect.
    k3 = {e["file"]: e for e in zoo_keras3 if e["dialect"] not in ("keras-dir", "keras-weights-sharded")}
    tk = {e["file"]: e for e in zoo_tf_keras}
    first_k3 = next(e for e in zoo_keras3 if e["model"] == "lstm_seq" and e["dialect"] == "keras-zip")
    tk_activations = next(e for e in zoo_tf_keras if e["model"] == "activations" and e["dialect"] == "hdf5-legacy")
    stacked = next(e for e in zoo_keras3 if e["model"] == "rnn_stacked" and e["dialect"] == "keras-zip")
    tmp = tmp_path_factory.mktemp("verify_runs")
    extra = tmp / "extra"
    extra.mkdir()
    keras3_jobs = [{"name": "guarded-table", "args": ["verify", first_k3["_abs"]]},
                   {"name": "build-extra", "exec": EXTRA_CONV.format(out=str(extra))}]
    keras3_jobs += [_json_job(f"extra:{name}", str(extra / name)) for name in EXTRA_FILES]
    keras3_jobs += [_json_job(f"keras3:{f}", e["_abs"]) for f, e in k3.items()]
    # balance the two drivers: tf_keras's weights-only .h5 files (no config, so no hard_sigmoid) here
    keras3_jobs += [_json_job(f"tf_keras:{f}", e["_abs"]) for f, e in tk.items() if e["dialect"] == "hdf5-weights"]
    # tf_keras is blocked in this driver: a Keras 2 hard_sigmoid file must use Keras 3 with a substitute
    keras3_jobs.append(_json_job("no-tf_keras:activations", tk_activations["_abs"]))
    keras3_jobs.append({"name": "swap", "args": ["verify", stacked["_abs"], "--format", "json"],
                        "no_guard": True, "swap": True})
    keras3_jobs.append({"name": "swap-table", "args": ["verify", stacked["_abs"], "--layer", "stacked"],
                        "no_guard": True})
    corpus = _corpus_recurrent()
    tf_jobs = [{"name": "guarded-corpus", "args": ["verify", str(corpus[0]), "--format", "json"]}]
    tf_jobs += [_json_job(f"tf_keras:{f}", e["_abs"]) for f, e in tk.items() if e["dialect"] != "hdf5-weights"]
    tf_jobs += [_json_job(f"corpus:{p.name}", str(p)) for p in corpus]
    tf_jobs.append({"name": "options", "no_guard": True,
                    "args": ["verify", first_k3["_abs"], "--steps", "3", "--batch", "2", "--seed", "5",
                             "--tolerance", "1e-9", "--format", "json", "--layer", "lstm*"]})
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    procs = [_start_driver(tmp / "a", "keras3", {"block": ["tf_keras"], "jobs": keras3_jobs}),
             _start_driver(tmp / "b", "tf_keras", {"jobs": tf_jobs})]
    results = {}
    for (proc, out), folder in zip(procs, ("a", "b")):
        code = proc.wait(timeout=1200)
        log = (tmp / folder / ("keras3.log" if folder == "a" else "tf_keras.log")).read_text()[-4000:]
        assert code == 0 and out.exists(), f"driver failed ({code}):\n{log}"
        for r in json.loads(out.read_text()):
            results[r["name"]] = r
    return {"results": results, "k3": k3, "tk": tk, "corpus": corpus}


def _reports(results: dict, prefix: str) -> list[tuple[str, dict]]:
    return [(name, r) for name, r in results.items() if name.startswith(prefix)]


def _assert_all_pass(items: list[tuple[str, dict]]) -> dict:
    failures, worst = [], {}
    for name, r in items:
        if r["exit"] != 0 or r["exception"]:
            failures.append(f"{name}: exit {r['exit']} {r['exception'] or ''} {r['stderr'][-400:]}")
            continue
        report = json.loads(r["stdout"])
        assert report["status"] == "pass", name
        for d in report["directions"]:
            assert d["status"] == "pass", (name, d)
            assert d["max_abs_keras_numpy"] is not None and d["max_abs_keras_numpy"] <= 1e-5, (name, d)
            if d["max_abs_file_numpy"] is not None:
                assert d["max_abs_file_numpy"] <= 1e-5, (name, d)
            key = d["kind"]
            worst[key] = max(worst.get(key, 0.0), d["max_abs_keras_numpy"], d["max_abs_file_numpy"] or 0.0)
    assert not failures, "verify failed on:\n" + "\n".join(failures)
    return worst


def test_verify_passes_on_every_keras3_zoo_file(runs):
    items = _reports(runs["results"], "keras3:")
    assert len(items) == len(runs["k3"])
    worst = _assert_all_pass(items)
    assert set(worst) == {"LSTM", "GRU", "SimpleRNN", "ConvLSTM"}


def test_verify_convlstm_strides_dilation_channels_first(runs):
    items = _reports(runs["results"], "extra:")
    assert len(items) == len(EXTRA_FILES)
    _assert_all_pass(items)
    reports = {n.split(":", 1)[1]: json.loads(r["stdout"]) for n, r in items}
    d = reports["conv2d_channels_first.keras"]["directions"][0]
    assert d["input_shape"][2] == 2 and any("channels_first" in n for n in d["notes"])
    assert reports["conv1d_strided_backwards.keras"]["directions"][0]["go_backwards"] is True


def test_verify_passes_on_every_tf_keras_zoo_file_including_cudnn(runs):
    items = _reports(runs["results"], "tf_keras:")
    assert len(items) == len(runs["tk"])
    _assert_all_pass(items)
    cudnn = [json.loads(r["stdout"]) for n, r in items if "cudnn" in n]
    classes = {d["class"] for rep in cudnn for d in rep["directions"]}
    assert {"CuDNNLSTM", "CuDNNGRU"} <= classes
    for rep in cudnn:
        for d in rep["directions"]:
            if d["class"].startswith("CuDNN"):
                assert d["built_as"] in ("LSTM", "GRU(reset_after=True)")
                assert "CuDNN" in (d["file_tensors"] or "")


def test_verify_passes_on_the_recurrent_corpus(runs):
    items = _reports(runs["results"], "corpus:")
    assert len(items) == len(runs["corpus"]) >= 10
    _assert_all_pass(items)
    by_name = {n.split(":", 1)[1]: json.loads(r["stdout"]) for n, r in items}
    # Keras 1 files: hard_sigmoid computed the Keras 1/2 way by tf_keras
    keras1 = by_name["dl4j__bidirectional_lstm_theano_1.h5"]
    assert keras1["producer"] == "Keras 1"
    assert all(d["hard_sigmoid"].startswith("clip(0.2x + 0.5") and d["keras"].startswith("tf_keras")
               for d in keras1["directions"])
    # weights-only Keras 1 file without any config or version
    assert by_name["dl4j__simple_lstm_th_keras_1_weights.h5"]["directions"][0]["status"] == "pass"


def test_first_call_runs_guarded_and_renders_a_table(runs):
    r = runs["results"]["guarded-table"]
    assert r["exit"] == 0, r
    out = r["stdout"]
    for text in ("direction", "max |keras − numpy|", "max |file − numpy|", "lstm", "LSTM", "pass",
                 "tolerance 1e-05", "float64"):
        assert text in out, (text, out)
    assert "within 1e-05" in r["stderr"]
    g = runs["results"]["guarded-corpus"]
    assert g["exit"] == 0 and json.loads(g["stdout"])["status"] == "pass", g


def test_swapped_gate_labels_make_verify_fail_for_that_layer(runs):
    r = runs["results"]["swap"]
    assert r["exit"] == 1, r
    report = json.loads(r["stdout"])
    status = {d["path"]: d for d in report["directions"]}
    # the two LSTM cells fail, the GRU and SimpleRNN cells of the same file still pass
    assert status["stacked/cell_0"]["status"] == "fail"
    assert status["rnn/cell_1"]["status"] == "fail"
    assert status["stacked/cell_1"]["status"] == "pass"
    assert status["rnn/cell_0"]["status"] == "pass"
    assert status["stacked/cell_0"]["max_abs_file_numpy"] > 1e-2
    assert "do not match the file" in status["stacked/cell_0"]["reason"]
    assert "stacked/cell_0" in r["stderr"] and "FAILED" in r["stderr"]
    t = runs["results"]["swap-table"]
    assert t["exit"] == 1 and "FAIL" in t["stdout"] and "stacked/cell_0" in t["stdout"]


def test_keras2_hard_sigmoid_without_tf_keras_uses_a_substitute(runs):
    r = runs["results"]["no-tf_keras:activations"]
    assert r["exit"] == 0, r
    report = json.loads(r["stdout"])
    hard = [d for d in report["directions"] if d["hard_sigmoid"]]
    assert {d["path"] for d in hard} == {"lstm_hard", "gru_hard"}
    for d in hard:
        assert d["keras"].startswith("keras 3")
        assert any("tf_keras is not installed" in n for n in d["notes"])
        assert d["hard_sigmoid"].startswith("clip(0.2x + 0.5")


def test_options_and_json_contract(runs):
    r = runs["results"]["options"]
    assert r["exit"] == 0, r
    report = json.loads(r["stdout"])
    assert (report["steps"], report["batch"], report["seed"], report["tolerance"]) == (3, 2, 5, 1e-9)
    assert [d["path"] for d in report["directions"]] == ["lstm"]
    d = report["directions"][0]
    assert d["input_shape"] == [2, 3, 4]
    for key in ("path", "kind", "class", "keras", "built_as", "max_abs_keras_numpy", "max_abs_file_numpy",
                "status", "reason", "notes", "hard_sigmoid"):
        assert key in d


# --- in-process: no TensorFlow ---------------------------------------------------------------

def test_bad_input_exits_2_without_importing_tensorflow(tmp_path):
    runner = CliRunner()
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not a model")
    r = runner.invoke(app, ["verify", str(junk)])
    assert r.exit_code == 2, r.output
    r = runner.invoke(app, ["verify", str(CORPUS / "har__har_lstm.h5"), "--layer", "nothing*"])
    assert r.exit_code == 2 and "no recurrent layer matches" in r.stderr
    r = runner.invoke(app, ["verify", str(CORPUS / "har__har_lstm.h5"), "--format", "xml"])
    assert r.exit_code == 2
    assert not any(m in sys.modules for m in TF_MODULES)


def test_missing_tensorflow_says_how_to_install_it():
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {TF_MODULES!r}:
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        sys.argv = ["lstm-inspect", "verify", {str(CORPUS / "har__har_lstm.h5")!r}]
        from lstm_inspect.cli import app
        app()
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "verify needs TensorFlow: pip install 'lstm-inspect[tf]'" in proc.stderr


def test_reading_path_never_imports_tensorflow():
    code = ("import sys; import lstm_inspect.cli, lstm_inspect.commands.verify, lstm_inspect.commands.convert, "
            "lstm_inspect.reference; "
            f"from lstm_inspect.commands.verify import collect; collect({str(CORPUS / 'har__har_lstm.h5')!r}); "
            f"bad = [m for m in {TF_MODULES!r} if m in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_this_test_process_is_tensorflow_free():
    assert not any(m in sys.modules for m in TF_MODULES)


# --- the NumPy reference alone ---------------------------------------------------------------

def _naive_conv(x, w, strides, padding, dilation):
    """Direct loops over output positions (1-D and 2-D), TensorFlow's 'same' padding rule."""
    rank = w.ndim - 2
    k = w.shape[:rank]
    eff = [(k[i] - 1) * dilation[i] + 1 for i in range(rank)]
    n = x.shape[1:1 + rank]
    if padding == "same":
        out = [-(-n[i] // strides[i]) for i in range(rank)]
        total = [max((out[i] - 1) * strides[i] + eff[i] - n[i], 0) for i in range(rank)]
        before = [t // 2 for t in total]
    else:
        out = [(n[i] - eff[i]) // strides[i] + 1 for i in range(rank)]
        before = [0] * rank
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    for pos in np.ndindex(*out):
        for tap in np.ndindex(*k):
            src = [pos[i] * strides[i] + tap[i] * dilation[i] - before[i] for i in range(rank)]
            if all(0 <= src[i] < n[i] for i in range(rank)):
                y[(slice(None), *pos)] += x[(slice(None), *src)] @ w[tap]
    return y


@pytest.mark.parametrize("shape,kernel,strides,padding,dilation", [
    ((7,), (3,), (1,), "same", (1,)), ((7,), (2,), (2,), "same", (1,)), ((8,), (3,), (1,), "valid", (2,)),
    ((5, 6), (3, 2), (1, 1), "valid", (1, 1)), ((6, 5), (3, 3), (2, 2), "same", (1, 1)),
    ((7, 7), (3, 2), (1, 1), "same", (2, 1)),
])
def test_conv_nd_matches_direct_loops(shape, kernel, strides, padding, dilation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *shape, 3))
    w = rng.standard_normal((*kernel, 3, 4))
    got = ref.conv_nd(x, w, strides, padding, dilation)
    np.testing.assert_allclose(got, _naive_conv(x, w, strides, padding, dilation), atol=1e-12)


def test_both_hard_sigmoid_definitions():
    x = np.array([-4.0, -2.5, -1.0, 0.0, 1.0, 2.5, 4.0])
    k2 = ref.activation("hard_sigmoid", "keras2")(x)
    k3 = ref.activation("hard_sigmoid", "keras3")(x)
    np.testing.assert_allclose(k2, np.clip(0.2 * x + 0.5, 0, 1))
    np.testing.assert_allclose(k3, np.clip(x / 6 + 0.5, 0, 1))
    assert not np.allclose(k2, k3)
    assert ref.hard_sigmoid_flavor("keras1") == ref.hard_sigmoid_flavor("keras2") == "keras2"
    assert ref.hard_sigmoid_flavor("keras3") == ref.hard_sigmoid_flavor(None) == "keras3"
    with pytest.raises(ref.ReferenceUnsupported):
        ref.activation("my_custom_fn", "keras3")


def test_gru_variants_and_go_backwards():
    rng = np.random.default_rng(2)
    H, I = 3, 2
    blocks = {f"{k}_{g}": rng.standard_normal((I if k == "W" else H, H)) for k in "WU" for g in "zrh"}
    blocks.update({f"{k}_{g}": rng.standard_normal(H) for k in ("b", "bU") for g in "zrh"})
    x = rng.standard_normal((2, 5, I))
    spec = {"kind": "GRU", "units": H, "activation": "tanh", "recurrent_activation": "sigmoid"}
    after, _ = ref.run({**spec, "reset_after": True}, blocks, x, "keras3")
    before, _ = ref.run({**spec, "reset_after": False}, {k: v for k, v in blocks.items() if not k.startswith("bU")},
                        x, "keras3")
    assert after.shape == before.shape == (2, 5, H) and not np.allclose(after, before)
    back, (h,) = ref.run({**spec, "reset_after": True, "go_backwards": True}, blocks, x, "keras3")
    fwd_on_reversed, _ = ref.run({**spec, "reset_after": True}, blocks, x[:, ::-1], "keras3")
    np.testing.assert_allclose(back, fwd_on_reversed)  # outputs in processing order, as Keras
    np.testing.assert_allclose(h, back[:, -1])


def test_a_direction_that_cannot_be_checked_exits_2(monkeypatch):
    from lstm_inspect.commands import verify as verify_mod

    data = verify_mod.collect(str(CORPUS / "har__har_lstm.h5"))
    data["directions"][0]["activation"] = "my_custom_activation"
    data["directions"] = data["directions"][:1]
    report = verify_mod.check(data)  # refused before any Keras import
    assert report["status"] == "error"
    assert "my_custom_activation" in report["directions"][0]["reason"]
    monkeypatch.setattr(verify_mod, "collect", lambda *args, **kwargs: data)
    r = CliRunner().invoke(app, ["verify", str(CORPUS / "har__har_lstm.h5")])
    assert r.exit_code == 2 and "could not check" in r.stderr, r.stderr
    assert "ERROR" in r.stdout
    assert not any(m in sys.modules for m in TF_MODULES)
