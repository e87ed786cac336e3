"""Every real file in ../shared/corpus: totals and recurrent directions equal MANIFEST.tsv."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lstm_inspect import api
from lstm_inspect.cli import app

from .conftest import CORPUS, corpus_manifest

MANIFEST = corpus_manifest()
pytestmark = pytest.mark.skipif(not MANIFEST, reason="../shared/corpus is not present")


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_corpus_file_matches_manifest(row):
    result = CliRunner().invoke(app, ["summary", "--format", "json", str(CORPUS / row["file"])])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total_params"] == int(row["total_params"])
    assert sum(layer["params"] for layer in data["layers"]) == data["total_params"]
    found = ",".join(f"{d['kind']}:{d['units']}" for d in data["recurrent"])
    assert found == row["recurrent_directions(kind:units)"]
    expected_version = None if row["keras_version"] == "-" else row["keras_version"]
    assert data["keras_version"] == expected_version
    for d in data["recurrent"]:
        assert sum(d["block_params"].values()) == d["params"]


@pytest.mark.parametrize("row", MANIFEST, ids=[r["file"] for r in MANIFEST])
def test_blocks_concatenate_back_to_the_stored_weights(row):
    """Every stored recurrent weight is covered by blocks exactly once, bit for bit (non-cuDNN)."""
    with api.open_model(CORPUS / row["file"]) as model:
        for d in api.directions(model):
            if d.is_cudnn:
                continue
            by_source: dict[str, list] = {}
            for block in d.blocks:
                by_source.setdefault(block.source.location, []).append(block)
            for blocks in by_source.values():
                source = blocks[0].source.read()
                if len(blocks) == 1 and blocks[0].selection is Ellipsis:
                    np.testing.assert_array_equal(blocks[0].read(), source)
                    continue
                rows = {b.selection[0] if isinstance(b.selection[0], int) else None for b in blocks}
                if rows == {None}:
                    rebuilt = np.concatenate([b.read() for b in blocks], axis=-1)
                else:  # GRU reset_after bias: row 0 input side, row 1 recurrent side
                    rebuilt = np.stack([np.concatenate([b.read() for b in blocks if b.selection[0] == r])
                                        for r in sorted(rows)])
                assert rebuilt.dtype == source.dtype
                np.testing.assert_array_equal(rebuilt, source)


def test_keras1_gates_are_mapped_by_name():
    """Keras 1 lists gates i, c, f, o; the blocks must follow the names, not the order."""
    path = CORPUS / "dl4j__simple_lstm_tf_keras_1_model.h5"
    import h5py
    with h5py.File(path, "r", locking=False) as f, api.open_model(path) as model:
        (d,) = api.directions(model)
        group = f["model_weights/lstm_1"]
        for gate in "ifco":
            for kind in "WUb":
                np.testing.assert_array_equal(d.block(f"{kind}_{gate}").read(),
                                              group[f"lstm_1_{kind}_{gate}:0"][()])
        assert d.recurrent_activation == "hard_sigmoid"
        assert any("Keras 1" in c for c in d.corrections)


def test_cudnn_file_is_recognised_without_a_config():
    with api.open_model(CORPUS / "textgenrnn__textgenrnn_weights.hdf5") as model:
        dirs = api.directions(model)
    assert [d.class_name for d in dirs] == ["CuDNNLSTM", "CuDNNLSTM"]
    assert all(d.block("bU_f").shape == (128,) for d in dirs)
    assert all(any("cuDNN" in c for c in d.corrections) for d in dirs)
