"""Property tests through the real CLI.

- Round trip: random LSTM/GRU layers written with h5py, in the legacy `.h5` layout (with a model
  config) and the Keras 3 `.weights.h5` layout (without one) -> `summary --format json` reports the
  shapes the file holds and `split-gates` exports exactly the stored values, gate by gate.
- Corruption contract: random damage (overwrites, truncation, insertions, deletions, zeroed runs)
  of the three seeds (for the `.keras`, sometimes with its zip CRCs recomputed) -> exit 0, 1 or 2,
  one line on error, nothing left behind, and a successful split-gates leaves one sound archive.

Both are derandomized (the same examples on every run), so CI is reproducible; set
HOSTILE_HYPOTHESIS_EXAMPLES to explore more.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._harness import (
    contract_problems,
    fix_zip_crcs,
    run_cli,
    run_split,
    split_problems,
)
from .conftest import write_legacy

EXAMPLES = int(os.environ.get("HOSTILE_HYPOTHESIS_EXAMPLES", "0"))
SETTINGS = {"deadline": None, "derandomize": True, "database": None, "print_blob": True,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}

GATES = {"LSTM": "ifco", "GRU": "zrh"}
CELL = {"LSTM": "lstm_cell", "GRU": "gru_cell"}


@st.composite
def recurrent_layers(draw):
    kind = draw(st.sampled_from(["LSTM", "GRU"]))
    units = draw(st.integers(1, 12))
    inputs = draw(st.integers(1, 9))
    use_bias = draw(st.booleans())
    reset_after = kind == "GRU" and draw(st.booleans())
    dtype = draw(st.sampled_from(["f4", "f4", "f8", "f2"]))
    specials = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    layout = draw(st.sampled_from(["legacy", "keras3"]))
    name = draw(st.sampled_from(["lstm", "gru", "rnn_1", "layer with spaces", "ünïcode", "a.b-c"]))
    rng = np.random.default_rng(seed)
    n = len(GATES[kind])
    arrays = {"kernel": rng.standard_normal((inputs, n * units)).astype(dtype),
              "recurrent_kernel": rng.standard_normal((units, n * units)).astype(dtype)}
    if use_bias:
        arrays["bias"] = rng.standard_normal((2, n * units) if reset_after else (n * units,)).astype(dtype)
    if specials:  # NaN, infinities and signed zeros must survive bit for bit
        flat = arrays["kernel"].reshape(-1)
        flat[rng.integers(0, flat.size, 3)] = np.array([np.nan, np.inf, -0.0], dtype)
    return {"kind": kind, "units": units, "inputs": inputs, "use_bias": use_bias, "reset_after": reset_after,
            "arrays": arrays, "layout": layout, "name": name}


def _write(spec: dict, folder: Path) -> Path:
    kind, name, a = spec["kind"], spec["name"], spec["arrays"]
    keys = [k for k in ("kernel", "recurrent_kernel", "bias") if k in a]
    if spec["layout"] == "legacy":
        config = {"name": name, "units": spec["units"], "use_bias": spec["use_bias"], "return_sequences": False}
        if kind == "GRU":
            config["reset_after"] = spec["reset_after"]
        model_config = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
            {"class_name": kind, "config": config}]}}
        weights = [(f"{name}/{CELL[kind]}/{k}:0", a[k]) for k in keys]
        return write_legacy(folder / "model.h5", config=model_config, layers=[(name, weights)])
    path = folder / "model.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_group(f"layers/{kind.lower()}/vars").attrs["name"] = name
        group = f.create_group(f"layers/{kind.lower()}/cell/vars")
        group.attrs["name"] = f"{name}_cell"
        for i, k in enumerate(keys):
            group[str(i)] = a[k]
        f.create_group("vars")
    return path


def _expected_blocks(spec: dict) -> dict[str, np.ndarray]:
    u, a = spec["units"], spec["arrays"]
    out = {}
    for g, gate in enumerate(GATES[spec["kind"]]):
        cols = slice(g * u, (g + 1) * u)
        out[f"W_{gate}"] = a["kernel"][:, cols]
        out[f"U_{gate}"] = a["recurrent_kernel"][:, cols]
        if "bias" in a and a["bias"].ndim == 2:
            out[f"b_{gate}"], out[f"bU_{gate}"] = a["bias"][0, cols], a["bias"][1, cols]
        elif "bias" in a:
            out[f"b_{gate}"] = a["bias"][cols]
    return out


@settings(max_examples=EXAMPLES or 100, **SETTINGS)
@given(spec=recurrent_layers())
def test_round_trip_summary_and_split_agree(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = _write(spec, folder)
        res = run_cli(["summary", "--format", "json", model])
        assert res.exit_code == 0, res.describe()
        data = json.loads(res.stdout)
        (direction,) = data["recurrent"]
        expected = _expected_blocks(spec)
        assert direction["kind"] == spec["kind"]
        assert (direction["units"], direction["input_dim"]) == (spec["units"], spec["inputs"])
        assert direction["blocks"] == {k: list(v.shape) for k, v in expected.items()}
        assert data["total_params"] == sum(v.size for v in spec["arrays"].values())
        if spec["kind"] == "GRU" and spec["use_bias"]:
            assert direction["reset_after"] == spec["reset_after"]
        split, listing = run_split(model, folder / "out")
        assert split.exit_code == 0 and listing == ["gates.npz"], split.describe()
        with np.load(folder / "out" / "gates.npz", allow_pickle=False) as npz:
            path = direction["path"]
            keys = {k for k in npz.files if k != "__meta__"}
            assert keys == {f"{path}/{b}" for b in expected}, keys
            meta = json.loads(str(npz["__meta__"]))
            blocks = meta["directions"][path]["blocks"]
            for block, want in expected.items():
                got = npz[blocks[block]["key"]]
                assert got.dtype == want.dtype and got.shape == want.shape, block
                assert got.tobytes() == np.ascontiguousarray(want).tobytes(), block


DAMAGE = st.one_of(
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(b"")),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 256).map(lambda n: bytes(n))),
    st.tuples(st.just("zero-run"), st.floats(0, 1), st.integers(1, 512).map(lambda n: bytes(n))),
    st.tuples(st.just("ff-run"), st.floats(0, 1), st.integers(1, 64).map(lambda n: b"\xff" * n)),
)


def damage(data: bytes, ops: list) -> bytes:
    out = bytearray(data)
    for op, where, payload in ops:
        pos = min(int(where * len(out)), max(len(out) - 1, 0))
        if op in ("overwrite", "zero-run", "ff-run"):
            out[pos:pos + len(payload)] = payload
        elif op == "truncate":
            del out[pos:]
        elif op == "insert":
            out[pos:pos] = payload
        elif op == "delete":
            del out[pos:pos + len(payload)]
    return bytes(out)


@settings(max_examples=EXAMPLES or 300, **SETTINGS)
@given(seed_name=st.sampled_from(["legacy", "keras", "weights"]), ops=st.lists(DAMAGE, min_size=1, max_size=4),
       fix_crc=st.booleans())
def test_corruption_contract(seeds, seed_name: str, ops: list, fix_crc: bool) -> None:
    """`fix_crc`: a .keras whose zip CRCs are recomputed after the damage, so libhdf5 sees it."""
    source = seeds[seed_name]
    data = damage(source.read_bytes(), ops)
    if fix_crc and seed_name == "keras":
        data = fix_zip_crcs(data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / source.name
        model.write_bytes(data)
        res = run_cli(["summary", model])
        assert not contract_problems(res, (0, 1, 2)), res.describe()
        split, listing = run_split(model, folder / "out")
        assert not split_problems(split, listing, (0, 1, 2), folder / "out"), split.describe()
        assert sorted(p.name for p in folder.iterdir()) == sorted([model.name, "out"])
