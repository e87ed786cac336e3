"""Hand-built hostile files, the HDF5 crashers, NaN/Inf weights and Ctrl-C, through the real CLI.

Contract checked for every case and both commands (`summary`, `split-gates`): the exit code is the
expected one (never 3), a failure is one `lstm-inspect: ...` line on stderr without a traceback, no
guarded read crashes or times out (a timeout would mean something opened a FIFO), split-gates leaves
nothing behind on failure, nothing is written next to the input, and no canary file appears.
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lstm_inspect.safety import limits as safety

from ._harness import (
    GRACE,
    LOCAL_CRASHERS,
    ROOT,
    SHARED_CRASHERS,
    TIMEOUT,
    contract_problems,
    folder_listing,
    run_cli,
    run_split,
    split_problems,
)
from ..timing import cpu_seconds, machine_scale
from .conftest import (
    CANARY,
    CASES,
    SAMPLES,
    nan_inf_arrays,
    sample_config,
    write_keras,
    write_legacy,
)


def patch_limits(monkeypatch: pytest.MonkeyPatch, limits: dict) -> None:
    """Smaller budgets, as Keras's own tests do: the forked reader child inherits the patch."""
    monkeypatch.setattr(safety, "Limits", functools.partial(safety.Limits, **limits))
    monkeypatch.setattr(safety, "DEFAULT_LIMITS", safety.Limits(**limits))


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else []


def test_hostile_file(hostile_case, hostile_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = hostile_case
    path, folder = hostile_files[case.id]
    if case.limits:
        patch_limits(monkeypatch, case.limits)
    before = _listing(folder)
    problems = []
    res = run_cli(["summary", path])
    problems += [f"summary: {p}" for p in contract_problems(res, case.expect)]
    if res.crashed:
        problems.append(f"summary: the guarded read crashed or hung: {res.stderr.strip()}")
    if case.match:
        where = res.stdout if res.exit_code == 0 else res.stderr
        if not re.search(case.match, where):
            problems.append(f"summary: {case.match!r} not in {'stdout' if res.exit_code == 0 else 'stderr'}: "
                            f"{where[-500:]!r}")
    if res.exit_code == 0 and "\x1b" in res.stdout:
        problems.append("summary: a raw escape character reached stdout")
    if case.split:
        split, listing = run_split(path, tmp_path / "out")
        problems += [f"split-gates: {p}" for p in split_problems(split, listing, case.expect, tmp_path / "out")]
        if split.crashed:
            problems.append(f"split-gates: the guarded read crashed or hung: {split.stderr.strip()}")
    if (folder / CANARY).exists():
        problems.append("THE CANARY FILE WAS CREATED: code from the file ran")
    if _listing(folder) != before:
        problems.append(f"the input folder changed: {before} -> {_listing(folder)}")
    assert not problems, f"{case.id}: " + "; ".join(problems) + f"\nsummary: {res.describe()}"


def test_case_inventory() -> None:
    """About 150 hand-built cases over every category of the issue."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    assert len(CASES) >= 150
    categories = Counter(c.category for c in CASES)
    for needed in ("not a file", "wrong magic", "hdf5 links", "hdf5 external storage", "hdf5 virtual dataset",
                   "hdf5 bombs", "hdf5 cycles", "names", "inconsistent shapes", "hostile config values", "zip",
                   "code in files", "nan/inf weights"):
        assert categories[needed] > 0, needed


# ----------------------------------------------------------------------------------------------
# The crashers


def _crashers() -> list[Path]:
    found = sorted(SHARED_CRASHERS.glob("*.h5")) + sorted(p for p in LOCAL_CRASHERS.glob("*")
                                                          if p.is_file() and p.name != "README.md")
    return found


@pytest.mark.parametrize("crasher", _crashers(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_crasher_is_a_clean_error(crasher: Path, tmp_path: Path) -> None:
    res = run_cli(["summary", crasher])
    assert not contract_problems(res, (2,)), res.describe()
    assert res.seconds < TIMEOUT + GRACE
    split, listing = run_split(crasher, tmp_path / "out")
    assert not split_problems(split, listing, (2,)), split.describe()


def test_shared_crashers_present() -> None:
    if not SHARED_CRASHERS.exists():
        pytest.skip(f"{SHARED_CRASHERS} not found")
    assert len(list(SHARED_CRASHERS.glob("*.h5"))) == 4


def test_seed_is_the_crashers_origin(seeds) -> None:
    """The conftest's legacy seed is byte for byte the file the shared crashers were mutated from."""
    data = seeds["legacy"].read_bytes()
    assert len(data) == 12_720
    for crasher in sorted(SHARED_CRASHERS.glob("*.h5")):
        other = crasher.read_bytes()
        assert len(other) == len(data)
        assert 1 <= sum(a != b for a, b in zip(data, other)) <= 8, crasher.name


def test_local_crashers_have_readme_lines() -> None:
    files = [p.name for p in LOCAL_CRASHERS.glob("*") if p.is_file() and p.name != "README.md"]
    if not files:
        pytest.skip("no local crashers")
    readme = (LOCAL_CRASHERS / "README.md").read_text()
    for name in files:
        assert name in readme, f"{name} has no line in {LOCAL_CRASHERS / 'README.md'}"


# ----------------------------------------------------------------------------------------------
# NaN / Inf weights: a valid file, values exported bit for bit


def test_nan_inf_weights_split_exactly(tmp_path: Path) -> None:
    kernel, recurrent, bias = nan_inf_arrays()
    model = write_legacy(tmp_path / "naninf.h5", layers=[("lstm", [
        ("lstm/lstm_cell/kernel:0", kernel), ("lstm/lstm_cell/recurrent_kernel:0", recurrent),
        ("lstm/lstm_cell/bias:0", bias)])])
    res = run_cli(["summary", model])
    assert res.exit_code == 0, res.describe()
    split, listing = run_split(model, tmp_path / "out")
    assert split.exit_code == 0 and listing == ["gates.npz"], split.describe()
    with np.load(tmp_path / "out" / "gates.npz", allow_pickle=False) as npz:
        for g, gate in enumerate("ifco"):
            cols = slice(8 * g, 8 * (g + 1))
            for key, source in ((f"lstm/W_{gate}", kernel[:, cols]), (f"lstm/U_{gate}", recurrent[:, cols]),
                                (f"lstm/b_{gate}", bias[cols])):
                assert npz[key].tobytes() == np.ascontiguousarray(source).tobytes(), key


# ----------------------------------------------------------------------------------------------
# Code in files: reported, never run


LAMBDA_CASES = ["lambda-legacy-marshal-canary", "lambda-keras3-marshal-canary", "lambda-keras3-module-function",
                "config-entry-lambda-class-only"]


@pytest.mark.parametrize("case_id", LAMBDA_CASES)
def test_lambda_reported_as_unexecuted_code(case_id: str, hostile_files) -> None:
    path, folder = hostile_files[case_id]
    res = run_cli(["summary", "--format", "json", path])
    assert res.exit_code == 0, res.describe()
    assert not (folder / CANARY).exists()
    notes = json.loads(res.stdout)["notes"]
    assert any("(Lambda) contains serialized Python code: not executed" in n for n in notes), notes


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_lambda_note_shown_in_text_output(fmt: str, hostile_files) -> None:
    path, _ = hostile_files["lambda-keras3-marshal-canary"]
    res = run_cli(["summary", "--format", fmt, path])
    assert res.exit_code == 0, res.describe()
    assert "contains serialized Python code: not executed" in res.stdout


def test_custom_class_reported(tmp_path: Path) -> None:
    config = sample_config()
    config["config"]["layers"].append({"module": "my_package.layers", "class_name": "MyGate", "name": "mine",
                                       "registered_name": "Custom>MyGate", "inbound_nodes": [],
                                       "config": {"name": "mine", "trainable": True}})
    res = run_cli(["summary", "--format", "json", write_keras(tmp_path / "custom.keras", config=config)])
    assert res.exit_code == 0, res.describe()
    assert any("custom class Custom>MyGate" in n for n in json.loads(res.stdout)["notes"])


# ----------------------------------------------------------------------------------------------
# Guard overhead per file, through the CLI


def test_guard_overhead_through_the_cli() -> None:
    sample = SAMPLES / "lstm_classifier.h5"
    no_guard = {"LSTM_INSPECT_NO_GUARD": "1"}
    for _ in range(3):
        run_cli(["summary", sample]), run_cli(["summary", sample], env=no_guard)
    guarded, direct = [], []  # CPU seconds (this process and the reader child): steady on a loaded machine
    for _ in range(25):
        start = cpu_seconds()
        run_cli(["summary", sample])
        middle = cpu_seconds()
        run_cli(["summary", sample], env=no_guard)
        guarded.append(middle - start)
        direct.append(cpu_seconds() - middle)
    overhead = statistics.median(guarded) - statistics.median(direct)
    print(f"\nsummary {sample.name}: guarded {statistics.median(guarded) * 1000:.1f} ms, "
          f"in-process {statistics.median(direct) * 1000:.1f} ms of CPU, guard overhead {overhead * 1000:.1f} ms per file")
    assert overhead < 0.050 * machine_scale()


# ----------------------------------------------------------------------------------------------
# Exit-code contract: a bad timeout setting is a usage error


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_bad_timeout_setting_is_a_usage_error(value: str, tmp_path: Path) -> None:
    sample = SAMPLES / "lstm_classifier.h5"
    res = run_cli(["summary", sample], env={"LSTM_INSPECT_TIMEOUT": value})
    assert not contract_problems(res, (2,)), res.describe()
    assert "LSTM_INSPECT_TIMEOUT" in res.stderr
    split, listing = run_split(sample, tmp_path / "out", env={"LSTM_INSPECT_TIMEOUT": value})
    assert not split_problems(split, listing, (2,)), split.describe()


def test_timeout_setting_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hang is cut at LSTM_INSPECT_TIMEOUT seconds; an explicit timeout still wins."""
    from lstm_inspect.safety import guard
    from lstm_inspect.errors import GuardError

    monkeypatch.setenv(guard.TIMEOUT_ENV, "0.5")
    assert guard.default_timeout() == 0.5
    start = time.monotonic()
    with pytest.raises(GuardError, match="did not finish within 0.5 s"):
        guard.run_guarded(time.sleep, 30, label="slow.h5")
    assert time.monotonic() - start < 5
    with pytest.raises(GuardError, match="did not finish within 0.2 s"):
        guard.run_guarded(time.sleep, 30, label="slow.h5", timeout=0.2)
    monkeypatch.delenv(guard.TIMEOUT_ENV)
    assert guard.default_timeout() == 30.0


# ----------------------------------------------------------------------------------------------
# Exit-code contract: Ctrl-C -> 130, temporary files removed


def _big_legacy(path: Path, units: int, inputs: int) -> Path:
    rng = np.random.default_rng(3)
    kernel = rng.integers(0, 16, (inputs, 4 * units)).astype("f4")
    recurrent = rng.integers(0, 16, (units, 4 * units)).astype("f4")
    bias = np.zeros(4 * units, "f4")
    config = {"class_name": "Sequential", "config": {"layers": [
        {"class_name": "LSTM", "config": {"name": "lstm", "units": units}}]}}

    def gz(a):
        return lambda g, n: g.create_dataset(n, data=a, chunks=(min(64, a.shape[0]),) + a.shape[1:],
                                             compression="gzip", compression_opts=1, shuffle=True)
    return write_legacy(path, config=config, layers=[("lstm", [
        ("lstm/lstm_cell/kernel:0", gz(kernel)), ("lstm/lstm_cell/recurrent_kernel:0", gz(recurrent)),
        ("lstm/lstm_cell/bias:0", bias)])])


def test_ctrl_c_exits_130_and_removes_temporary_files(tmp_path: Path) -> None:
    """SIGINT while the guarded child is writing split-gates' temporary output."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), LSTM_INSPECT_TIMEOUT="120")
    env.pop("LSTM_INSPECT_NO_GUARD", None)
    for units in (1024, 2048, 3072):  # bigger input if the command finished before the signal
        model = _big_legacy(tmp_path / f"big{units}.h5", units, 512)
        proc = subprocess.Popen([sys.executable, "-m", "lstm_inspect", "split-gates", str(model), "-o",
                                 str(out / "gates.npz")], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in out.iterdir() if p.name.endswith(".partial")]
            if partial and partial[0].stat().st_size > 0:  # the child is writing it
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.002)
        _, stderr = proc.communicate(timeout=60)
        model.unlink()
        if proc.returncode == 0:  # finished before the signal: try a larger input
            (out / "gates.npz").unlink()
            continue
        assert proc.returncode == 130, (proc.returncode, stderr.decode())
        assert stderr.decode().splitlines() == ["lstm-inspect: interrupted"]
        assert folder_listing(out) == []
        return
    pytest.fail("split-gates always finished before SIGINT arrived")


# ----------------------------------------------------------------------------------------------
# A damaged stored member fails at once (its CRC), before libhdf5 can hang on it


KERAS_CRASHER = LOCAL_CRASHERS / "lstm_classifier_mutate_2000441_c70e0fedfc60.keras"


def test_damaged_stored_weights_fail_fast_with_crc_error() -> None:
    res = run_cli(["summary", KERAS_CRASHER])
    assert not contract_problems(res, (2,)), res.describe()
    assert "CRC-32" in res.stderr and res.seconds < 1.5, res.describe()
