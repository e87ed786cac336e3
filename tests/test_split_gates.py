"""`split-gates`: every exported block equals Keras's own weights, bit for bit; the output is atomic,
safe to load with allow_pickle=False, and cannot be escaped by hostile layer names."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lstm_inspect.commands import split as export
from lstm_inspect.cli import app

from .conftest import CORPUS, SAMPLES
from .zoo import legacy_h5

GATES = {"LSTM": "ifco", "ConvLSTM": "ifco", "GRU": "zrh", "SimpleRNN": ""}


def split(model: str | Path, out: Path, *args: str) -> dict[str, np.ndarray]:
    result = CliRunner().invoke(app, ["split-gates", str(model), "-o", str(out), "--force", *args])
    assert result.exit_code == 0, result.output
    with np.load(out, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def expected_blocks(kind: str, weights: list[np.ndarray], units: int) -> dict[str, np.ndarray]:
    """Keras's own get_weights() sliced by gate: the independent truth for the exported blocks."""
    gates = GATES[kind] or [""]
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if len(weights) > 2 else None
    out = {}
    for g, gate in enumerate(gates):
        cols = slice(g * units, (g + 1) * units)
        sfx = f"_{gate}" if gate else ""
        out[f"W{sfx}"] = kernel[..., cols]
        out[f"U{sfx}"] = recurrent[..., cols]
        if bias is not None and bias.ndim == 2:
            out[f"b{sfx}"], out[f"bU{sfx}"] = bias[0, cols], bias[1, cols]
        elif bias is not None:
            out[f"b{sfx}"] = bias[cols]
    return out


def load_ref(root: str, folder: str) -> list[np.ndarray]:
    files = sorted(Path(root, folder).glob("*.npy"), key=lambda p: int(p.stem))
    return [np.load(f, allow_pickle=False) for f in files]


def test_blocks_equal_keras_get_weights_bit_for_bit(all_zoo, tmp_path):
    checked = 0
    for entry in all_zoo:
        blocks = split(entry["_abs"], tmp_path / "out.npz")
        meta = json.loads(str(blocks.pop("__meta__")))
        paths = list(meta["directions"])
        if entry["framework"] == "tf_keras" and entry["dialect"] == "keras-weights-h5":
            # tf_keras .weights.h5 stores no layer names: directions come in saved order.
            assert len(paths) == len(entry["recurrent"])
        else:
            assert set(paths) == {d["path"] for d in entry["recurrent"]}
            paths = [d["path"] for d in entry["recurrent"]]
        for d, path in zip(entry["recurrent"], paths):
            ref = load_ref(entry["_root"], d["weights_dir"])
            mine = {k.rsplit("/", 1)[1]: v for k, v in blocks.items() if k.rsplit("/", 1)[0] == path}
            if d["class"].startswith("CuDNN"):
                continue  # checked against tf_keras's own conversion below
            want = expected_blocks(d["kind"], ref, d["units"])
            assert set(mine) == set(want), (entry["file"], d["path"])
            for name, value in want.items():
                assert mine[name].dtype == value.dtype, (entry["file"], d["path"], name)
                assert np.array_equal(mine[name], value), (entry["file"], d["path"], name)
            # ...and the blocks concatenate back to the original tensors.
            names = GATES[d["kind"]] or [""]
            sfx = [f"_{g}" if g else "" for g in names]
            assert np.array_equal(np.concatenate([mine[f"W{s}"] for s in sfx], axis=-1), ref[0])
            assert np.array_equal(np.concatenate([mine[f"U{s}"] for s in sfx], axis=-1), ref[1])
            if len(ref) > 2 and ref[2].ndim == 1:
                assert np.array_equal(np.concatenate([mine[f"b{s}"] for s in sfx]), ref[2])
            checked += 1
    assert checked > 100


def test_cudnn_blocks_equal_tf_keras_conversion(zoo_tf_keras, tmp_path):
    """tf_keras converts CuDNN weights into a plain LSTM / GRU(reset_after=True) when loading them;
    our de-scrambled blocks must be exactly those weights (LSTM biases as the sum b + bU)."""
    entries = [e for e in zoo_tf_keras if any(d["class"].startswith("CuDNN") for d in e["recurrent"])]
    assert entries
    for entry in entries:
        blocks = split(entry["_abs"], tmp_path / "cudnn.npz")
        paths = list(json.loads(str(blocks["__meta__"]))["directions"])  # saved order (see above)
        for d, path in zip(entry["recurrent"], paths):
            if not d["class"].startswith("CuDNN"):
                continue
            conv = load_ref(entry["_root"], d["converted_weights_dir"])
            want = expected_blocks(d["kind"], conv, d["units"])
            get = lambda n, p=path: blocks[f"{p}/{n}"]  # noqa: E731
            for gate in GATES[d["kind"]]:
                assert np.array_equal(get(f"W_{gate}"), want[f"W_{gate}"]), (entry["file"], gate)
                assert np.array_equal(get(f"U_{gate}"), want[f"U_{gate}"]), (entry["file"], gate)
                if d["kind"] == "LSTM":
                    np.testing.assert_array_equal(get(f"b_{gate}") + get(f"bU_{gate}"), want[f"b_{gate}"])
                else:
                    assert np.array_equal(get(f"b_{gate}"), want[f"b_{gate}"])
                    assert np.array_equal(get(f"bU_{gate}"), want[f"bU_{gate}"])
            # A plain np.split of the stored kernel has the right shapes and the wrong numbers.
            raw = load_ref(entry["_root"], d["weights_dir"])[0]
            assert not np.array_equal(raw[:, : d["units"]], get(f"W_{GATES[d['kind']][0]}"))


def test_real_cudnn_file_matches_the_reference_formula(tmp_path):
    path = CORPUS / "textgenrnn__textgenrnn_weights.hdf5"
    if not path.exists():
        pytest.skip("corpus not present")
    blocks = split(path, tmp_path / "t.npz")
    with h5py.File(path, "r") as f:
        kernel = f["rnn_1/rnn_1/kernel:0"][()]
        recurrent = f["rnn_1/rnn_1/recurrent_kernel:0"][()]
        bias = f["rnn_1/rnn_1/bias:0"][()]
    H, I = 128, 100
    for g, gate in enumerate("ifco"):
        block = kernel[:, g * H:(g + 1) * H]
        assert np.array_equal(blocks[f"rnn_1/W_{gate}"], block.reshape(H, I).T)
        assert np.array_equal(blocks[f"rnn_1/U_{gate}"], recurrent[:, g * H:(g + 1) * H].T)
        assert np.array_equal(blocks[f"rnn_1/b_{gate}"], bias[g * H:(g + 1) * H])
        assert np.array_equal(blocks[f"rnn_1/bU_{gate}"], bias[(4 + g) * H:(5 + g) * H])


def test_keras1_files_split_by_gate_name(tmp_path):
    written = legacy_h5.write_all(tmp_path / "legacy")
    for name, expect in written.items():
        blocks = split(tmp_path / "legacy" / name, tmp_path / f"{name}.npz")
        for d in expect["recurrent"]:
            for block, value in d["blocks"].items():
                assert np.array_equal(blocks[f"{d['path']}/{block}"], value), (name, d["path"], block)


def test_corpus_keras1_files_agree_with_manifest(tmp_path):
    for name, units, group in (("dl4j__simple_lstm_tf_keras_1_model.h5", 50, "lstm_1"),
                               ("dl4j__bidirectional_lstm_theano_1.h5", 10, "bidirectional_1"),
                               ("dl4j__simple_rnn_theano_1.h5", 6, "simplernn_1")):
        path = CORPUS / name
        if not path.exists():
            pytest.skip("corpus not present")
        blocks = split(path, tmp_path / "k1.npz")
        meta = json.loads(str(blocks.pop("__meta__")))
        assert all(d["units"] == units for d in meta["directions"].values())
        assert all(any("Keras 1" in c for c in d["corrections"]) for d in meta["directions"].values())
        with h5py.File(path, "r") as f:
            stored = sum(ds.size for ds in _datasets(f["model_weights"][group]))
        assert sum(v.size for v in blocks.values()) == stored


def _datasets(group: h5py.Group) -> list[h5py.Dataset]:
    out: list[h5py.Dataset] = []
    group.visititems(lambda _, obj: out.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_layer_filter_and_meta(zoo_keras3, tmp_path):
    entry = next(e for e in zoo_keras3 if e["model"] == "bidi_lstm" and e["dialect"] == "keras-zip")
    blocks = split(entry["_abs"], tmp_path / "b.npz", "--layer", "bidi")
    meta = json.loads(str(blocks["__meta__"]))
    assert sorted(meta["directions"]) == ["bidi/backward", "bidi/forward"]
    assert meta["source"]["sha256"] == export.file_sha256(entry["_abs"])
    assert meta["source"]["format"] == "keras-zip"
    assert meta["directions"]["bidi/forward"]["gates"] == ["i", "f", "c", "o"]
    assert "x @ W" in meta["math_layout"]
    result = CliRunner().invoke(app, ["split-gates", entry["_abs"], "-o", str(tmp_path / "n.npz"),
                                      "--layer", "nothing*"])
    assert result.exit_code == 2
    assert "no recurrent layer matches" in result.stderr
    assert not (tmp_path / "n.npz").exists()


def test_no_source_hash_leaves_the_blocks_and_drops_the_hash(tmp_path):
    sample = SAMPLES / "lstm_classifier.h5"
    hashed = split(str(sample), tmp_path / "h.npz")
    plain = split(str(sample), tmp_path / "p.npz", "--no-source-hash")
    assert json.loads(str(hashed["__meta__"]))["source"]["sha256"] == \
        hashlib.sha256(sample.read_bytes()).hexdigest()
    assert json.loads(str(plain["__meta__"]))["source"]["sha256"] is None
    assert sorted(hashed) == sorted(plain)
    for key in hashed:
        if key != "__meta__":
            assert hashed[key].tobytes() == plain[key].tobytes()


# --- output safety -------------------------------------------------------------------------------

def lstm_file(path: Path, layer_name: str = "lstm", units: int = 3, input_dim: int = 2, seed: int = 0) -> dict:
    """A legacy tf.keras-style weights-only LSTM file written with h5py (no Keras needed)."""
    rng = np.random.default_rng(seed)
    arrays = {"kernel": rng.standard_normal((input_dim, 4 * units)).astype(np.float32),
              "recurrent_kernel": rng.standard_normal((units, 4 * units)).astype(np.float32),
              "bias": rng.standard_normal(4 * units).astype(np.float32)}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer_name.encode()])
        f.attrs["keras_version"] = "2.3.0-tf"
        g = f.create_group(layer_name.replace("/", "_") or "_")
        names = [f"{layer_name}/lstm_cell/{k}:0" for k in arrays]
        g.attrs["weight_names"] = np.array([n.encode() for n in names])
        for n, a in zip(names, arrays.values()):
            g.create_dataset(n, data=a)
    return arrays


def test_existing_output_needs_force(tmp_path):
    model = tmp_path / "m.h5"
    lstm_file(model)
    out = tmp_path / "out.npz"
    out.write_bytes(b"precious")
    result = CliRunner().invoke(app, ["split-gates", str(model), "-o", str(out)])
    assert result.exit_code == 2
    assert "--force" in result.stderr
    assert out.read_bytes() == b"precious"
    assert split(model, out)["lstm/W_i"].shape == (2, 3)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    model = tmp_path / "m.h5"
    lstm_file(model)
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    from lstm_inspect.writers import npz as npzstream
    original = npzstream.NpzStreamWriter.add
    calls = {"n": 0}

    def failing_add(self, index, chunk):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated failure while writing the 3rd block")
        return original(self, index, chunk)

    monkeypatch.setattr(npzstream.NpzStreamWriter, "add", failing_add)
    result = CliRunner().invoke(app, ["split-gates", str(model), "-o", str(out), "--force"])
    assert result.exit_code in (2, 3)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "out.npz"]


def test_unreadable_dataset_leaves_nothing(tmp_path):
    """A dataset whose stored chunk is corrupt fails mid-write: no partial output remains."""
    model = tmp_path / "bad.h5"
    with h5py.File(model, "w") as f:
        f.attrs["layer_names"] = np.array([b"lstm"])
        g = f.create_group("lstm")
        names = ["lstm/lstm_cell/kernel:0", "lstm/lstm_cell/recurrent_kernel:0", "lstm/lstm_cell/bias:0"]
        g.attrs["weight_names"] = np.array([n.encode() for n in names])
        g.create_dataset(names[0], data=np.ones((2, 12), np.float32))
        g.create_dataset(names[1], data=np.ones((3, 12), np.float32), chunks=(3, 12), compression="gzip")
        g.create_dataset(names[2], data=np.ones(12, np.float32))
        offset = g[names[1]].id.get_chunk_info(0).byte_offset
    data = bytearray(model.read_bytes())
    data[offset:offset + 8] = b"\xff" * 8  # corrupt the deflate stream
    model.write_bytes(bytes(data))
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(app, ["split-gates", str(model), "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]


@pytest.mark.parametrize("hostile", ["..", "...", " ", "a\\..\\b", "x:y", "tab\there"])
def test_hostile_layer_names_cannot_escape(tmp_path, hostile):
    model = tmp_path / "m.h5"
    lstm_file(model, layer_name=hostile)
    out = tmp_path / "out.npz"
    blocks = split(model, out)
    with zipfile.ZipFile(out) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            assert not name.startswith("/") and "\\" not in name
            assert all(p not in ("", ".", "..") for p in parts), name
    assert len([k for k in blocks if k != "__meta__"]) == 12


def test_keys_are_unique_when_names_sanitise_alike():
    keys = export.unique_keys([export.sanitize_key("a:b", "W_i"), export.sanitize_key("a_b", "W_i")])
    assert len(set(keys)) == 2


# --- property: random sizes, both layouts --------------------------------------------------------

def _write_keras3_weights(path: Path, kind: str, kernel, recurrent, bias, **storage) -> None:
    with h5py.File(path, "w") as f:
        v = f.create_group(f"layers/{kind.lower()}/cell/vars")
        for i, a in enumerate((kernel, recurrent, bias)):
            v.create_dataset(str(i), data=a, **storage)
        f.create_group("vars")


def _write_legacy(path: Path, kind: str, kernel, recurrent, bias, **storage) -> None:
    layer = kind.lower()
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.encode()])
        g = f.create_group(layer)
        names = [f"{layer}/{layer}_cell/{n}:0" for n in ("kernel", "recurrent_kernel", "bias")]
        g.attrs["weight_names"] = np.array([n.encode() for n in names])
        for n, a in zip(names, (kernel, recurrent, bias)):
            g.create_dataset(n, data=a, **storage)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["LSTM", "GRU", "GRU_reset_after"]), units=st.integers(1, 9),
       input_dim=st.integers(1, 7), layout=st.sampled_from(["legacy", "keras3"]), seed=st.integers(0, 10**6),
       compressed=st.booleans())
def test_property_random_sizes_split_to_slices(tmp_path_factory, kind, units, input_dim, layout, seed,
                                               compressed):
    """Both copy paths: raw bytes of contiguous datasets, and HDF5 reads of compressed ones."""
    tmp = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(seed)
    n = 4 if kind == "LSTM" else 3
    kernel = rng.standard_normal((input_dim, n * units)).astype(np.float32)
    recurrent = rng.standard_normal((units, n * units)).astype(np.float32)
    bias = rng.standard_normal((2, n * units) if kind == "GRU_reset_after" else (n * units,)).astype(np.float32)
    base = kind.split("_")[0]
    path = tmp / ("m.h5" if layout == "legacy" else "m.weights.h5")
    storage = {"compression": "gzip"} if compressed else {}
    (_write_legacy if layout == "legacy" else _write_keras3_weights)(path, base, kernel, recurrent, bias,
                                                                     **storage)
    out = tmp / "out.npz"
    result = export.split_gates(path, out)
    with np.load(out, allow_pickle=False) as npz:
        blocks = {k.split("/")[-1]: npz[k] for k in npz.files if k != "__meta__"}
    assert set(blocks) == set(expected_blocks(base, [kernel, recurrent, bias], units))
    for name, value in expected_blocks(base, [kernel, recurrent, bias], units).items():
        assert np.array_equal(blocks[name], value), name
    assert len(result.keys) == len(blocks)


@pytest.mark.parametrize("target", [16 << 20, 200])
def test_many_rows_and_small_chunks(tmp_path, monkeypatch, target):
    """More rows than one pwritev takes (1024), and chunks of a few rows: still exact."""
    from lstm_inspect.writers import npz as npzstream
    monkeypatch.setattr(export, "row_chunks", lambda n, row, target=target: npzstream.row_chunks(n, row, target))
    rng = np.random.default_rng(7)
    kernel = rng.standard_normal((3001, 8)).astype(np.float32)
    recurrent = rng.standard_normal((2, 8)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    path = tmp_path / "wide.h5"
    _write_legacy(path, "LSTM", kernel, recurrent, bias)
    blocks = split(path, tmp_path / "wide.npz")
    for name, value in expected_blocks("LSTM", [kernel, recurrent, bias], 2).items():
        assert np.array_equal(blocks[f"lstm/{name}"], value), name
