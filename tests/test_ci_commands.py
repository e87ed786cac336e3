"""snapshot / check / diff: the CI commands, in process with Typer's CliRunner.

Keras models are built once per session in a subprocess (tests/ci_build_models.py); this process never
imports TensorFlow. Drifted variants come from Keras itself (other units, layers, merge modes...) or
from editing copies of legacy .h5 files with h5py (a changed value, a NaN, a renamed layer).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_inspect import __version__
from lstm_inspect.commands import lockfile
from lstm_inspect.render import ci as ci_report
from lstm_inspect.cli import app
from lstm_inspect.commands.lockfile import CheckReport, CheckResult, Finding

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "tests" / "ci_build_models.py"
CORPUS = ROOT.parent / "shared" / "corpus"
KERAS1_MODEL = CORPUS / "dl4j__simple_lstm_tf_keras_1_model.h5"
GITHUB_LINE = re.compile(r"^::(error|warning|notice)( [^:]*)?::.*$")

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def run_json(*args: str) -> tuple[int, dict]:
    result = run(*args, "--format", "json")
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Path:
    """All Keras models of the module, built in ONE subprocess (about 10 s, mostly importing TensorFlow)."""
    out = tmp_path_factory.mktemp("ci_models")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", KERAS_BACKEND="tensorflow")
    proc = subprocess.run([sys.executable, str(BUILDER), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not (out / "done.json").exists():
        raise RuntimeError(f"building the CI test models failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return out


@pytest.fixture(scope="session")
def base_lock(models, tmp_path_factory) -> Path:
    lock = tmp_path_factory.mktemp("locks") / "base.shapes.json"
    result = run("snapshot", models / "base.keras", "-o", lock)
    assert result.exit_code == 0, result.output
    return lock


def findings(report: dict) -> list[dict]:
    return [f for c in report["checks"] for f in c["findings"]]


def errors(report: dict) -> list[dict]:
    return [f for f in findings(report) if f["severity"] == "error"]


def _dataset(f: h5py.File, suffix: str) -> h5py.Dataset:
    found = []
    f.visititems(lambda name, obj: found.append(obj) if isinstance(obj, h5py.Dataset)
                 and name.endswith(suffix) else None)
    assert len(found) == 1, (suffix, found)
    return found[0]


def edited_copy(src: Path, dst: Path, suffix: str, edit) -> Path:
    shutil.copy(src, dst)
    os.chmod(dst, 0o644)
    with h5py.File(dst, "r+") as f:
        ds = _dataset(f, suffix)
        data = ds[()]
        edit(data)
        ds[...] = data
    return dst


# ------------------------------------------------------------------------------------------------
# snapshot

def test_snapshot_then_check_same_file_passes(models, base_lock):
    result = run("check", models / "base.keras", "--against", base_lock, "--weights")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("ok")
    assert len(result.stdout.strip().splitlines()) == 1


def test_snapshot_schema_is_versioned_stable_and_sorted(models, base_lock, tmp_path):
    text = base_lock.read_text()
    data = json.loads(text)
    assert data["schema"] == "lstm-inspect/snapshot" and data["version"] == 1
    assert data["tool"] == {"name": "lstm-inspect", "version": __version__}
    assert data["source"]["file"] == "base.keras" and data["source"]["format"] == "keras-zip"
    assert str(models) not in text  # the folder does not make two snapshots differ
    assert text.endswith("}\n") and text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert [layer["name"] for layer in data["layers"]] == ["lstm", "bidi", "head"]
    lstm = data["layers"][0]
    assert [(w["name"].rsplit("/", 1)[-1], w["shape"], w["dtype"]) for w in lstm["weights"]] == [
        ("kernel", [5, 64], "float32"), ("recurrent_kernel", [16, 64], "float32"), ("bias", [64], "float32")]
    assert all(re.fullmatch(r"[0-9a-f]{64}", w["sha256"]) for w in lstm["weights"])
    assert data["totals"]["params"] == 1408 + 2 * (16 * 24 + 8 * 24 + 48) + 51
    forward = next(d for d in data["recurrent"] if d["path"] == "bidi/forward")
    assert forward["kind"] == "GRU" and forward["units"] == 8 and forward["input_dim"] == 16
    assert forward["reset_after"] is True and forward["blocks"]["bU_z"] == [8]
    assert data["recurrent"][0]["return_sequences"] is True
    # The same model snapshotted again, elsewhere and through stdout, gives the same bytes.
    copy = tmp_path / "elsewhere" / "base.keras"
    copy.parent.mkdir()
    shutil.copy(models / "base.keras", copy)
    assert run("snapshot", copy, "-o", tmp_path / "again.json").exit_code == 0
    assert (tmp_path / "again.json").read_text() == text
    assert run("snapshot", copy, "-o", "-").stdout == text


def test_snapshot_refuses_to_overwrite_without_force(models, tmp_path):
    out = tmp_path / "m.shapes.json"
    out.write_text("keep me")
    result = run("snapshot", models / "base.keras", "-o", out)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert out.read_text() == "keep me"
    assert run("snapshot", models / "base.keras", "-o", out, "--force").exit_code == 0
    assert json.loads(out.read_text())["schema"] == "lstm-inspect/snapshot"
    assert run("snapshot", models / "base.keras", "-o", tmp_path / "no" / "such" / "dir.json").exit_code == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m.shapes.json"]  # nothing half-written left behind


def test_checksums_stream_in_row_slices(models, monkeypatch):
    whole = lockfile.snapshot_data(models / "base.h5")
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 40)  # a few rows per read
    sliced = lockfile.snapshot_data(models / "base.h5")
    assert whole == sliced
    with h5py.File(models / "base.h5", "r") as f:
        kernel = _dataset(f, "lstm_cell/kernel")[()]
    expected = hashlib.sha256(b"float32;5,64;" + np.ascontiguousarray(kernel).tobytes()).hexdigest()
    lstm = next(layer for layer in whole["layers"] if layer["name"] == "lstm")
    assert lstm["weights"][0]["sha256"] == expected


def test_h5_lock_accepts_its_keras_resave(models, tmp_path):
    """A lock from the .h5 holds for the .keras re-save, checksums included (only a format warning)."""
    lock = tmp_path / "h5.shapes.json"
    assert run("snapshot", models / "base.h5", "-o", lock).exit_code == 0
    code, report = run_json("check", models / "base.keras", "--against", lock, "--weights")
    assert code == 0 and report["ok"]
    assert [(f["kind"], f["severity"]) for f in findings(report)] == [("format", "warning")]


# ------------------------------------------------------------------------------------------------
# check --against: every kind of drift fails and names the layer

DRIFTS = [
    ("units.keras", "units", "lstm", "16 → 24"),
    ("added.keras", "layer-added", "extra", "Dense"),
    ("renamed.keras", "layer-renamed", "encoder", "lstm renamed to encoder"),
    ("merge_sum.keras", "config.merge_mode", "bidi", "concat → sum"),
    ("reset_after.keras", "reset_after", "bidi/forward", "true → false"),
    ("float16.keras", "dtype", "lstm", "float32 → float16"),
]


@pytest.mark.parametrize("variant, kind, subject, text", DRIFTS, ids=[d[0] for d in DRIFTS])
def test_every_drift_fails_naming_the_layer(models, base_lock, variant, kind, subject, text):
    code, report = run_json("check", models / variant, "--against", base_lock)
    assert code == 1 and not report["ok"]
    match = [f for f in errors(report) if f["kind"] == kind and f["subject"] == subject]
    assert match, [(f["kind"], f["subject"]) for f in errors(report)]
    assert text in match[0]["message"] and subject.split("/")[0] in match[0]["message"]
    text_out = run("check", models / variant, "--against", base_lock)
    assert text_out.exit_code == 1 and "FAILED" in text_out.stdout and subject in text_out.stdout


def test_drift_details(models, base_lock):
    _, report = run_json("check", models / "reset_after.keras", "--against", base_lock)
    messages = [f["message"] for f in errors(report)]
    assert "layer bidi: forward bias shape (2, 24) → (24,)" in messages
    assert any("blocks removed: bU_z, bU_r, bU_h" in m for m in messages)
    _, report = run_json("check", models / "renamed.keras", "--against", base_lock)
    assert [f["kind"] for f in errors(report)] == ["layer-renamed"]  # nothing else: same shapes
    _, report = run_json("check", models / "added.keras", "--against", base_lock)
    assert {c["name"] for c in report["checks"] if not c["passed"]} == {"layer extra", "model"}


def test_changed_weight_value_fails_only_with_weights(models, tmp_path):
    lock = tmp_path / "base.h5.json"
    assert run("snapshot", models / "base.h5", "-o", lock).exit_code == 0
    changed = edited_copy(models / "base.h5", tmp_path / "changed.h5", "head/kernel",
                          lambda a: a.__setitem__((0, 0), a[0, 0] + 1))
    assert run("check", changed, "--against", lock).exit_code == 0
    code, report = run_json("check", changed, "--against", lock, "--weights")
    assert code == 1
    (finding,) = errors(report)
    assert finding["kind"] == "values" and finding["subject"] == "head" and "kernel" in finding["message"]
    assert finding["check"] == "weights"


def test_renamed_layer_in_a_keras1_file(tmp_path):
    """Rename a layer of a real Keras 1 file (group, layer_names, weight names, config) with h5py."""
    lock = tmp_path / "k1.json"
    assert run("snapshot", KERAS1_MODEL, "-o", lock).exit_code == 0
    renamed = tmp_path / "renamed.h5"
    shutil.copy(KERAS1_MODEL, renamed)
    os.chmod(renamed, 0o644)
    with h5py.File(renamed, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for entry in config["config"]:
            if entry["config"]["name"] == "lstm_1":
                entry["config"]["name"] = "encoder"
        f.attrs["model_config"] = json.dumps(config).encode()
        weights = f["model_weights"]
        weights.attrs["layer_names"] = np.array([b"encoder", b"dense_1"])
        weights.move("lstm_1", "encoder")
        group = weights["encoder"]
        old = [n.decode() for n in group.attrs["weight_names"]]
        new = ["encoder" + n[len("lstm_1"):] for n in old]
        for a, b in zip(old, new):
            group.move(a, b)
        group.attrs["weight_names"] = np.array([n.encode() for n in new])
    code, report = run_json("check", renamed, "--against", lock, "--weights")
    assert code == 1
    assert [(f["kind"], f["subject"]) for f in errors(report)] == [("layer-renamed", "encoder")]
    assert "lstm_1 renamed to encoder" in errors(report)[0]["message"]


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*") if p.suffix in (".h5", ".hdf5", ".keras")))
def test_corpus_snapshot_then_check(name, tmp_path):
    lock = tmp_path / "lock.json"
    result = run("snapshot", CORPUS / name, "-o", lock)
    assert result.exit_code == 0, result.stderr
    result = run("check", CORPUS / name, "--against", lock, "--weights", "--finite")
    assert result.exit_code == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------------
# exit code 2: unreadable input, malformed lock files, bad arguments

def test_unreadable_model_is_exit_2(models, base_lock, tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not a model")
    for args in (["check", junk, "--against", base_lock], ["check", tmp_path / "missing.h5", "--finite"],
                 ["snapshot", junk, "-o", tmp_path / "x.json"], ["diff", junk, models / "base.keras"],
                 ["diff", models / "base.keras", tmp_path / "missing.keras"]):
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("lstm-inspect: ") and "internal error" not in result.stderr
    assert not (tmp_path / "x.json").exists()


def _malformed_locks(base: dict) -> dict[str, str]:
    def variant(edit) -> str:
        data = json.loads(json.dumps(base))
        edit(data)
        return json.dumps(data)

    return {
        "not json": "{\"schema\": ",
        "empty": "",
        "a list": "[1, 2]",
        "binary": "\x00\xff\xfe",
        "other schema": variant(lambda d: d.update(schema="something-else")),
        "newer version": variant(lambda d: d.update(version=99)),
        "no version": variant(lambda d: d.pop("version")),
        "no layers": variant(lambda d: d.pop("layers")),
        "layer without weights": variant(lambda d: d["layers"][0].pop("weights")),
        "shape not ints": variant(lambda d: d["layers"][0]["weights"][0].update(shape=["5", 64])),
        "units a string": variant(lambda d: d["recurrent"][0].update(units="16")),
        "blocks not shapes": variant(lambda d: d["recurrent"][0]["blocks"].update(W_i="big")),
        "totals missing": variant(lambda d: d.pop("totals")),
        "deep nesting": "[" * 100000 + "]" * 100000,
    }


MALFORMED = ["not json", "empty", "a list", "binary", "other schema", "newer version", "no version", "no layers",
             "layer without weights", "shape not ints", "units a string", "blocks not shapes", "totals missing",
             "deep nesting"]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_lock_file_is_exit_2(models, base_lock, tmp_path, case):
    text = _malformed_locks(json.loads(base_lock.read_text()))[case]
    lock = tmp_path / "bad.json"
    lock.write_text(text, encoding="utf-8", errors="surrogateescape")
    result = run("check", models / "base.keras", "--against", lock)
    assert result.exit_code == 2, result.output
    assert str(lock) in result.stderr and "internal error" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_arguments_are_exit_2(models, base_lock, tmp_path):
    model = models / "base.keras"
    cases = [
        ["check", model],                                          # nothing to check
        ["check", model, "--weights", "--finite"],                 # --weights needs --against
        ["check", model, "--max-params", "lots"],
        ["check", model, "--against", tmp_path / "missing.json"],
        ["check", model, "--against", tmp_path],                   # a directory
        ["check", model, "--finite", "--format", "yaml"],
        ["diff", model, model, "--format", "html"],
    ]
    for args in cases:
        assert run(*args).exit_code == 2, args


# ------------------------------------------------------------------------------------------------
# --expect, --max-params

def test_expect_valid_expressions_hold(models):
    result = run("check", models / "base.keras", "-e", "lstm.units=16", "-e", "bidi/forward.kind=GRU",
                 "-e", "total_params<=2e6", "-e", "recurrent.count=3", "-e", "gru.reset_after=true",
                 "-e", "bidi.merge_mode=concat", "-e", "head.class=Dense", "-e", "lstm.gates=i,f,c,o",
                 "-e", "layers.count==3", "-e", "lstm.dtype=float32", "-e", "bidi/*.units=8",
                 "--max-params", "2707")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.startswith("ok: 12 checks hold")


def test_expect_false_expressions_fail_and_say_why(models):
    code, report = run_json("check", models / "base.keras", "-e", "lstm.units=128", "-e", "bidi/forward.kind=LSTM",
                            "-e", "total_params<1e3", "-e", "recurrent.count=2", "-e", "nosuch.units=3",
                            "-e", "lstm.units>=16", "--max-params", "2k")
    assert code == 1
    by_check = {c["name"]: c for c in report["checks"]}
    assert by_check["expect lstm.units>=16"]["passed"]
    failed = {c["name"]: c["findings"][0] for c in report["checks"] if not c["passed"]}
    assert failed["expect lstm.units=128"]["subject"] == "lstm"
    assert "units is 16, expected == 128" in failed["expect lstm.units=128"]["message"]
    assert failed["expect bidi/forward.kind=LSTM"]["actual"] == "GRU"
    assert failed["expect total_params<1e3"]["actual"] == 2707
    assert failed["expect recurrent.count=2"]["actual"] == 3
    assert "no layer or recurrent direction matches 'nosuch'" in failed["expect nosuch.units=3"]["message"]
    assert failed["max-params 2000"]["message"] == "2,707 params, more than the limit 2,000"


@pytest.mark.parametrize("expr", ["lstm.units 128", "lstm.unitz=3", "lstm.units=abc", "lstm.units=<3", "=3",
                                  "lstm.units=", "bogus<=3", "lstm.kind<3", "", ".units=3", "lstm.=3"])
def test_expect_malformed_expressions_are_exit_2(models, expr):
    result = run("check", models / "base.keras", "--expect", expr)
    assert result.exit_code == 2, result.output
    assert "--expect" in result.stderr and "internal error" not in result.stderr


# ------------------------------------------------------------------------------------------------
# --finite

def test_finite_names_the_gate_of_a_nan(models, tmp_path):
    def poison(kernel):  # LSTM kernel (5, 64): columns 16..31 are the forget gate
        kernel[2, 20] = np.nan
        kernel[4, 17] = np.inf

    bad = edited_copy(models / "base.h5", tmp_path / "nan.h5", "lstm_cell/kernel", poison)
    assert run("check", models / "base.h5", "--finite").exit_code == 0
    code, report = run_json("check", bad, "--finite")
    assert code == 1
    (finding,) = errors(report)
    assert finding["subject"] == "lstm" and finding["actual"] == 2
    assert "gate f (forget gate)" in finding["message"] and "W_f" in finding["message"]
    assert "1 NaN, 1 Inf" in finding["message"] and "kernel" in finding["message"]


def test_finite_in_keras1_per_gate_arrays_and_plain_layers(tmp_path):
    bad = edited_copy(KERAS1_MODEL, tmp_path / "nan_k1.h5", "lstm_1_U_o:0",
                      lambda a: a.__setitem__((3, 3), np.nan))
    with h5py.File(bad, "r+") as f:
        _dataset(f, "dense_1_b:0")[0] = np.inf
    code, report = run_json("check", bad, "--finite")
    assert code == 1
    messages = sorted(f["message"] for f in errors(report))
    assert any("gate o (output gate)" in m and "U_o" in m and "1 NaN" in m for m in messages), messages
    assert any(m.startswith("layer dense_1: 1 Inf of 1 values in tensor dense_1_b") for m in messages), messages


# ------------------------------------------------------------------------------------------------
# Output formats

def test_junit_report_has_one_testcase_per_check(models, base_lock):
    result = run("check", models / "units.keras", "--against", base_lock, "-e", "lstm.units=24",
                 "-e", "recurrent.count=2", "--finite", "--format", "junit")
    assert result.exit_code == 1
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert names == ["layer lstm", "layer bidi", "layer head", "model", "expect lstm.units=24",
                     "expect recurrent.count=2", "finite"]
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {"layer lstm", "layer bidi", "model", "expect recurrent.count=2"}
    assert int(suite.get("tests")) == 7 and int(suite.get("failures")) == 4
    assert "units 16 → 24" in failed["layer lstm"].text and failed["layer lstm"].get("message")
    assert all(c.get("classname").startswith("lstm-inspect.") for c in cases)


def test_junit_survives_hostile_names():
    nasty = "lay\x00er<&>\"\x1b[31m"
    report = CheckReport("m\x07.h5", (CheckResult(f"layer {nasty}", "against", (
        Finding.make("against", nasty, "units", f"{nasty}: units 1 → 2"),)),))
    root = ET.fromstring(ci_report.render_junit(report))
    case = root.find("testsuite/testcase")
    assert case.get("name").startswith("layer lay\ufffder<&>")
    assert case.find("failure") is not None


def test_github_annotations_follow_the_workflow_command_syntax(models, base_lock):
    result = run("check", models / "merge_sum.keras", "--against", base_lock, "--format", "github")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines and all(GITHUB_LINE.match(line) for line in lines), lines
    assert any(line.startswith("::error ") and "merge_mode concat → sum" in line for line in lines)
    ok = run("check", models / "base.keras", "--against", base_lock, "--format", "github")
    assert ok.exit_code == 0 and all(GITHUB_LINE.match(line) for line in ok.stdout.splitlines())
    assert ok.stdout.startswith("::notice ")


def test_github_escaping():
    assert ci_report.escape_data("50% a\r\nb") == "50%25 a%0D%0Ab"
    assert ci_report.escape_property("C:\\m,1%.h5\n") == "C%3A\\m%2C1%25.h5%0A"
    report = CheckReport("dir:with,odd%name\n.h5", (CheckResult("layer a:b,c", "against", (
        Finding.make("against", "a:b,c", "class", "line one\nline two: 100%"),
        Finding.make("against", "model", "format", "fmt", severity="warning"))),))
    lines = ci_report.render_github(report).splitlines()
    assert len(lines) == 2 and all(GITHUB_LINE.match(line) for line in lines)
    assert lines[0] == ("::error file=dir%3Awith%2Codd%25name%0A.h5,title=lstm-inspect layer a%3Ab%2Cc::"
                        "line one%0Aline two: 100%25")
    assert lines[1].startswith("::warning ")


def test_text_and_json_formats(models, base_lock):
    result = run("check", models / "added.keras", "--against", base_lock)
    assert result.exit_code == 1
    assert "layer extra (Dense, 12 params) added at position 4" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("FAILED: 2 of 5 checks")
    code, report = run_json("check", models / "added.keras", "--against", base_lock)
    assert report["summary"] == {"checks": 5, "failed": 2, "errors": 3, "warnings": 0}
    assert report["against"] == str(base_lock) and report["file"] == str(models / "added.keras")


# ------------------------------------------------------------------------------------------------
# diff

def test_diff_h5_and_keras_resave_is_identical(models):
    result = run("diff", models / "base.h5", models / "base.keras")
    assert result.exit_code == 0, result.stdout
    assert "identical structure" in result.stdout
    code, data = run_json("diff", models / "base.h5", models / "base.keras")
    assert code == 0 and data["identical_structure"] and data["findings"] == []
    assert [c["path"] for c in data["changes"]] == ["lstm", "bidi/forward", "bidi/backward"]
    for change in data["changes"]:
        for block in change["blocks"].values():
            assert block["norm_diff"] == 0.0 and block["relative"] == 0.0


def _numpy_blocks(weights: list[np.ndarray], gates: str, reset_after: bool = False) -> dict[str, np.ndarray]:
    kernel, recurrent, bias = weights
    units = recurrent.shape[0]
    out = {}
    for g, gate in enumerate(gates):
        cols = slice(g * units, (g + 1) * units)
        out[f"W_{gate}"], out[f"U_{gate}"] = kernel[:, cols], recurrent[:, cols]
        if reset_after:
            out[f"b_{gate}"], out[f"bU_{gate}"] = bias[0, cols], bias[1, cols]
        else:
            out[f"b_{gate}"] = bias[cols]
    return out


def test_diff_after_training_matches_numpy(models):
    code, data = run_json("diff", models / "base.keras", models / "trained.keras")
    assert code == 0 and data["identical_structure"]
    before, after = np.load(models / "weights_before.npz"), np.load(models / "weights_after.npz")

    def layer_weights(npz, layer: str, start: int) -> list[np.ndarray]:
        return [npz[f"{layer}/{k}"].astype(np.float64) for k in range(start, start + 3)]

    expected = {
        "lstm": (layer_weights(before, "lstm", 0), layer_weights(after, "lstm", 0), "ifco", False),
        "bidi/forward": (layer_weights(before, "bidi", 0), layer_weights(after, "bidi", 0), "zrh", True),
        "bidi/backward": (layer_weights(before, "bidi", 3), layer_weights(after, "bidi", 3), "zrh", True),
    }
    changes = {c["path"]: c for c in data["changes"]}
    assert set(changes) == set(expected)
    for path, (wa, wb, gates, reset_after) in expected.items():
        a, b = _numpy_blocks(wa, gates, reset_after), _numpy_blocks(wb, gates, reset_after)
        got = changes[path]["blocks"]
        assert set(got) == set(a)
        for name in a:
            norm_a, norm_diff = np.linalg.norm(a[name]), np.linalg.norm(b[name] - a[name])
            assert norm_diff > 0, (path, name)
            np.testing.assert_allclose(got[name]["norm_diff"], norm_diff, rtol=1e-6)
            if norm_a > 0:
                np.testing.assert_allclose(got[name]["relative"], norm_diff / norm_a, rtol=1e-6)
                assert got[name]["relative"] > 0
            else:  # Keras initialises biases to zero: the relative change is undefined, said clearly
                assert got[name]["relative"] is None and "||A|| = 0" in got[name]["note"]
        assert all(v > 0 for v in changes[path]["gate_change"].values())
    table = run("diff", models / "base.keras", models / "trained.keras")
    assert table.exit_code == 0 and "moved most:" in table.stdout and "inf (‖A‖=0" in table.stdout


def test_diff_of_different_structures_is_exit_1(models):
    result = run("diff", models / "base.keras", models / "reset_after.keras", "--format", "markdown")
    assert result.exit_code == 1
    assert "**Structure differs**" in result.stdout and "reset_after true → false" in result.stdout
    assert "### `lstm` — LSTM" in result.stdout  # the unchanged direction still gets its per-gate change
    code, data = run_json("diff", models / "base.keras", models / "renamed.keras")
    assert code == 1 and [f["kind"] for f in data["findings"]] == ["layer-renamed"]
    assert [(c["path"], c["path_b"]) for c in data["changes"]][0] == ("lstm", "encoder")


def test_the_test_process_never_imported_tensorflow():
    assert not {"tensorflow", "keras", "tf_keras"} & set(sys.modules)


def test_block_reads_in_row_slices_give_the_same_results(models, tmp_path, monkeypatch):
    bad = edited_copy(models / "base.h5", tmp_path / "nan.h5", "lstm_cell/recurrent_kernel",
                      lambda a: a.__setitem__((15, 63), np.nan))  # last row, output gate
    whole = (lockfile.diff_data(models / "base.h5", models / "trained.keras"),
             lockfile.snapshot_data(bad, finite=True)["nonfinite"])
    monkeypatch.setattr(lockfile, "CHUNK_BYTES", 24)
    sliced = (lockfile.diff_data(models / "base.h5", models / "trained.keras"),
              lockfile.snapshot_data(bad, finite=True)["nonfinite"])
    for a, b in zip(whole[0]["changes"], sliced[0]["changes"]):
        for name in a["blocks"]:
            for key in ("norm_a", "norm_diff"):
                np.testing.assert_allclose(a["blocks"][name][key], b["blocks"][name][key], rtol=1e-12)
    assert whole[1] == sliced[1] and [(r["block"], r["nan"]) for r in whole[1]] == [("U_o", 1)]
