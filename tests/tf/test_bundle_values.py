"""Every entry and every value of checkpoints TF wrote, against what TF's own reader returns."""
from __future__ import annotations

import os

import numpy as np
import pytest

from lstm_inspect.formats.tf import bundle as bundle_module
from lstm_inspect.formats.tf import crc32c as crc_module
from lstm_inspect.formats.tf.bundle import open_bundle

CHECKPOINTS = ["tf1_cells", "tf1_sharded", "keras3_nofit", "keras3_fit", "tf_keras_nofit", "tf_keras_fit",
               "tf_keras_shards", "tf_keras_savedmodel", "keras3_export"]


def listing(bundle) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {name: (e.dtype, e.shape) for name, e in bundle.entries.items()}


def truth_listing(case: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {v["name"]: (v["dtype"], tuple(v["shape"])) for v in case["variables"]}


def assert_same_values(bundle, zoo, variable: dict) -> None:
    name = variable["name"]
    if "strings" in variable:
        assert bundle.read_strings(name) == [bytes.fromhex(s) for s in variable["strings"]], name
        return
    ours, theirs = bundle.read(name), np.load(zoo.path(variable["npy"]))
    assert ours.shape == theirs.shape, name
    if variable["dtype"] == "bfloat16":  # TF's bits are saved as uint16; ours are widened to float32
        bits = ours.view(np.uint32)
        assert ours.dtype == np.float32 and np.array_equal(bits >> 16, theirs) and not (bits & 0xFFFF).any(), name
        return
    assert ours.dtype == theirs.dtype, (name, ours.dtype, theirs.dtype)
    assert ours.tobytes() == theirs.tobytes(), name


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_listing_equals_tf(tfzoo, case):
    truth = tfzoo.case(case)
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        assert listing(bundle) == truth_listing(truth)


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_values_bit_exact(tfzoo, case):
    truth = tfzoo.case(case)
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        for variable in truth["variables"]:
            assert_same_values(bundle, tfzoo, variable)
        assert bundle._verified  # the CRCs TF wrote were checked (and matched)


@pytest.mark.parametrize("case", ["tf1_cells", "tf_keras_shards"])
def test_pure_crc_fallback_matches_tf(tfzoo, case, monkeypatch):
    """The numpy/pure CRC-32C agrees with every checksum TF stored (not just with a C package)."""
    monkeypatch.setattr(bundle_module, "crc32c", crc_module._crc32c_pure)
    truth = tfzoo.case(case)
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        for variable in truth["variables"]:
            assert_same_values(bundle, tfzoo, variable)


def test_every_dtype_is_named_as_tf_names_it(tfzoo):
    from lstm_inspect.formats.tf.protos import DTYPE_NAMES

    assert {str(k): v for k, v in DTYPE_NAMES.items()} == tfzoo.truth["dtype_names"]


def test_partitioned_variables_are_assembled(tfzoo):
    truth = tfzoo.case("tf1_cells")
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        emb, wide = bundle.entries["emb/part"], bundle.entries["wide/part"]
        assert [s.start for s in emb.slices] == [(0, 0), (4, 0), (7, 0)]
        assert [s.length for s in emb.slices] == [(4, 6), (3, 6), (3, 6)]
        assert [s.start for s in wide.slices] == [(0, 0), (0, 3), (0, 6)]
        assert [s.length for s in wide.slices] == [(4, 3)] * 3
        assert bundle.entries["emb/part/Adam"].is_partitioned  # the optimizer slot is partitioned too
        assert bundle.extent("emb/part") is None
        assert not any(name.startswith("\x00") for name in bundle.entries)  # slice entries stay internal


def test_two_shards(tfzoo):
    truth = tfzoo.case("tf1_sharded")
    assert len(truth["data_files"]) == 2
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        assert bundle.header.num_shards == 2
        assert {e.shard for e in bundle.entries.values() if not e.slices} == {0, 1}


def test_string_tensors(tfzoo):
    truth = tfzoo.case("tf1_cells")
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        assert bundle.read_strings("types/strings") == [b"hello", b"", b"\x00\xff\x00", "grüß".encode(), b"x" * 300]
        assert bundle.read_strings("types/string_scalar") == [b"just one"]
        assert bundle.read_strings("types/string_empty_list") == []
        assert bundle.entries["types/strings"].is_string and bundle.extent("types/strings") is None
        with pytest.raises(bundle_module.UnsupportedDialectError, match="strings"):
            bundle.read("types/strings")


def test_row_reads_equal_slices_of_the_whole(tfzoo):
    truth = tfzoo.case("tf1_cells")
    name = "stack/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel"  # (8, 20)
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        whole = bundle.read(name)
        for selection in (3, -1, slice(1, 4), slice(None, None, 3), slice(6, 1, -2), slice(5, 5),
                          (slice(2, 6), slice(0, 20, 4)), (2, 7), (slice(1, 3), [0, 5]), [1, 3], whole[:, 0] > 0,
                          (Ellipsis, 2)):
            part = bundle.read(name, selection)
            assert np.array_equal(part, whole[selection]), selection
        with pytest.raises(IndexError):
            bundle.read(name, 8)
        bf16 = bundle.read("types/bf16")
        assert np.array_equal(bundle.read("types/bf16", slice(1, 3)), bf16[1:3])


def test_extent_points_at_the_stored_bytes(tfzoo):
    truth = tfzoo.case("tf1_sharded")
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        for variable in truth["variables"]:
            entry = bundle.entries[variable["name"]]
            where = bundle.extent(entry.name)
            if entry.slices or entry.is_string:
                assert where is None
                continue
            path, offset = where
            with open(path, "rb") as fh:
                fh.seek(offset)
                assert fh.read(entry.size) == np.load(tfzoo.path(variable["npy"])).astype("<f4").tobytes()
            assert os.path.basename(path) == truth["data_files"][entry.shard]


def test_v1_checkpoint(tfzoo):
    """TF 2.21 still writes V1 tables; its reader refuses partitioned V1 variables and float16, so the
    session's own values are the oracle for those (and for all of them)."""
    truth = tfzoo.case("tf1_v1")
    with open_bundle(tfzoo.path(truth["file"])) as bundle:
        assert bundle.format == "v1"
        assert {n: list(e.shape) for n, e in bundle.entries.items()} == truth["shapes"] | {"types/strings": [3]}
        assert {n: e.dtype for n, e in bundle.entries.items()} == truth["dtypes"]
        for name, rel in truth["session_values"].items():
            expected = np.load(tfzoo.path(rel))
            ours = bundle.read(name)
            assert ours.dtype == expected.dtype and ours.tobytes() == expected.tobytes(), name
        for name, strings in truth["session_strings"].items():
            assert bundle.read_strings(name) == [bytes.fromhex(s) for s in strings]
        for variable in truth["variables"]:
            if "tf_error" not in variable:
                assert_same_values(bundle, tfzoo, variable)
        assert bundle.entries["emb/part"].is_partitioned and not bundle.entries["types/i32"].is_partitioned
        assert bundle.extent("types/i32") is None
        assert np.array_equal(bundle.read("emb/part", slice(3, 5)), bundle.read("emb/part")[3:5])


def test_real_tf1_checkpoint(tfzoo):
    """The corpus checkpoint: a MultiRNNCell of two 128-unit LSTMCells (manifest), values as TF reads them."""
    from .conftest import CORPUS_PREFIX

    if not os.path.exists(f"{CORPUS_PREFIX}.index"):
        pytest.skip("shared corpus not present")
    truth = tfzoo.case("corpus/" + CORPUS_PREFIX.name)
    with open_bundle(CORPUS_PREFIX) as bundle:
        assert listing(bundle) == truth_listing(truth)
        for variable in truth["variables"]:
            assert_same_values(bundle, tfzoo, variable)
        cells = sorted(n for n in bundle.entries if n.endswith("lstm_cell/kernel") and "Adam" not in n)
        assert len(cells) == 2 and all("multi_rnn_cell/cell_" in n for n in cells)
        for name in cells:
            rows, columns = bundle.entries[name].shape
            assert columns == 4 * 128 and rows > 128
            assert bundle.entries[name.replace("kernel", "bias")].shape == (512,)


def test_reading_path_imports_no_framework(tfzoo, tmp_path):
    import subprocess
    import sys

    truth = tfzoo.case("tf_keras_savedmodel")
    script = (
        "import sys\n"
        "from lstm_inspect.formats.tf.bundle import open_bundle\n"
        "from lstm_inspect.formats.tf import protos\n"
        f"b = open_bundle({str(tfzoo.path(truth['dir']))!r})\n"
        "[b.read(n) for n, e in b.entries.items() if e.is_numeric]\n"
        "protos.parse_trackable_object_graph(b.read_strings(protos.OBJECT_GRAPH_KEY)[0])\n"
        f"protos.read_saved_model({str(tfzoo.path(truth['dir']))!r})\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tf_keras', 'torch', 'google.protobuf', 'onnx', 'flatbuffers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(bundle_module.__file__).rsplit("/lstm_inspect/", 1)[0])
    subprocess.run([sys.executable, "-c", script], check=True, env=env)


@pytest.mark.parametrize("case", ["tf1_cells", "keras3_fit"])
def test_the_general_entry_decoder_agrees(tfzoo, case, monkeypatch):
    """Plain entries take a one-pass decoder; the general one (used for anything unusual) gives the same."""
    truth = tfzoo.case(case)
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        fast = dict(bundle.entries)
    monkeypatch.setattr(bundle_module, "_plain_entry", lambda *args: None)
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        assert bundle.entries == fast
        assert listing(bundle) == truth_listing(truth)


def test_a_partial_read_verifies_the_entry_once(tfzoo, monkeypatch):
    """Row reads of a big tensor stream the whole entry through the CRC the first time only."""
    truth = tfzoo.case("tf1_cells")
    checked = []
    real = bundle_module.crc32c
    monkeypatch.setattr(bundle_module, "crc32c", lambda data, value=0: checked.append(len(data)) or real(data, value))
    name = "stack/rnn/multi_rnn_cell/cell_0/lstm_cell/kernel"
    with open_bundle(tfzoo.path(truth["prefix"])) as bundle:
        checked.clear()
        size = bundle.entries[name].size
        first = bundle.read(name, slice(0, 2))
        assert sum(checked) == size
        checked.clear()
        second = bundle.read(name, slice(2, 4))
        whole = bundle.read(name)
        assert sum(checked) == 0
        assert np.array_equal(np.concatenate([first, second]), whole[:4])
    with open_bundle(tfzoo.path(truth["prefix"]), check_crc=False) as bundle:
        checked.clear()
        bundle.read(name, slice(0, 2))
        bundle.read(name)
        assert sum(checked) == 0
