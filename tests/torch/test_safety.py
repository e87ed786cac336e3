"""Hostile pickles: nothing from the file runs. Each payload (os.system, builtins.exec/eval/getattr,
subprocess.Popen, importlib, a __reduce__ to an arbitrary function, BUILD of a whitelisted class
with a dangerous or special state), in a zip data.pkl or a legacy stream, alone or inside a real state
dict, under pickle protocols 0/1/2/4/5, is refused with UnsafeModelError naming the global; an audit
hook in a separate process sees no import, no exec/compile, no process and no socket meanwhile."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lstm_inspect.errors import UnsafeModelError
from lstm_inspect.formats.torch.containers import read_torch

from . import builders

ROOT = Path(__file__).resolve().parents[2]
PAYLOADS = tuple(builders.evil_payloads(Path("/unused")))
TENSOR_PAYLOADS = {"build-tensor-dunder-state"}


def _cases() -> list:
    cases = []
    for container in builders.EVIL_CONTAINERS:
        for name in PAYLOADS:
            tensors = name in TENSOR_PAYLOADS or "nested" in container
            for protocol in ((1, 2, 4, 5) if tensors else (0, 2, 4, 5)):  # protocol 0 has text ids only
                cases.append(pytest.param(container, name, protocol, id=f"{container}-{name}-p{protocol}"))
    return cases


@pytest.mark.parametrize("container, name, protocol", _cases())
def test_hostile_pickle_is_refused(tmp_path: Path, container: str, name: str, protocol: int) -> None:
    path, refused = builders.evil_file(tmp_path, container, name, protocol)
    with pytest.raises(UnsafeModelError) as err:
        read_torch(path)
    message = str(err.value)
    assert refused in message and "\n" not in message, message
    assert message.startswith(str(path))
    assert not (tmp_path / builders.CANARY).exists()


def test_audit_hook_sees_nothing_run(tmp_path: Path) -> None:
    """In a fresh process: warm up on benign files, install an audit hook, read every hostile file."""
    paths = []
    for container in builders.EVIL_CONTAINERS:
        for name in PAYLOADS:
            paths.append(str(builders.evil_file(tmp_path, container, name, 2)[0]))
            paths.append(str(builders.evil_file(tmp_path, container, name, 4)[0]))
    benign = builders.save(builders.checkpoint(builders.Encoder()), tmp_path / "benign.pt")
    benign_legacy = builders.save(builders.Encoder(), tmp_path / "benign_legacy.pt", legacy=True)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(benign_legacy.read_bytes()[:-40])
    # a zip written by Python's zipfile, like the hostile ones (its names decode as cp437)
    handmade = builders.zip_with_pickle(tmp_path / "handmade.pt", builders.dumps(
        {"w": builders.tensor_v2(builders.storage_pid("0", 4, False), 0, (4,), (1,))}), {"0": bytes(16)})
    spec = {"warmup": [str(benign), str(benign_legacy), str(broken), str(handmade)], "paths": paths}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "tests.torch.audit_child", str(tmp_path / "spec.json"),
                           str(report_path)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["controls"] == {"exec": True, "import": True}, report["controls"]
    assert report["errors"] == {"UnsafeModelError": len(paths)}, report["errors"]
    assert report["violations"] == [], report["violations"][:5]
    assert not report["banned_loaded"], report["banned_loaded"]
    assert not (tmp_path / builders.CANARY).exists()
