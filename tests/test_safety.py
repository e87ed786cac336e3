"""Tests for lstm_inspect.safety: hostile HDF5, zip, JSON, paths and names, all built in tmp_path."""
from __future__ import annotations

import io
import os
import socket
import stat
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console

from lstm_inspect.errors import (CorruptModelError, InspectError, NotAModelError, UnsafeModelError,
                                 UnsupportedDialectError)
from lstm_inspect.safety.guard import run_guarded
from lstm_inspect.formats.sniff import Container, sniff
from lstm_inspect.safety.hdf5 import check_h5_structure, open_h5
from lstm_inspect.safety.jsonload import load_json
from lstm_inspect.safety.limits import Limits
from lstm_inspect.safety.text import escape_name
from lstm_inspect.safety.zipcheck import check_zip, read_member

MiB = 1 << 20


def _one_line(err: BaseException) -> None:
    assert "\n" not in str(err) and "\r" not in str(err)


# --- sniff --------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_sniff_recognises_containers(tmp_path: Path) -> None:
    h5 = tmp_path / "m.h5"
    with h5py.File(h5, "w") as f:
        f["x"] = np.arange(3)
    ub = tmp_path / "userblock.h5"
    with h5py.File(ub, "w", userblock_size=1024) as f:
        f["x"] = np.arange(3)
    with open(ub, "r+b") as fp:
        fp.write(b"#!user block text")
    zpath = tmp_path / "m.keras"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("config.json", "{}")
    empty_zip = tmp_path / "empty.zip"
    zipfile.ZipFile(empty_zip, "w").close()
    assert sniff(h5) is Container.HDF5
    assert sniff(str(ub)) is Container.HDF5
    assert sniff(zpath) is Container.ZIP
    assert sniff(empty_zip) is Container.ZIP
    assert sniff(_write(tmp_path / "m.weights.json", b" \n\t{\"weight_map\": {}}")) is Container.JSON
    assert sniff(_write(tmp_path / "bom.json", b"\xef\xbb\xbf{}")) is Container.JSON
    assert sniff(tmp_path) is Container.DIRECTORY


def test_sniff_follows_symlinks_only_to_files_and_directories(tmp_path: Path) -> None:
    target = _write(tmp_path / "t.json", b"{}")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "dirlink").symlink_to(tmp_path)
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifolink").symlink_to(tmp_path / "fifo")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert sniff(tmp_path / "link") is Container.JSON
    assert sniff(tmp_path / "dirlink") is Container.DIRECTORY
    with pytest.raises(NotAModelError, match="broken symbolic link"):
        sniff(tmp_path / "broken")
    with pytest.raises(NotAModelError, match="FIFO"):
        run_guarded(sniff, tmp_path / "fifolink", label="fifolink", timeout=5)
    with pytest.raises(NotAModelError, match="cannot read it"):
        sniff(tmp_path / "loop")


def test_sniff_refuses_special_files_without_opening_them(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Opening a FIFO for reading blocks until a writer appears: run it guarded so a bug times out.
    with pytest.raises(NotAModelError) as info:
        run_guarded(sniff, fifo, label=str(fifo), timeout=5)
    assert info.value.message == "is a FIFO (named pipe), not a model file"
    with pytest.raises(NotAModelError, match="character device"):
        sniff("/dev/zero")
    sockdir = tempfile.mkdtemp(prefix="li")  # AF_UNIX paths must be short
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.join(sockdir, "s"))
        with pytest.raises(NotAModelError, match="a socket"):
            sniff(os.path.join(sockdir, "s"))
    finally:
        sock.close()
        os.unlink(os.path.join(sockdir, "s"))
        os.rmdir(sockdir)


def test_sniff_refuses_missing_empty_and_large(tmp_path: Path) -> None:
    with pytest.raises(NotAModelError) as info:
        sniff(tmp_path / "missing.h5")
    assert info.value.message == "no such file" and info.value.file.endswith("missing.h5")
    with pytest.raises(NotAModelError, match="empty file"):
        sniff(_write(tmp_path / "empty.h5", b""))
    with pytest.raises(UnsafeModelError, match="over the 10 bytes limit"):
        sniff(_write(tmp_path / "big.h5", b"\x89HDF\r\n\x1a\n" + bytes(100)), Limits(max_file_bytes=10))


@pytest.mark.parametrize("data, name, hint", [
    (b"\x80\x04\x95\x10\x00\x00\x00\x00", "model.pkl", "pickle"),
    (b"\x08\x07\x12\x07pytorch", "model.onnx", "ONNX"),
    (b"\x08\x01\x12\x9c\x01\n", "saved_model.pb", "SavedModel"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "m.h5", "Git LFS pointer"),
    (b"<!DOCTYPE html><html>", "m.h5", "HTML page"),
    (b"\x93NUMPY\x01\x00v\x00{'descr'", "w.npy", "NumPy"),
    (b"hello world", "m.h5", ""),
])
def test_sniff_names_wrong_magic(tmp_path: Path, data: bytes, name: str, hint: str) -> None:
    with pytest.raises(NotAModelError) as info:
        sniff(_write(tmp_path / name, data))
    msg = info.value.message
    assert msg.startswith("not a model file") and hint in msg
    assert f"(starts with {data[0]:02x} {data[1]:02x}" in msg
    _one_line(info.value)


# --- HDF5 ---------------------------------------------------------------------------------------


def _keras_like(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = '{"class_name": "Sequential"}'
        f.attrs["keras_version"] = b"2.4.0"
        g = f.create_group("model_weights/lstm/lstm/lstm_cell")
        f["model_weights"].attrs["layer_names"] = np.array([b"lstm"])
        f["model_weights/lstm"].attrs["weight_names"] = np.array([b"lstm/lstm_cell/kernel:0"])
        g["kernel:0"] = np.ones((3, 16), dtype=np.float32)
        g.create_dataset("bias:0", data=np.zeros(16, np.float32), compression="gzip", shuffle=True)
        bf16 = g.create_dataset("bf16", data=np.zeros(4, np.uint16))
        bf16.attrs["dtype"] = "bfloat16"
        g["half"] = np.ones(4, np.float16)
        g["mask"] = np.array([True, False])
        g["names"] = np.array(["a", "bb"], dtype=h5py.string_dtype())
        g["scalar"] = 3
        g["lzf"] = np.zeros(100, np.float32)
        g.create_dataset("tiny_unwritten", shape=(10,), dtype="f4")  # stored size 0, under the ratio floor
        g["shared"] = g["half"]  # a second hard link to the same dataset is fine (not a cycle)
    return path


def test_keras_like_file_passes_and_plugins_are_disabled(tmp_path: Path) -> None:
    f = open_h5(_keras_like(tmp_path / "ok.h5"))
    try:
        assert f["model_weights/lstm/lstm/lstm_cell/kernel:0"].shape == (3, 16)
    finally:
        f.close()
    assert h5py.h5pl.size() == 0


def test_open_h5_accepts_file_objects_and_refuses_non_hdf5(tmp_path: Path) -> None:
    data = _keras_like(tmp_path / "ok.h5").read_bytes()
    with open_h5(io.BytesIO(data)) as f:
        assert "model_weights" in f
    with pytest.raises(CorruptModelError, match="cannot open it as an HDF5 file") as info:
        open_h5(_write(tmp_path / "bad.h5", b"\x89HDF\r\n\x1a\n" + bytes(100)))
    _one_line(info.value)


def test_open_h5_refuses_special_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.h5")
    with pytest.raises(NotAModelError, match="FIFO"):
        run_guarded(open_h5, str(tmp_path / "fifo.h5"), label="fifo.h5", timeout=5)
    with pytest.raises(NotAModelError, match="directory"):
        open_h5(tmp_path)


def _h5(tmp_path: Path, build) -> Path:
    path = tmp_path / "hostile.h5"
    with h5py.File(path, "w") as f:
        f.create_group("model_weights")
        build(f, tmp_path)
    return path


def _refused(path: Path, error: type, match: str, limits: Limits = Limits()) -> InspectError:
    with pytest.raises(error, match=match) as info:
        open_h5(path, limits)
    _one_line(info.value)
    assert info.value.file == str(path)
    return info.value


def test_external_link_refused(tmp_path: Path) -> None:
    def build(f, d):
        f["model_weights/ext"] = h5py.ExternalLink(str(d / "other.h5"), "/secret")
    _refused(_h5(tmp_path, build), UnsafeModelError, r"/model_weights/ext is an external link to .*other.h5:/secret")


def test_soft_link_refused(tmp_path: Path) -> None:
    def build(f, d):
        f["model_weights/soft"] = h5py.SoftLink("/model_weights")
    _refused(_h5(tmp_path, build), UnsafeModelError, "soft link to /model_weights")


def _check_file(path: str) -> None:
    open_h5(path).close()


def test_external_storage_refused_without_opening_it(tmp_path: Path) -> None:
    ext = tmp_path / "ext.bin"
    ext.write_bytes(bytes(40))

    def build(f, d):
        f.create_dataset("model_weights/x", shape=(10,), dtype="f4", external=[(str(ext), 0, 40)])
    path = _h5(tmp_path, build)
    ext.unlink()
    os.mkfifo(ext)  # if libhdf5 ever opened it, the read would block: the guard turns that into a timeout
    with pytest.raises(UnsafeModelError, match="external file"):
        run_guarded(_check_file, str(path), label=str(path), timeout=5)


def test_virtual_dataset_refused(tmp_path: Path) -> None:
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as s:
        s["data"] = np.arange(4, dtype="f4")

    def build(f, d):
        layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(src), "data", shape=(4,))
        f.create_virtual_dataset("model_weights/v", layout)
    _refused(_h5(tmp_path, build), UnsafeModelError, "virtual dataset")


def test_shape_bombs_refused(tmp_path: Path) -> None:
    def ratio_bomb(f, d):
        f.create_dataset("model_weights/bomb", shape=(64 * MiB,), dtype="f4", chunks=(4096,))  # no chunk written
    _refused(_h5(tmp_path, ratio_bomb), UnsafeModelError, r"declares 256 MiB but stores only 0 bytes")

    def huge(f, d):
        f.create_dataset("model_weights/huge", shape=(1 << 40,), dtype="f8", chunks=(4096,))
    _refused(_h5(tmp_path, huge), UnsafeModelError, r"declares 8 TiB, over the 8 GiB limit")


def test_hard_link_cycle_refused(tmp_path: Path) -> None:
    def build(f, d):
        f.create_group("model_weights/a/b")
        f["model_weights/a/b/loop"] = f["model_weights/a"]
    _refused(_h5(tmp_path, build), UnsafeModelError, "links back to its own ancestor")


def test_object_budget_and_depth(tmp_path: Path) -> None:
    def many(f, d):
        for i in range(20):
            f.create_group(f"model_weights/g{i}")
    _refused(_h5(tmp_path, many), UnsafeModelError, "more than 10 HDF5 objects", Limits(max_h5_objects=10))

    def deep(f, d):
        f.create_group("model_weights/" + "/".join(f"d{i}" for i in range(10)))
    path = _h5(tmp_path, deep)
    _refused(path, UnsafeModelError, "nested more than 5 deep", Limits(max_h5_depth=5))
    open_h5(path).close()


@pytest.mark.parametrize("dtype, error", [
    (h5py.ref_dtype, UnsafeModelError),
    (h5py.vlen_dtype(np.int32), UnsafeModelError),
    (np.dtype([("a", "f4"), ("b", "i4")]), UnsupportedDialectError),
    (np.complex64, UnsupportedDialectError),
    (h5py.opaque_dtype(np.dtype("V4")), UnsupportedDialectError),
])
def test_odd_dataset_types_refused(tmp_path: Path, dtype, error: type) -> None:
    def build(f, d):
        f.create_dataset("model_weights/odd", shape=(2,), dtype=dtype)
    _refused(_h5(tmp_path, build), error, "dataset /model_weights/odd has an unsupported data type")


def test_plugin_filter_refused(tmp_path: Path) -> None:
    def build(f, d):
        f.create_dataset("model_weights/z", shape=(100,), dtype="f4", chunks=(10,), compression=32015,
                         allow_unknown_filter=True)
    _refused(_h5(tmp_path, build), UnsupportedDialectError, "needs HDF5 filter 32015")


def test_attributes_checked(tmp_path: Path) -> None:
    def big(f, d):
        f["model_weights"].attrs["layer_names"] = np.zeros(2000, dtype="S8")
    _refused(_h5(tmp_path, big), UnsafeModelError, "attribute layer_names of /model_weights is 15.6 KiB, over",
             Limits(max_attribute_bytes=1000))

    def ref(f, d):
        f.attrs.create("where", f["model_weights"].ref, dtype=h5py.ref_dtype)
    _refused(_h5(tmp_path, ref), UnsafeModelError, "attribute where of / has an unsupported data type")

    def compound(f, d):
        f["model_weights"].attrs["c"] = np.zeros(1, dtype=[("a", "f4"), ("b", "i4")])
    _refused(_h5(tmp_path, compound), UnsupportedDialectError, "attribute c of /model_weights")

    def many(f, d):
        for i in range(5):
            f.attrs[f"a{i}"] = i
    _refused(_h5(tmp_path, many), UnsafeModelError, "more than 3 attributes", Limits(max_attributes=3))


def test_check_h5_structure_on_an_open_file(tmp_path: Path) -> None:
    path = _keras_like(tmp_path / "ok.h5")
    with h5py.File(path, "r") as f:
        check_h5_structure(f)
        with pytest.raises(UnsafeModelError):
            check_h5_structure(f, Limits(max_h5_objects=3))


# --- zip ----------------------------------------------------------------------------------------


def _zip(path: Path, members: list, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for member in members:
                zf.writestr(*member) if isinstance(member, tuple) else zf.writestr(member, b"data")
    return path


def _zip_refused(path: Path, error: type, match: str, limits: Limits = Limits()) -> None:
    with zipfile.ZipFile(path) as zf:
        with pytest.raises(error, match=match) as info:
            check_zip(zf, limits)
    _one_line(info.value)


def _patch(path: Path, fn) -> Path:
    data = bytearray(path.read_bytes())
    fn(data)
    path.write_bytes(bytes(data))
    return path


def _headers(data: bytearray, signature: bytes) -> list[int]:
    found, pos = [], data.find(signature)
    while pos >= 0:
        found.append(pos)
        pos = data.find(signature, pos + 1)
    return found


def test_normal_zip_passes_and_members_read(tmp_path: Path) -> None:
    path = _zip(tmp_path / "m.keras", [("config.json", b'{"a": 1}'), ("model.weights.h5", bytes(1000)),
                                       ("assets/", b"")])
    with zipfile.ZipFile(path) as zf:
        check_zip(zf)
        assert read_member(zf, "config.json") == b'{"a": 1}'
        with pytest.raises(CorruptModelError, match="'metadata.json' is missing"):
            read_member(zf, "metadata.json")


def test_zip_bombs_refused(tmp_path: Path) -> None:
    bomb = _zip(tmp_path / "bomb.zip", [("model.weights.h5", bytes(2 * MiB))])
    _zip_refused(bomb, UnsafeModelError, r"expands .* to 2 MiB \(a zip bomb\?\)")
    with zipfile.ZipFile(bomb) as zf, pytest.raises(UnsafeModelError):
        read_member(zf, "model.weights.h5")
    spread = _zip(tmp_path / "spread.zip", [(f"m{i}", bytes(512 * 1024)) for i in range(4)])
    _zip_refused(spread, UnsafeModelError, r"zip expands .* to 2 MiB")  # each member is under the floor
    _zip_refused(_zip(tmp_path / "many.zip", [f"m{i}" for i in range(5)]), UnsafeModelError,
                 "more than 3 members", Limits(max_zip_members=3))
    _zip_refused(_zip(tmp_path / "member.zip", [("m", bytes(200))]), UnsafeModelError,
                 "'m' is 200 bytes, over the 100 bytes limit", Limits(max_member_bytes=100))
    _zip_refused(_zip(tmp_path / "total.zip", [(f"m{i}", bytes(100)) for i in range(4)]), UnsafeModelError,
                 "zip expands to 400 bytes, over the 300 bytes limit", Limits(max_zip_total_bytes=300))


def test_overlapping_members_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "overlap.zip", [("a", os.urandom(2000)), ("b", os.urandom(2000))], zipfile.ZIP_STORED)

    def point_b_at_a(data: bytearray) -> None:
        central_b = _headers(data, b"PK\x01\x02")[1]
        struct.pack_into("<I", data, central_b + 42, 0)
    _zip_refused(_patch(path, point_b_at_a), UnsafeModelError, "overlaps other data")


@pytest.mark.parametrize("name, problem", [
    ("../x", r"contains a '\.\.' component"),
    ("assets/../../x", r"contains a '\.\.' component"),
    ("/etc/passwd", "is an absolute path"),
    ("assets\\x", "contains a backslash"),
    ("C:/x", "starts with a drive letter"),
])
def test_bad_member_names_refused(tmp_path: Path, name: str, problem: str) -> None:
    _zip_refused(_zip(tmp_path / "names.zip", [name]), UnsafeModelError, problem)


def test_nul_in_member_name_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "nul.zip", ["configXjson"])

    def nul(data: bytearray) -> None:
        data[:] = data.replace(b"configXjson", b"config\x00json")
    _zip_refused(_patch(path, nul), UnsafeModelError, "contains a NUL byte")


def test_duplicate_members_refused(tmp_path: Path) -> None:
    _zip_refused(_zip(tmp_path / "dup.zip", [("config.json", b"{}"), ("config.json", b'{"evil": 1}')]),
                 UnsafeModelError, "'config.json' appears twice")


def test_symlink_member_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("model.weights.h5")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    _zip_refused(_zip(tmp_path / "link.zip", [(info, "/etc/passwd")]), UnsafeModelError, "is a symbolic link")


def test_encrypted_member_refused(tmp_path: Path) -> None:
    path = _zip(tmp_path / "enc.zip", [("config.json", b"{}")])

    def encrypt_flag(data: bytearray) -> None:
        for pos in _headers(data, b"PK\x03\x04"):
            data[pos + 6] |= 1
        for pos in _headers(data, b"PK\x01\x02"):
            data[pos + 8] |= 1
    _patch(path, encrypt_flag)
    _zip_refused(path, UnsafeModelError, "is encrypted")
    with zipfile.ZipFile(path) as zf, pytest.raises(UnsafeModelError):
        read_member(zf, "config.json")


def test_unsupported_compression_refused(tmp_path: Path) -> None:
    _zip_refused(_zip(tmp_path / "bz.zip", [("m", b"x")], zipfile.ZIP_BZIP2), UnsupportedDialectError,
                 "compression method 12")


@pytest.mark.parametrize("declared, match", [(5, "damaged"), (100, "holds 11 bytes but its header says 100")])
def test_lying_size_header(tmp_path: Path, declared: int, match: str) -> None:
    path = _zip(tmp_path / "lie.zip", [("m", b"hello world")], zipfile.ZIP_STORED)

    def lie(data: bytearray) -> None:
        for pos in _headers(data, b"PK\x03\x04"):
            struct.pack_into("<I", data, pos + 22, declared)
        for pos in _headers(data, b"PK\x01\x02"):
            struct.pack_into("<I", data, pos + 24, declared)
    with zipfile.ZipFile(_patch(path, lie)) as zf:
        with pytest.raises(CorruptModelError, match=match) as info:
            read_member(zf, "m")
    _one_line(info.value)


# --- JSON ---------------------------------------------------------------------------------------


def test_load_json_valid() -> None:
    assert load_json(b'{"a": [1, 2.5, "x", null, true]}', "config.json") == {"a": [1, 2.5, "x", None, True]}
    assert load_json(b"\xef\xbb\xbf{}", "config.json") == {}
    assert load_json('{"units": 8}', "model_config") == {"units": 8}  # h5py may hand over a str


@pytest.mark.parametrize("data, error, match", [
    (b'{"a": 1, "a": 2}', UnsafeModelError, "config.json has a duplicate key 'a'"),
    (b'{"x": {"b": 1, "b": 1}}', UnsafeModelError, "duplicate key 'b'"),
    (b"[" * 100_000 + b"]" * 100_000, UnsafeModelError, "config.json is nested too deeply"),
    (b'{"a": NaN}', CorruptModelError, "config.json contains NaN"),
    (b'{"a": -Infinity}', CorruptModelError, "contains -Infinity"),
    (b'{"a": "\xff"}', CorruptModelError, "config.json is not valid UTF-8"),
    (b'{"a": 1,\n}', CorruptModelError, r"config.json is not valid JSON \(.* at line 2 column 1\)"),
    (b'{"a": ' + b"9" * 5000 + b"}", CorruptModelError, "config.json is not valid JSON"),
    (b"", CorruptModelError, "config.json is not valid JSON"),
])
def test_load_json_refuses(data: bytes, error: type, match: str) -> None:
    with pytest.raises(error, match=match) as info:
        load_json(data, "config.json")
    _one_line(info.value)


def test_load_json_limits() -> None:
    with pytest.raises(UnsafeModelError, match="over the 10 bytes limit"):
        load_json(b'{"a": "0123456789"}', "metadata.json", Limits(max_json_bytes=10))
    deep = b'{"a":' * 10 + b"1" + b"}" * 10
    with pytest.raises(UnsafeModelError, match="nested more than 5 levels"):
        load_json(deep, "config.json", Limits(max_json_depth=5))
    assert load_json(deep, "config.json", Limits(max_json_depth=10))


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, shown", [
    ("lstm/kernel:0", "lstm/kernel:0"),
    ("a\nb\tc\r", "a\\nb\\tc\\r"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # "[31m" is not markup: rich leaves it
    ("[bold]x[/bold]", "\\[bold]x\\[/bold]"),
    ("evil\u202etxt.h5", "evil\\u202etxt.h5"),
    ("café dense", "café dense"),
    (b"bad\xffbyte", "bad\\xffbyte"),
    ("\x00\x7f", "\\x00\\x7f"),
])
def test_escape_name(raw, shown: str) -> None:
    assert escape_name(raw) == shown


def test_escaped_names_print_literally_through_rich() -> None:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    name = "[red]x[/red]\x1b[2J\nnext"
    console.print(f"layer {escape_name(name)}")
    out = console.file.getvalue()
    assert out == "layer [red]x[/red]\\x1b[2J\\nnext\n"


def test_escape_name_truncates() -> None:
    assert escape_name("x" * 50, max_chars=10) == "x" * 10 + "…"
