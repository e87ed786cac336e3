"""Tensor layouts and dtypes: every tensor of the file, by path, equals what torch loads, bit for bit
(views, shared storages, broadcast strides, scalars, empty tensors, float16/bfloat16/float8, ints,
bool, complex; protocols 2, 4 and 5; big-endian zips; compressed members; legacy storage views;
2017-era Python 2 module pickles)."""
from __future__ import annotations

import argparse
import collections
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lstm_inspect.errors import NotAModelError, UnsupportedDialectError
from lstm_inspect.formats.torch.containers import read_torch
from lstm_inspect.formats.torch.state import find_model_state
from lstm_inspect.formats.torch.unpickler import GlobalRef, ObjectStandIn

from . import builders, truth


def layouts_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    base = torch.randn(4, 6)
    shared = torch.arange(10.0)
    return {
        "base": base, "transposed": base.T, "strided": base[1:3, ::2], "flat_slice": base.view(-1)[5:9],
        "broadcast": torch.ones(3, 1).expand(3, 4), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
        "shared_a": shared, "shared_b": shared[2:], "column": base[:, 3],
        "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
    }


def dtypes_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(4)
    x = torch.randn(3, 5) * 4
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-8, 65504.0, 448.0, -57344.0])
    return {
        "f64": x.double(), "f32": x, "f16": x.half(), "bf16": x.bfloat16(), "bf16_specials": specials.bfloat16(),
        "f8e4m3": x.to(torch.float8_e4m3fn), "f8e5m2": x.to(torch.float8_e5m2),
        "f8e4m3_all": torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn),
        "f8e5m2_all": torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2),
        "i64": torch.arange(-5, 5), "i32": torch.arange(7, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8), "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]), "c64": torch.randn(3, dtype=torch.complex64),
        "c128": torch.randn(2, dtype=torch.complex128), "f16_t": x.half().T,
    }


def _check_all(path: Path, expected: dict, *, check_layout: bool = True) -> None:
    flat = truth.flatten(expected)
    with read_torch(path) as tf:
        found = tf.tensors()
        assert [p for p, _ in found] == [p for p, _ in flat]
        for (name, ref), (_, tensor) in zip(found, flat):
            truth.assert_same_tensor(ref, tensor, check_layout=check_layout, where=name)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_views_and_shared_storages(tmp_path: Path, legacy: bool, protocol: int) -> None:
    path = builders.save(layouts_dict(), tmp_path / "views.pt", legacy=legacy, protocol=protocol)
    _check_all(path, truth.load_trusted(path))
    with read_torch(path) as tf:
        refs = dict(tf.tensors())
        assert refs["shared_a"].storage_key == refs["shared_b"].storage_key
        assert refs["base"].storage_key == refs["strided"].storage_key == refs["transposed"].storage_key
        assert refs["base"].extent is not None and refs["transposed"].extent is None
        assert refs["broadcast"].stride == (1, 0) and refs["broadcast"].extent is None
        assert refs["base"].read(np.s_[1, 2:4]).tolist() == refs["base"].read()[1, 2:4].tolist()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_dtypes(tmp_path: Path, legacy: bool) -> None:
    expected = dtypes_dict()
    if legacy:  # the legacy writer knows typed storages only; torch refuses float8 and uint16 there
        expected = {k: v for k, v in expected.items() if not k.startswith("f8")}
    path = builders.save(expected, tmp_path / "dtypes.pt", legacy=legacy)
    _check_all(path, truth.load_weights_only(path))


def test_float8_decoding_covers_every_code(tmp_path: Path) -> None:
    """All 256 codes of both float8 formats, against torch's own float conversion (NaNs included)."""
    path = builders.save(dtypes_dict(), tmp_path / "f8.pt")
    with read_torch(path) as tf:
        refs = dict(tf.tensors())
        for name, dtype in (("f8e4m3_all", torch.float8_e4m3fn), ("f8e5m2_all", torch.float8_e5m2)):
            ours = refs[name].read()
            theirs = torch.arange(256, dtype=torch.uint8).view(dtype).float().numpy()
            assert ours.tobytes() == theirs.tobytes()


def test_safetensors_dtypes_and_metadata(tmp_path: Path) -> None:
    tensors = {k: v for k, v in dtypes_dict().items() if k != "c128" and not k.endswith("_t")}
    path = builders.save_safetensors(tensors, tmp_path / "d.safetensors", metadata={"format": "pt", "k": "v"})
    expected = truth.safetensors_state_dict(path)
    with read_torch(path) as tf:
        assert tf.kind == "safetensors" and tf.metadata["safetensors_metadata"] == {"format": "pt", "k": "v"}
        refs = dict(tf.tensors())
        assert sorted(refs) == sorted(expected)
        for name, tensor in expected.items():
            truth.assert_same_tensor(refs[name], tensor, where=name)


def test_big_endian_zip(tmp_path: Path) -> None:
    """A zip written on a big-endian machine (byteorder 'big', every storage byte-swapped): torch
    swaps on load, and so does the reader; no extent is offered for such bytes."""
    source = builders.save(dtypes_dict(), tmp_path / "le.pt")
    replacements = {"byteorder": b"big"}
    with read_torch(source) as tf:
        for _name, ref in tf.tensors():
            key = f"data/{ref.storage_key}"
            if key not in replacements:
                raw = np.frombuffer(zipfile.ZipFile(source).read(f"le/{key}"), ref._storage.dtype.stored)
                replacements[key] = raw.byteswap().tobytes()
    path = builders.replace_members(source, tmp_path / "be.pt", replacements)
    _check_all(path, truth.load_weights_only(path))
    with read_torch(path) as tf:
        assert tf.metadata["byteorder"] == "big"
        assert all(ref.extent is None for _name, ref in tf.tensors())


def test_compressed_members_and_any_archive_name(tmp_path: Path) -> None:
    source = builders.save(layouts_dict(), tmp_path / "src.pt")
    path = tmp_path / "repacked.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr("VADr_v6 folder/" + info.filename.split("/", 1)[1], zin.read(info.filename))
    _check_all(path, truth.load_weights_only(path))
    with read_torch(path) as tf:
        assert tf.metadata["archive"] == "VADr_v6 folder"
        assert all(ref.extent is None for _name, ref in tf.tensors())


def test_legacy_storage_views(tmp_path: Path) -> None:
    """Legacy persistent ids with view metadata (key, offset, size), as torch < 1.6 wrote for
    tensors on a slice of a storage: offsets are rebased on the root storage."""
    root = np.arange(24, dtype=np.float32)
    pid_a = ("storage", torch.FloatStorage, "root", "cpu", 24, ("view_a", 4, 12))
    pid_b = ("storage", torch.FloatStorage, "root", "cpu", 24, ("view_b", 10, 14))
    obj = collections.OrderedDict([("a", builders.tensor_v2(pid_a, 2, (2, 3), (3, 1))),
                                   ("b", builders.tensor_v2(pid_b, 0, (7, 2), (1, 7))),
                                   ("c", builders.tensor_v2(pid_a[:5] + (None,), 20, (4,), (1,)))])
    path = tmp_path / "views_legacy.pt"
    path.write_bytes(builders.legacy_stream(builders.dumps(obj), [("root", root.tobytes(), 4)]))
    expected = truth.load_weights_only(path)
    _check_all(path, expected, check_layout=False)
    with read_torch(path) as tf:
        refs = dict(tf.tensors())
        assert refs["a"].storage_offset == 4 + 2 and refs["b"].storage_offset == 10 and refs["c"].storage_offset == 20
        assert {r.storage_key for r in refs.values()} == {"root"}


def test_py2_module_pickle_matches_torch(tmp_path: Path) -> None:
    """The 2017 shape (Python 2 byte strings, copy_reg/__builtin__ names, a ('module', ...) persistent
    id, OrderedDict from [key, value] pairs, _rebuild_tensor v1, Parameter REDUCE + BUILD, CUDA
    storages): torch's full unpickler on the same bytes is the truth."""
    rng = np.random.default_rng(5)
    params = {"weight": rng.standard_normal((3, 4)).astype(np.float32),
              "bias": rng.standard_normal(3).astype(np.float32)}
    path = builders.py2_module_file(tmp_path / "linear2017.pt", "torch.nn.modules.linear", "Linear", params,
                                    {"in_features": 4, "out_features": 3, "training": True}, backend=False)
    module = truth.load_trusted(path)
    with read_torch(path) as tf:
        assert tf.kind == "torch-legacy"
        state = find_model_state(tf)
        assert state.source == "module" and list(state.state_dict) == ["weight", "bias"]
        for name, ref in state.state_dict.items():
            truth.assert_same_tensor(ref, module._parameters[name], where=name)


def test_py2_char_rnn_with_backend(tmp_path: Path) -> None:
    """The same shape with a user class in __main__ and the torch 0.3 `_backend` object: torch 2.13
    cannot load it (no such class), the reader gives the arrays that were written."""
    rng = np.random.default_rng(6)
    params = {f"{w}_l0": rng.standard_normal(shape).astype(np.float32)
              for w, shape in (("weight_ih", (12, 5)), ("weight_hh", (12, 4)), ("bias_ih", (12,)), ("bias_hh", (12,)))}
    path = builders.py2_module_file(tmp_path / "char_rnn.pt", "__main__", "CharRNN", params,
                                    {"mode": "GRU", "hidden_size": 4, "num_layers": 1, "training": False})
    with read_torch(path) as tf:
        state = find_model_state(tf)
        assert list(state.state_dict) == list(params)
        for name, array in params.items():
            assert state.state_dict[name].read().tobytes() == array.tobytes()
        (record,) = state.modules
        assert record.class_name == "__main__.CharRNN" and record.attributes["mode"] == "GRU"
        backend = tf.tree.attributes["_backend"]
        assert isinstance(backend, ObjectStandIn) and backend.qualname == "torch.nn.backends.thnn.THNNFunctionBackend"


def test_checkpoint_plain_data(tmp_path: Path) -> None:
    """argparse.Namespace as a dict, NumPy scalars decoded, NumPy arrays kept as inert data, sets,
    classes as names: the tree mirrors torch's full unpickling of the same file."""
    obj = {"args": argparse.Namespace(lr=0.1, hidden=8, name="run"), "best": np.float64(0.875),
           "count": np.int32(3), "mean": np.arange(3.0), "tags": {"a", "b"}, "kind": torch.nn.LSTM,
           "model": collections.OrderedDict(w=torch.ones(2))}
    path = builders.save(obj, tmp_path / "ckpt.pt")
    loaded = truth.load_trusted(path)
    with read_torch(path) as tf:
        tree = tf.tree
        assert tree["args"] == vars(loaded["args"])
        assert type(tree["best"]) is np.float64 and tree["best"] == loaded["best"]
        assert type(tree["count"]) is np.int32 and tree["count"] == 3
        mean = tree["mean"]
        assert isinstance(mean, ObjectStandIn) and mean.qualname == "numpy.ndarray"
        assert mean.state[4] == loaded["mean"].tobytes()  # (version, shape, dtype, fortran, raw bytes)
        assert tree["tags"] == {"a", "b"}
        assert tree["kind"] == GlobalRef("torch.nn.modules.rnn", "LSTM")
        truth.assert_same_tensor(tree["model"]["w"], loaded["model"]["w"])


def test_torchscript_constants_and_plain_attributes(tmp_path: Path) -> None:
    class Traced(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(3, 4)
            self.offset = torch.arange(6.0).reshape(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0] + self.offset.sum()

    torch.manual_seed(7)
    path = builders.save_script(Traced(), tmp_path / "traced.pt", trace_input=torch.randn(5, 2, 3))
    loaded = torch.jit.load(str(path))
    with read_torch(path) as tf:
        state = find_model_state(tf)
        assert list(state.state_dict) == list(loaded.state_dict())
        (constant,) = tf.constants
        truth.assert_same_tensor(constant, torch.arange(6.0).reshape(2, 3))
        assert [p for p, _ in state.other_tensors] == ["CONSTANTS.c0"]


@pytest.mark.parametrize("content, message", [
    (b"import torch\nfrom torch import nn\n\nclass Net(nn.Module):\n    pass\n", "Python source"),
    (b"# -*- coding: utf-8 -*-\n\"\"\"Model definition.\"\"\"\ndef build():\n    return 1\n", "Python source"),
    (b"<!DOCTYPE html>\n<html><head><title>404</title></head></html>", "HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 1234\n", "Git LFS pointer"),
    (b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.", "Python pickle, but not a PyTorch"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}", "not a PyTorch file"),
    (b"\x89HDF\r\n\x1a\n" + bytes(100), "HDF5"),
    (b"", "empty file"),
])
def test_not_a_model(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(NotAModelError, match=message) as err:
        read_torch(path)
    assert "\n" not in str(err.value)


def test_not_a_model_other_containers(tmp_path: Path) -> None:
    keras = tmp_path / "model.keras"
    with zipfile.ZipFile(keras, "w") as zf:
        zf.writestr("config.json", "{}")
    with pytest.raises(NotAModelError, match="Keras"):
        read_torch(keras)
    with pytest.raises(NotAModelError, match="directory"):
        read_torch(tmp_path)
    with pytest.raises(NotAModelError, match="no such file"):
        read_torch(tmp_path / "missing.pt")
    fifo = tmp_path / "fifo.pt"
    import os
    os.mkfifo(fifo)
    with pytest.raises(NotAModelError, match="not a regular file"):
        read_torch(fifo)
    tar = tmp_path / "old.tar"
    tar.write_bytes(bytes(257) + b"ustar" + bytes(300))
    with pytest.raises(NotAModelError, match="tar archive"):
        read_torch(tar)


def test_old_dialects_are_named(tmp_path: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:  # torch < 0.4 wrote this
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"data"))
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    with pytest.raises(UnsupportedDialectError, match="pre-0.4 tar format"):
        read_torch(tmp_path / "old.pt")
    with zipfile.ZipFile(tmp_path / "old_script.pt", "w") as zf:
        zf.writestr("model/model.json", "{}")
        zf.writestr("model/attributes.pkl", b"\x80\x02).")
    with pytest.raises(UnsupportedDialectError, match="torch < 1.4"):
        read_torch(tmp_path / "old_script.pt")
    torch.export.save(torch.export.export(torch.nn.LSTM(3, 4), (torch.randn(5, 2, 3),)), tmp_path / "p.pt2")
    with pytest.raises(UnsupportedDialectError, match="torch.export"):
        read_torch(tmp_path / "p.pt2")


def test_unsupported_tensors_are_named(tmp_path: Path) -> None:
    path = builders.save({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, tmp_path / "q.pt")
    with pytest.raises(UnsupportedDialectError, match="QInt8Storage.*quantized"):
        read_torch(path)
