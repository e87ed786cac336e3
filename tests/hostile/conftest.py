"""Seeds and ~150 hand-built hostile files, all made here with h5py, zipfile and json (no Keras).

Every hostile case is a `HostileCase`: a builder that writes the file(s) into its own folder, the exit
codes the CLI may give, an optional regex the one-line message (or, on success, stdout) must match,
and optionally smaller safety limits (patched into `lstm_inspect.safety.limits.Limits`, which the forked
reader child inherits). `pytest_generate_tests` parametrizes every test that asks for `hostile_case`.

Files that point at something dangerous point at a FIFO: if libhdf5 or the reader ever opened it, the
case would block until the guard's timeout, and the test fails on the timeout message.
"""
from __future__ import annotations

import codecs
import io
import json
import marshal
import os
import shutil
import socket
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ._harness import ROOT

SAMPLES = ROOT / "sample_models"
SAMPLE_KERAS = SAMPLES / "lstm_classifier.keras"
CANARY = "CANARY"  # a file that only hostile code would create, in each case's folder

# ----------------------------------------------------------------------------------------------
# Seeds


LEGACY_CONFIG = {"class_name": "Sequential",
                 "config": {"layers": [{"class_name": "LSTM", "config": {"name": "lstm", "units": 8}}]}}
LEGACY_WEIGHT_NAMES = ("lstm/lstm_cell/kernel:0", "lstm/lstm_cell/recurrent_kernel:0", "lstm/lstm_cell/bias:0")


def legacy_arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((4, 32)).astype("f4"), rng.standard_normal((8, 32)).astype("f4"),
            np.zeros(32, "f4")]


def seed_weights() -> list[tuple[str, Any]]:
    return list(zip(LEGACY_WEIGHT_NAMES, legacy_arrays()))


def _bytes_array(names: list) -> np.ndarray:
    items = [n.encode("utf-8", "surrogateescape") if isinstance(n, str) else n for n in names]
    return np.array(items, dtype=bytes)


def write_legacy(path: Path, *, config: Any = "default", layers: list | None = None,
                 layer_names: list | None = None, keras_version: Any = "2.15.0",
                 extra: Callable[[h5py.File], None] | None = None, **file_kw: Any) -> Path:
    """A legacy Keras 2 `model.save("x.h5")` file: model_config + model_weights/<layer>/<weight>.

    With the defaults this writes, byte for byte, the 12,720-byte LSTM file the hdf5-crashers were
    mutated from. `config`: a dict/list (JSON-encoded), a str/bytes/array (stored as is) or None.
    `layers`: [(layer_name, [(weight_name, array or callable(group, name))])].
    """
    layers = [("lstm", seed_weights())] if layers is None else layers
    with h5py.File(path, "w", **file_kw) as f:
        if keras_version is not None:
            f.attrs["keras_version"] = keras_version
        if isinstance(config, str) and config == "default":
            config = LEGACY_CONFIG
        if isinstance(config, (dict, list)):
            config = json.dumps(config)
        if config is not None:
            f.attrs["model_config"] = config
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = _bytes_array([n for n, _ in layers] if layer_names is None else layer_names)
        for lname, weights in layers:
            g = mw.create_group(lname)
            g.attrs["weight_names"] = _bytes_array([w for w, _ in weights])
            for wname, value in weights:
                parent = g
                parts = wname.split("/")
                for part in parts[:-1]:
                    parent = parent.require_group(part)
                if callable(value):
                    value(parent, parts[-1])
                else:
                    parent[parts[-1]] = value
        if extra is not None:
            extra(f)
    return path


def legacy_with_lstm(path: Path, **lstm_config: Any) -> Path:
    """The seed with the LSTM's config entries replaced (hostile config values)."""
    entry = {"class_name": "LSTM", "config": dict({"name": "lstm", "units": 8}, **lstm_config)}
    return write_legacy(path, config={"class_name": "Sequential", "config": {"layers": [entry]}})


def legacy_with_entry(path: Path, entry: Any, weights: bool = True) -> Path:
    """The seed whose single layer entry in model_config is `entry` (any JSON value)."""
    return write_legacy(path, config={"class_name": "Sequential", "config": {"layers": [entry]}},
                        layers=None if weights else [])


def k3_arrays(units: int = 16, inputs: int = 5, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"kernel": rng.standard_normal((inputs, 4 * units)).astype("f4"),
            "recurrent_kernel": rng.standard_normal((units, 4 * units)).astype("f4"),
            "bias": rng.standard_normal(4 * units).astype("f4"),
            "dense_kernel": rng.standard_normal((units, classes)).astype("f4"),
            "dense_bias": rng.standard_normal(classes).astype("f4")}


def write_k3_weights(target: Any, arrays: dict | None = None, *, names: bool = True,
                     extra: Callable[[h5py.File], None] | None = None) -> Any:
    """A Keras 3 `.weights.h5`: layers/<snake_class>/[cell/]vars/<i>, a `name` attribute per vars."""
    a = k3_arrays() if arrays is None else arrays
    with h5py.File(target, "w") as f:
        layers = f.create_group("layers")

        def var_group(path: str, name: str) -> h5py.Group:
            g = layers.require_group(path)
            if names:
                g.attrs["name"] = name
            return g
        var_group("input_layer/vars", "features")
        var_group("lstm/vars", "lstm")
        cell = var_group("lstm/cell/vars", "lstm_cell")
        for i, key in enumerate(("kernel", "recurrent_kernel", "bias")):
            if key in a:
                cell[str(i)] = a[key]
        dense = var_group("dense/vars", "classes")
        dense["0"], dense["1"] = a["dense_kernel"], a["dense_bias"]
        root_vars = f.create_group("vars")
        if names:
            root_vars.attrs["name"] = "lstm_classifier"
        if extra is not None:
            extra(f)
    return target


def k3_weights_bytes(**kw: Any) -> bytes:
    buf = io.BytesIO()
    write_k3_weights(buf, **kw)
    return buf.getvalue()


def sample_members() -> dict[str, bytes]:
    with zipfile.ZipFile(SAMPLE_KERAS) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def sample_config() -> dict:
    return json.loads(sample_members()["config.json"])


def keras_config_with_lstm(**lstm_config: Any) -> dict:
    config = sample_config()
    layer = next(entry for entry in config["config"]["layers"] if entry["class_name"] == "LSTM")
    layer["config"].update(lstm_config)
    return config


def write_keras(path: Path, *, config: Any = None, weights: bytes | None = None, metadata: Any = None,
                extra: list[tuple[str, bytes]] = (), omit: tuple[str, ...] = (),
                weights_compression: int = zipfile.ZIP_STORED) -> Path:
    """A `.keras` zip as Keras writes it (metadata.json, config.json, model.weights.h5 stored)."""
    members = sample_members()
    if config is not None:
        members["config.json"] = config if isinstance(config, bytes) else json.dumps(config).encode()
    if metadata is not None:
        members["metadata.json"] = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
    if weights is not None:
        members["model.weights.h5"] = weights
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            if name not in omit:
                method = weights_compression if name == "model.weights.h5" else zipfile.ZIP_STORED
                zf.writestr(name, members[name], compress_type=method)
        for name, data in extra:
            zf.writestr(name, data)
    return path


@dataclass
class ZipEntry:
    name: bytes
    data: bytes
    method: int = 0  # 0 stored, 8 deflated; others are only declared
    flags: int = 0
    external_attr: int = 0o644 << 16
    file_size: int | None = None  # lie about the sizes or the CRC
    crc: int | None = None
    offset_of: int | None = None  # central record points at another entry's local header


def raw_zip(entries: list[ZipEntry]) -> bytes:
    """A zip written byte by byte, so that names, flags, sizes and offsets can be anything."""
    out, central, offsets = bytearray(), bytearray(), []
    for e in entries:
        payload = e.data
        if e.method == 8:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = c.compress(e.data) + c.flush()
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        size = len(e.data) if e.file_size is None else e.file_size
        offsets.append(len(out))
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 0x21,
                           crc, len(payload), size, len(e.name), 0) + e.name + payload
        e._meta = (crc, len(payload), size)  # type: ignore[attr-defined]
    for i, e in enumerate(entries):
        crc, csize, size = e._meta  # type: ignore[attr-defined]
        offset = offsets[e.offset_of if e.offset_of is not None else i]
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x0314, 20, e.flags, e.method, 0, 0x21,
                               crc, csize, size, len(e.name), 0, 0, 0, 0, e.external_attr, offset) + e.name
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    return bytes(out + central + eocd)


def sample_entries() -> list[ZipEntry]:
    m = sample_members()
    return [ZipEntry(b"metadata.json", m["metadata.json"]), ZipEntry(b"config.json", m["config.json"]),
            ZipEntry(b"model.weights.h5", m["model.weights.h5"])]


def write_raw_keras(path: Path, entries: list[ZipEntry]) -> Path:
    path.write_bytes(raw_zip(entries))
    return path


@pytest.fixture(scope="session")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three damage seeds: the crashers' 12.7 KB legacy LSTM, the sample .keras, a .weights.h5."""
    d = tmp_path_factory.mktemp("seeds")
    legacy = write_legacy(d / "lstm_legacy.h5")
    keras = d / "lstm_classifier.keras"
    shutil.copyfile(SAMPLE_KERAS, keras)
    weights = write_k3_weights(d / "lstm_classifier.weights.h5")
    return {"legacy": legacy, "keras": keras, "weights": weights}


# ----------------------------------------------------------------------------------------------
# The hostile cases


@dataclass(frozen=True)
class HostileCase:
    id: str
    category: str
    build: Callable[[Path], Any] = field(repr=False)
    expect: tuple[int, ...] = (2,)
    match: str | None = None  # regex: in the error line, or in stdout when the exit is 0
    xfail: str | None = None  # a reader bug (outside guard/safety) that the lead will fix
    limits: dict | None = None  # smaller safety limits for this case
    split: bool = True  # also run split-gates and check nothing is left behind


CASES: list[HostileCase] = []


def case(id: str, category: str, **kw: Any) -> Callable:
    def register(build: Callable[[Path], Any]) -> Callable:
        CASES.append(HostileCase(id, category, build, **kw))
        return build
    return register


def add(id: str, category: str, build: Callable[[Path], Any], **kw: Any) -> None:
    CASES.append(HostileCase(id, category, build, **kw))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _make_fifos(*paths: Path) -> None:
    for p in paths:
        if p.exists() or p.is_symlink():
            p.unlink()
        os.mkfifo(p)


# --- not a regular file, or not a model at all ------------------------------------------------

NOT_A_MODEL = "not a model file|empty file|no such file|not a regular file|FIFO|character device|symbolic link|socket|directory|cannot read it"

case("empty-file", "not a file", match="empty file")(lambda d: _write(d / "empty.h5", b""))
case("missing-file", "not a file", match="no such file")(lambda d: d / "missing.h5")
case("empty-directory", "not a file", match="directory, but not an unzipped Keras model")(lambda d: d)
case("fifo", "not a file", match="FIFO")(lambda d: _fifo(d / "model.h5"))
case("fifo-keras-name", "not a file", match="FIFO")(lambda d: _fifo(d / "model.keras"))
case("dev-zero", "not a file", match="character device")(lambda d: "/dev/zero")
case("dev-null", "not a file", match="character device")(lambda d: "/dev/null")
case("dev-urandom", "not a file", match="character device")(lambda d: "/dev/urandom")


@case("symlink-to-dev-zero", "not a file", match="character device")
def _(d: Path) -> Path:
    (d / "model.h5").symlink_to("/dev/zero")
    return d / "model.h5"


@case("symlink-to-fifo", "not a file", match="FIFO")
def _(d: Path) -> Path:
    _fifo(d / "pipe")
    (d / "model.keras").symlink_to(d / "pipe")
    return d / "model.keras"


@case("symlink-loop", "not a file", match=NOT_A_MODEL)
def _(d: Path) -> Path:
    (d / "a.h5").symlink_to(d / "b.h5")
    (d / "b.h5").symlink_to(d / "a.h5")
    return d / "a.h5"


@case("symlink-to-itself", "not a file", match=NOT_A_MODEL)
def _(d: Path) -> Path:
    (d / "self.h5").symlink_to(d / "self.h5")
    return d / "self.h5"


@case("symlink-dangling", "not a file", match="broken symbolic link")
def _(d: Path) -> Path:
    (d / "gone.h5").symlink_to(d / "nowhere.h5")
    return d / "gone.h5"


@case("unix-socket", "not a file", match="socket")
def _(d: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "s.h5"))
    sock.close()  # the socket file stays
    return d / "s.h5"


@case("unreadable-file", "not a file", match="cannot read it|Permission|LSTM", expect=(0, 2))
def _(d: Path) -> Path:
    path = write_legacy(d / "locked.h5")
    path.chmod(0)  # root can still read it: then the file is simply fine
    return path


WRONG_MAGIC = {
    "random-bytes": bytes(range(256)) * 8,
    "text": b"this is not a model\n" * 20,
    "pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94.",
    "numpy-npy": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }" + b" " * 60 + b"\n",
    "gzip": b"\x1f\x8b\x08\x00" + bytes(40),
    "html-error-page": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
    "git-lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
    "gguf": b"GGUF\x03\x00\x00\x00" + bytes(64),
    "safetensors": struct.pack("<Q", 2) + b"{}",
    "tflite": b"\x1c\x00\x00\x00TFL3" + bytes(64),
    "bzip2": b"BZh91AY&SY" + bytes(30),
    "xz": b"\xfd7zXZ\x00" + bytes(30),
    "7z": b"7z\xbc\xaf\x27\x1c" + bytes(30),
    "tar": bytes(257) + b"ustar\x0000" + bytes(250),
    "json-array": b"[1, 2, 3]",
    "utf16-json": '{"weight_map": {}}'.encode("utf-16"),
    "hdf5-magic-only": b"\x89HDF\r\n\x1a\n",
    "hdf5-magic-then-zeros": b"\x89HDF\r\n\x1a\n" + bytes(4096),
    "hdf5-magic-then-junk": b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 16,
    "zip-magic-then-junk": b"PK\x03\x04" + bytes(range(256)) * 4,
    "zip-end-record-only": b"PK\x05\x06" + bytes(18),
    "single-byte": b"\x89",
    "nul-bytes": bytes(1024),
}
for _name, _data in WRONG_MAGIC.items():
    add(f"magic-{_name}", "wrong magic", lambda d, data=_data, name=_name: _write(d / f"{name}.h5", data))

add("magic-pickle-named-keras", "wrong magic",
    lambda d: _write(d / "model.keras", WRONG_MAGIC["pickle"]), match="pickle")


@case("hdf5-userblock-then-model", "wrong magic", expect=(0,), match="LSTM")
def _(d: Path) -> Path:
    """512 bytes of junk before a valid HDF5 file (a legal user block): read normally."""
    path = write_legacy(d / "userblock.h5", userblock_size=512)
    with open(path, "r+b") as fh:
        fh.write(b"#!/bin/sh\necho not executed\n".ljust(512, b"\0"))
    return path


# --- HDF5 links, external storage, virtual datasets (all pointing at FIFOs) --------------------

KERNEL = "lstm/lstm_cell/kernel:0"


def _legacy_replacing(d: Path, name: str, make: Callable[[h5py.Group, str, Path], None], *,
                      fifo: bool = True) -> Path:
    """The seed whose LSTM kernel is replaced by `make(group, name, target)`; target becomes a FIFO."""
    target = d / "pipe"
    arrays = legacy_arrays()
    weights = [(KERNEL, lambda g, n: make(g, n, target)),
               (LEGACY_WEIGHT_NAMES[1], arrays[1]), (LEGACY_WEIGHT_NAMES[2], arrays[2])]
    path = write_legacy(d / name, layers=[("lstm", weights)])
    if fifo:
        _make_fifos(target)
    return path


REFUSED = r"\(refused"
case("h5-external-link-weight-to-fifo", "hdf5 links", match="external link to .*pipe")(
    lambda d: _legacy_replacing(d, "ext.h5", lambda g, n, t: g.__setitem__(n, h5py.ExternalLink(str(t), "/data"))))
case("h5-external-link-to-dev-zero", "hdf5 links", match="external link to /dev/zero")(
    lambda d: _legacy_replacing(d, "ext0.h5", lambda g, n, t: g.__setitem__(n, h5py.ExternalLink("/dev/zero", "/x"))))


@case("h5-external-link-at-root-to-fifo", "hdf5 links", match="external link")
def _(d: Path) -> Path:
    path = write_legacy(d / "extroot.h5", extra=lambda f: f.__setitem__("zzz", h5py.ExternalLink(str(d / "pipe"), "/")))
    _make_fifos(d / "pipe")
    return path


@case("h5-external-link-to-itself", "hdf5 links", match="external link")
def _(d: Path) -> Path:
    path = d / "selfext.h5"
    return write_legacy(path, extra=lambda f: f["model_weights"].__setitem__("again", h5py.ExternalLink(str(path), "/")))


@case("h5-external-link-as-layer-group", "hdf5 links", match="external link")
def _(d: Path) -> Path:
    def extra(f: h5py.File) -> None:
        f["model_weights"].attrs["layer_names"] = _bytes_array(["lstm", "remote"])
        f["model_weights/remote"] = h5py.ExternalLink(str(d / "pipe"), "/model_weights/lstm")
    path = write_legacy(d / "extlayer.h5", extra=extra)
    _make_fifos(d / "pipe")
    return path


case("h5-soft-link-weight-inside", "hdf5 links", match="soft link")(
    lambda d: _legacy_replacing(d, "soft.h5", lambda g, n, t: g.__setitem__(
        n, h5py.SoftLink("/model_weights/lstm/lstm/lstm_cell/bias:0")), fifo=False))
case("h5-soft-link-dangling", "hdf5 links", match="soft link to /nowhere")(
    lambda d: _legacy_replacing(d, "dangle.h5", lambda g, n, t: g.__setitem__(n, h5py.SoftLink("/nowhere")), fifo=False))
case("h5-soft-link-to-parent-path", "hdf5 links", match="soft link")(
    lambda d: _legacy_replacing(d, "dots.h5", lambda g, n, t: g.__setitem__(n, h5py.SoftLink("../../..")), fifo=False))
case("h5-soft-link-to-root", "hdf5 links", match="soft link")(
    lambda d: write_legacy(d / "softroot.h5", extra=lambda f: f["model_weights/lstm"].__setitem__("up", h5py.SoftLink("/"))))


def _external_storage(target: str, nbytes: int = 4 * 32 * 4) -> Callable:
    def make(g: h5py.Group, n: str, _t: Path) -> None:
        g.create_dataset(n, shape=(4, 32), dtype="f4", external=[(target, 0, nbytes)])
    return make


case("h5-external-storage-fifo", "hdf5 external storage", match="external file")(
    lambda d: _legacy_replacing(d, "extstore.h5", lambda g, n, t: _external_storage(str(t))(g, n, t)))
case("h5-external-storage-dev-zero", "hdf5 external storage", match="external file")(
    lambda d: _legacy_replacing(d, "extzero.h5", _external_storage("/dev/zero"), fifo=False))
case("h5-external-storage-etc-passwd", "hdf5 external storage", match="external file")(
    lambda d: _legacy_replacing(d, "extpasswd.h5", _external_storage("/etc/passwd"), fifo=False))
case("h5-external-storage-many-segments", "hdf5 external storage", match="external file")(
    lambda d: _legacy_replacing(d, "extmany.h5", lambda g, n, t: g.create_dataset(
        n, shape=(4, 32), dtype="f4", external=[(str(t), i * 64, 64) for i in range(8)])))


def _virtual(source: str) -> Callable:
    def make(g: h5py.Group, n: str, _t: Path) -> None:
        layout = h5py.VirtualLayout(shape=(4, 32), dtype="f4")
        layout[:] = h5py.VirtualSource(source, "data", shape=(4, 32))
        g.create_virtual_dataset(n, layout, fillvalue=0)
    return make


case("h5-virtual-dataset-fifo", "hdf5 virtual dataset", match="virtual dataset")(
    lambda d: _legacy_replacing(d, "vds.h5", lambda g, n, t: _virtual(str(t))(g, n, t)))
case("h5-virtual-dataset-dev-zero", "hdf5 virtual dataset", match="virtual dataset")(
    lambda d: _legacy_replacing(d, "vdszero.h5", _virtual("/dev/zero"), fifo=False))
case("h5-virtual-dataset-self", "hdf5 virtual dataset", match="virtual dataset")(
    lambda d: _legacy_replacing(d, "vdsself.h5", _virtual("."), fifo=False))


# --- shape bombs, cycles, budgets, odd types -------------------------------------------------

case("h5-shape-bomb-kernel", "hdf5 bombs", match="declares .* over the")(
    lambda d: _legacy_replacing(d, "bomb.h5", lambda g, n, t: g.create_dataset(
        n, shape=(2**20, 2**20), dtype="f4", chunks=(64, 64)), fifo=False))
case("h5-shape-bomb-maxshape-unlimited", "hdf5 bombs", match="declares")(
    lambda d: _legacy_replacing(d, "bombmax.h5", lambda g, n, t: g.create_dataset(
        n, shape=(2**40, 32), maxshape=(None, 32), dtype="f4", chunks=(1, 32)), fifo=False))
case("h5-ratio-bomb-kernel", "hdf5 bombs", match="stores only")(
    lambda d: _legacy_replacing(d, "ratio.h5", lambda g, n, t: g.create_dataset(
        n, shape=(2048, 8192), dtype="f4", chunks=(64, 64)).__setitem__((slice(0, 64), slice(0, 64)), 1.0),
        fifo=False))
case("h5-shape-bomb-unread-side-dataset", "hdf5 bombs", match="declares")(
    lambda d: write_legacy(d / "side.h5", extra=lambda f: f.create_dataset(
        "junk", shape=(2**31, 2**20), dtype="f8", chunks=(16, 16))))
case("h5-attribute-over-limit", "hdf5 bombs", match="over the .* limit", limits={"max_attribute_bytes": 64})(
    lambda d: write_legacy(d / "bigattr.h5"))
case("h5-object-budget", "hdf5 bombs", match="more than 5 HDF5 objects", limits={"max_h5_objects": 5})(
    lambda d: write_legacy(d / "objects.h5"))
case("h5-attribute-count", "hdf5 bombs", match="more than 3 attributes", limits={"max_attributes": 3})(
    lambda d: write_legacy(d / "attrs.h5", extra=lambda f: [f.attrs.__setitem__(f"a{i}", i) for i in range(5)]))
case("h5-file-size-limit", "hdf5 bombs", match="over the .* limit", limits={"max_file_bytes": 4096})(
    lambda d: write_legacy(d / "size.h5"))
case("h5-dataset-size-limit", "hdf5 bombs", match="declares .* over the", limits={"max_dataset_bytes": 256})(
    lambda d: write_legacy(d / "dsize.h5"))


@case("h5-hard-link-cycle", "hdf5 cycles", match="hard-link cycle")
def _(d: Path) -> Path:
    return write_legacy(d / "cycle.h5", extra=lambda f: f["model_weights/lstm/lstm"].__setitem__(
        "loop", f["model_weights"]))


@case("h5-hard-link-to-root", "hdf5 cycles", match="hard-link cycle")
def _(d: Path) -> Path:
    return write_legacy(d / "rootcycle.h5", extra=lambda f: f["model_weights/lstm/lstm/lstm_cell"].__setitem__(
        "root", f["/"]))


@case("h5-hard-link-self", "hdf5 cycles", match="hard-link cycle")
def _(d: Path) -> Path:
    return write_legacy(d / "selfcycle.h5", extra=lambda f: f["model_weights/lstm"].__setitem__(
        "me", f["model_weights/lstm"]))


@case("h5-hard-link-alias-layer", "hdf5 cycles", expect=(0,), match="416")
def _(d: Path) -> Path:
    """Two names for one group is a DAG, not a cycle: fine (both layers listed)."""
    def extra(f: h5py.File) -> None:
        f["model_weights/alias"] = f["model_weights/lstm"]
    return write_legacy(d / "alias.h5", extra=extra)


@case("h5-deep-nesting", "hdf5 cycles", match="nested more than")
def _(d: Path) -> Path:
    def extra(f: h5py.File) -> None:
        g = f["model_weights"]
        for i in range(70):
            g = g.create_group(f"g{i}")
    return write_legacy(d / "deep.h5", extra=extra)


def _odd_kernel(dtype: Any) -> Callable:
    return lambda g, n, t: g.create_dataset(n, shape=(4, 32), dtype=dtype)


case("h5-reference-kernel", "hdf5 odd types", match="unsupported data type")(
    lambda d: _legacy_replacing(d, "ref.h5", _odd_kernel(h5py.ref_dtype), fifo=False))
case("h5-region-reference-kernel", "hdf5 odd types", match="unsupported data type")(
    lambda d: _legacy_replacing(d, "regref.h5", _odd_kernel(h5py.regionref_dtype), fifo=False))
case("h5-vlen-int-kernel", "hdf5 odd types", match="unsupported data type")(
    lambda d: _legacy_replacing(d, "vlen.h5", _odd_kernel(h5py.vlen_dtype(np.int32)), fifo=False))
case("h5-compound-kernel", "hdf5 odd types", match="unsupported data type")(
    lambda d: _legacy_replacing(d, "compound.h5", _odd_kernel(np.dtype([("a", "f4"), ("b", "i4")])), fifo=False))
case("h5-complex-kernel", "hdf5 odd types", match="unsupported data type")(
    lambda d: _legacy_replacing(d, "complex.h5", _odd_kernel("c8"), fifo=False))
case("h5-array-type-kernel", "hdf5 odd types", match="unsupported data type")(
    lambda d: _legacy_replacing(d, "arraytype.h5", _odd_kernel(np.dtype(("f4", (2,)))), fifo=False))
case("h5-reference-attribute", "hdf5 odd types", match="unsupported data type")(
    lambda d: write_legacy(d / "refattr.h5", extra=lambda f: f.attrs.create("r", f["model_weights"].ref,
                                                                              dtype=h5py.ref_dtype)))
case("h5-plugin-filter-kernel", "hdf5 odd types", match="needs HDF5 filter 32015")(
    lambda d: _legacy_replacing(d, "zstd.h5", lambda g, n, t: g.create_dataset(
        n, shape=(4, 32), dtype="f4", chunks=(4, 32), compression=32015, allow_unknown_filter=True), fifo=False))
case("h5-named-datatype-compound", "hdf5 odd types", match="unsupported data type")(
    lambda d: write_legacy(d / "named.h5", extra=lambda f: f.__setitem__("t", np.dtype([("a", "f4")]))))
case("h5-string-kernel", "hdf5 odd types", expect=(0, 2))(
    lambda d: _legacy_replacing(d, "strk.h5", lambda g, n, t: g.__setitem__(n, np.full((4, 32), b"abc")), fifo=False))
case("h5-bool-kernel", "hdf5 odd types", expect=(0, 2))(
    lambda d: _legacy_replacing(d, "boolk.h5", lambda g, n, t: g.__setitem__(n, np.ones((4, 32), bool)), fifo=False))
case("h5-empty-dataspace-kernel", "hdf5 odd types", match="kernel|cannot be read|shape")(
    lambda d: _legacy_replacing(d, "nullspace.h5", lambda g, n, t: g.__setitem__(n, h5py.Empty("f4")), fifo=False))
case("h5-scalar-kernel", "hdf5 odd types", match="kernel|shape")(
    lambda d: _legacy_replacing(d, "scalar.h5", lambda g, n, t: g.__setitem__(n, np.float32(1)), fifo=False))
case("h5-float16-weights", "hdf5 odd types", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "half.h5", layers=[("lstm", [(n, a.astype("f2")) for n, a in seed_weights()])]))
case("h5-int8-weights", "hdf5 odd types", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "int8.h5", layers=[("lstm", [(n, (a * 10).astype("i1")) for n, a in seed_weights()])]))
def _filtered(a: np.ndarray) -> Callable:
    return lambda g, k: g.create_dataset(k, data=a, compression="gzip", shuffle=True, fletcher32=True)


case("h5-gzip-shuffle-fletcher-weights", "hdf5 odd types", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "filters.h5", layers=[("lstm", [(n, _filtered(a)) for n, a in seed_weights()])]))
case("h5-superblock-v3", "hdf5 odd types", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "latest.h5", libver="latest"))


# --- names: not UTF-8, control characters, markup ---------------------------------------------

case("name-link-not-utf8", "names", match="not UTF-8")(
    lambda d: write_legacy(d / "badlink.h5", layers=[(b"\xff\xfe", seed_weights())]))
case("name-layer-names-not-utf8", "names", match="listed in layer_names but has no group")(
    lambda d: write_legacy(d / "badlist.h5", layer_names=[b"ls\xfftm"]))
case("name-weight-names-not-utf8", "names", match="named but missing")(
    lambda d: write_legacy(d / "badweight.h5", extra=lambda f: f["model_weights/lstm"].attrs.__setitem__(
        "weight_names", np.array([b"lstm/\xff\xfe/kernel:0"]))))
case("name-attribute-name-not-utf8", "names", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "badattrname.h5", extra=lambda f: f.attrs.create(b"\xff\xfe", 1)))
case("name-keras-version-not-utf8", "names", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "badversion.h5", keras_version=np.bytes_(b"2.\xff\xfe")))
case("name-model-config-not-utf8", "names", expect=(0, 2))(
    lambda d: write_legacy(d / "badconfig.h5", config=np.bytes_(json.dumps(LEGACY_CONFIG).encode().replace(
        b'"lstm"', b'"ls\xfftm"'))))
def _vlen_utf8(raw: bytes) -> np.ndarray:
    """A variable-length UTF-8 string attribute holding bytes that are not UTF-8 (h5py reads it back
    with surrogateescape, so the reader gets a str with lone surrogates)."""
    return np.array(raw, dtype=h5py.string_dtype("utf-8"))


case("name-vlen-config-not-utf8", "names", expect=(0, 2), match=r"ls\\xd1tm|not valid UTF-8|UnicodeEncodeError")(
    lambda d: write_legacy(d / "vlenconfig.h5", config=_vlen_utf8(json.dumps(LEGACY_CONFIG).encode().replace(
        b'"lstm"', b'"ls\xd1tm"'))))
case("name-vlen-keras-version-not-utf8", "names", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "vlenversion.h5", keras_version=_vlen_utf8(b"2.15\xff")))

case("name-ansi-keras-version-and-backend", "names", expect=(0,), match="LSTM")(
    lambda d: write_legacy(d / "ansiversion.h5", keras_version="2.15\x1b[2J\x1b[31m",
                           extra=lambda f: f.attrs.__setitem__("backend", "tf\x1b]0;pwned\x07")))


@case("name-k3-vars-name-not-utf8", "names", expect=(0,), match=r"classe\\xd1")
def _(d: Path) -> Path:
    """A vars group's `name` attribute that is not UTF-8 (found by mutation: once exit 3)."""
    def extra(f: h5py.File) -> None:
        f["layers/dense/vars"].attrs.create("name", _vlen_utf8(b"classe\xd1"))
    return write_k3_weights(d / "vname.weights.h5", extra=extra)


case("name-ansi-escape-layer", "names", expect=(0,), match=r"\\x1b\[31m")(
    lambda d: write_legacy(d / "ansi.h5", config={"class_name": "Sequential", "config": {"layers": [
        {"class_name": "LSTM", "config": {"name": "\x1b[31mred\x1b[0m", "units": 8}}]}},
        layers=[("\x1b[31mred\x1b[0m", seed_weights())]))
case("name-newline-and-markup-layer", "names", expect=(0,), match=r"\[bold\]x\[/bold\]\\n")(
    lambda d: write_legacy(d / "markup.h5", config={"class_name": "Sequential", "config": {"layers": [
        {"class_name": "LSTM", "config": {"name": "[bold]x[/bold]\nforged line", "units": 8}}]}},
        layers=[("[bold]x[/bold]\nforged line", seed_weights())]))
case("name-bidi-override-layer", "names", expect=(0,), match=r"\\u202e")(
    lambda d: write_legacy(d / "bidi.h5", config={"class_name": "Sequential", "config": {"layers": [
        {"class_name": "LSTM", "config": {"name": "abc\u202edcba", "units": 8}}]}},
        layers=[("abc\u202edcba", seed_weights())]))
case("name-path-traversal-layer", "names", expect=(0,), match="LSTM")(
    lambda d: legacy_with_lstm(d / "dotdot.h5", name="../../../../tmp/evil"))
case("name-huge-layer-name", "names", expect=(0,), match="…")(  # dense attribute storage: libver latest
    lambda d: write_legacy(d / "hugename.h5", libver="latest", config={"class_name": "Sequential", "config": {
        "layers": [{"class_name": "LSTM", "config": {"name": "n" * 1_000_000, "units": 8}}]}}))


# --- inconsistent shapes ----------------------------------------------------------------------

def _lstm_weights(kernel: Any, recurrent: Any, bias: Any = "default") -> list:
    arrays = legacy_arrays()
    out = [(LEGACY_WEIGHT_NAMES[0], kernel), (LEGACY_WEIGHT_NAMES[1], recurrent)]
    if bias is not None:
        out.append((LEGACY_WEIGHT_NAMES[2], arrays[2] if isinstance(bias, str) else bias))
    return out


def _shapes(d: Path, name: str, kernel: tuple, recurrent: tuple, bias: tuple | None = (32,), **kw: Any) -> Path:
    return write_legacy(d / name, layers=[("lstm", _lstm_weights(
        np.ones(kernel, "f4"), np.ones(recurrent, "f4"), None if bias is None else np.zeros(bias, "f4")))], **kw)


SHAPES = "kernel|recurrent|bias|units|gates|shape"
case("shape-recurrent-cols-disagree", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "a.h5", (4, 32), (8, 24)))
case("shape-kernel-cols-disagree", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "b.h5", (4, 24), (8, 32)))
case("shape-recurrent-not-square", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "c.h5", (4, 28), (7, 32)))
case("shape-bias-wrong-length", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "d.h5", (4, 32), (8, 32), (31,)))
case("shape-bias-2d", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "e.h5", (4, 32), (8, 32), (2, 32)))
case("shape-kernel-3d-recurrent-2d", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "f.h5", (3, 4, 32), (8, 32)))
case("shape-kernel-1d", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "g.h5", (32,), (8, 32)))
case("shape-zero-units", "inconsistent shapes", match=SHAPES)(
    lambda d: _shapes(d, "h.h5", (4, 0), (0, 0), (0,), config={"class_name": "Sequential", "config": {
        "layers": [{"class_name": "LSTM", "config": {"name": "lstm"}}]}}))
case("shape-config-units-not-weights", "inconsistent shapes", match="16 units but the weights hold 8")(
    lambda d: legacy_with_lstm(d / "units.h5", units=16))
case("shape-gru-config-lstm-weights", "inconsistent shapes", match=SHAPES)(
    lambda d: write_legacy(d / "gru.h5", config={"class_name": "Sequential", "config": {"layers": [
        {"class_name": "GRU", "config": {"name": "lstm", "units": 8}}]}}))
case("shape-only-kernel", "inconsistent shapes", match="expected kernel, recurrent_kernel and bias")(
    lambda d: write_legacy(d / "one.h5", layers=[("lstm", seed_weights()[:1])]))
case("shape-four-weights", "inconsistent shapes", match="expected kernel")(
    lambda d: write_legacy(d / "four.h5", layers=[("lstm", [("a", np.ones((4, 32), "f4")), ("b", np.ones((8, 32), "f4")),
                                                           ("c", np.ones(32, "f4")), ("d", np.ones(32, "f4"))])]))
case("shape-weight-named-but-missing", "inconsistent shapes", match="named but missing")(
    lambda d: write_legacy(d / "missing.h5", extra=lambda f: f["model_weights/lstm"].attrs.__setitem__(
        "weight_names", _bytes_array(list(LEGACY_WEIGHT_NAMES) + ["lstm/lstm_cell/ghost:0"]))))
case("shape-weight-name-is-a-group", "inconsistent shapes", match="named but missing")(
    lambda d: write_legacy(d / "wgroup.h5", extra=lambda f: f["model_weights/lstm"].attrs.__setitem__(
        "weight_names", _bytes_array(["lstm/lstm_cell"] + list(LEGACY_WEIGHT_NAMES[1:])))))
case("shape-layer-listed-but-missing", "inconsistent shapes", match="has no group")(
    lambda d: write_legacy(d / "nolayer.h5", layer_names=["lstm", "ghost"]))
case("shape-model-weights-is-a-dataset", "inconsistent shapes", match="model_weights is not a group|not a Keras")(
    lambda d: _model_weights_dataset(d / "mwds.h5"))
case("shape-100k-missing-layers", "inconsistent shapes", match="has no group")(
    lambda d: write_legacy(d / "manylayers.h5", libver="latest",
                           layer_names=[f"layer_{i}" for i in range(100_000)]))
case("shape-layer-names-int-array", "inconsistent shapes", match="has no group")(
    lambda d: write_legacy(d / "intnames.h5", extra=lambda f: f["model_weights"].attrs.__setitem__(
        "layer_names", np.arange(3))))
case("shape-nb-layers-huge", "inconsistent shapes", match="missing")(
    lambda d: _positional(d / "nb.h5", nb_layers=10**9))
case("shape-nb-layers-text", "inconsistent shapes", match="cannot be read|nb_layers|not")(
    lambda d: _positional(d / "nbtext.h5", nb_layers="many"))
case("shape-nb-params-huge", "inconsistent shapes", match="missing")(
    lambda d: _positional(d / "nbp.h5", nb_layers=1, nb_params=10**12))
case("shape-keras1-gate-mismatch", "inconsistent shapes", match="shape|expected")(
    lambda d: write_legacy(d / "k1.h5", config=None, layers=[("lstm_1", [
        (f"lstm_1_{k}_{g}", np.ones((4, 8) if k == "W" else (8, 8) if k == "U" else (8,), "f4")
         if not (k == "U" and g == "f") else np.ones((7, 8), "f4")) for g in "icfo" for k in "WUb"])]))


def _model_weights_dataset(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["model_config"] = json.dumps(LEGACY_CONFIG)
        f["model_weights"] = np.zeros(4)
    return path


def _positional(path: Path, nb_layers: Any, nb_params: Any = None) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = nb_layers
        g = f.create_group("layer_0")
        if nb_params is not None:
            g.attrs["nb_params"] = nb_params
        g["param_0"] = np.ones((4, 8), "f4")
    return path


@case("shape-k3-weights-recurrent-mismatch", "inconsistent shapes", match=SHAPES)
def _(d: Path) -> Path:
    a = k3_arrays()
    a["recurrent_kernel"] = np.ones((16, 60), "f4")
    return write_k3_weights(d / "bad.weights.h5", a)


@case("shape-keras-config-units-mismatch", "inconsistent shapes", match="8 units but the weights hold 16")
def _(d: Path) -> Path:
    return write_keras(d / "units.keras", config=keras_config_with_lstm(units=8))


@case("shape-keras-weights-missing-bias", "inconsistent shapes", expect=(0, 2))
def _(d: Path) -> Path:
    a = k3_arrays()
    del a["bias"]
    return write_keras(d / "nobias.keras", weights=k3_weights_bytes(arrays=a))


# --- hostile config values ---------------------------------------------------------------------

BAD_LSTM_VALUES: list[tuple[str, Any]] = [
    ("units", -1), ("units", 0), ("units", "12"), ("units", "8"), ("units", 1e308), ("units", 8.0),
    ("units", []), ("units", {}), ("units", True), ("units", 2**64), ("units", [8]),
    ("return_sequences", "yes"), ("return_sequences", 2), ("return_sequences", []),
    ("return_sequences", None), ("return_state", {}), ("go_backwards", "no"), ("stateful", "true"),
    ("use_bias", "false"), ("trainable", "no"), ("unroll", [True]),
    ("activation", 5), ("activation", []), ("activation", True), ("recurrent_activation", 0.5),
    ("name", 5), ("name", ["lstm"]), ("name", True),
]
for _key, _value in BAD_LSTM_VALUES:
    _id = f"config-{_key}-{json.dumps(_value)[:20]}".replace(" ", "")
    add(_id, "hostile config values", lambda d, k=_key, v=_value: legacy_with_lstm(d / "model.h5", **{k: v}),
        match=f"config value {_key}|{_key}|layer name")

OK_LSTM_VALUES: list[tuple[str, Any, str]] = [
    ("units", None, "LSTM"),
    ("name", "", "LSTM"),
    ("name", {}, "LSTM"),  # a falsy name is treated as a missing one: the default name is used
    ("recurrent_activation", {"class_name": 5}, "LSTM"),
    ("recurrent_activation", {"config": [1, 2]}, "LSTM"),
    ("activation", {"class_name": "x" * 5000}, "LSTM"),
    ("unknown_key", {"deep": [[[[1]]]]}, "LSTM"),
]
for _key, _value, _match in OK_LSTM_VALUES:
    _id = f"config-ok-{_key}-{json.dumps(_value)[:20]}".replace(" ", "")
    add(_id, "hostile config values", lambda d, k=_key, v=_value: legacy_with_lstm(d / "model.h5", **{k: v}),
        expect=(0,), match=_match)

BAD_ENTRIES: list[tuple[str, Any]] = [
    ("no-class-name", {"config": {"name": "lstm", "units": 8}}),
    ("class-name-number", {"class_name": 5, "config": {"name": "lstm", "units": 8}}),
    ("class-name-empty", {"class_name": "", "config": {"name": "lstm", "units": 8}}),
    ("class-name-object", {"class_name": {"module": "os"}, "config": {}}),
    ("config-null", {"class_name": "LSTM", "config": None}),
    ("config-string", {"class_name": "LSTM", "config": "units=8"}),
    ("config-number", {"class_name": "LSTM", "config": 8}),
    ("config-list", {"class_name": "LSTM", "config": [8]}),
    ("entry-string", "LSTM"),
    ("entry-null", None),
    ("entry-list", [{"class_name": "LSTM"}]),
    ("bidirectional-no-layer", {"class_name": "Bidirectional", "config": {"name": "bidi"}}),
    ("bidirectional-layer-string", {"class_name": "Bidirectional", "config": {"name": "bidi", "layer": "LSTM"}}),
    ("bidirectional-layer-config-list", {"class_name": "Bidirectional", "config": {
        "name": "bidi", "layer": {"class_name": "LSTM", "config": []}}}),
    ("bidirectional-merge-mode-number", {"class_name": "Bidirectional", "config": {
        "name": "bidi", "merge_mode": 5, "layer": {"class_name": "LSTM", "config": {"units": 8}}}}),
    ("rnn-cell-number", {"class_name": "RNN", "config": {"name": "rnn", "cell": 5}}),
    ("rnn-stacked-cells-string", {"class_name": "RNN", "config": {"name": "rnn", "cell": {
        "class_name": "StackedRNNCells", "config": {"cells": "LSTMCell"}}}}),
    ("rnn-cell-config-list", {"class_name": "RNN", "config": {"name": "rnn", "cell": {
        "class_name": "LSTMCell", "config": [8]}}}),
    ("time-distributed-layer-config-list", {"class_name": "TimeDistributed", "config": {
        "name": "td", "layer": {"class_name": "Dense", "config": []}}}),
    ("dense-units-string", {"class_name": "Dense", "config": {"name": "lstm", "units": "3"}}),
    ("embedding-output-dim-negative", {"class_name": "Embedding", "config": {"name": "lstm", "output_dim": -1}}),
    ("convlstm-kernel-size-string", {"class_name": "ConvLSTM2D", "config": {"name": "lstm", "filters": 8,
                                                                            "kernel_size": "3"}}),
    ("convlstm-kernel-size-mixed", {"class_name": "ConvLSTM2D", "config": {"name": "lstm", "filters": 8,
                                                                           "kernel_size": [3, "3"]}}),
    ("convlstm-strides-zero", {"class_name": "ConvLSTM2D", "config": {"name": "lstm", "filters": 8,
                                                                      "kernel_size": [3, 3], "strides": [0, 1]}}),
    ("convlstm-padding-number", {"class_name": "ConvLSTM2D", "config": {"name": "lstm", "filters": 8,
                                                                        "kernel_size": 3, "padding": 1}}),
    ("nested-model-layers-string", {"class_name": "Sequential", "config": {"name": "inner", "layers": "x"}}),
]
for _name, _entry in BAD_ENTRIES:
    add(f"config-entry-{_name}", "hostile config values",
        lambda d, e=_entry: legacy_with_entry(d / "model.h5", e), match="config|layer|class_name|object|not a")

OK_ENTRIES: list[tuple[str, Any, str]] = [
    ("lambda-class-only", {"class_name": "Lambda", "config": {"name": "lam"}}, "Lambda"),
    ("rnn-no-cells", {"class_name": "RNN", "config": {"name": "rnn", "cell": []}}, "RNN"),
    ("bidirectional-backward-number", {"class_name": "Bidirectional", "config": {
        "name": "bidi", "backward_layer": 5, "layer": {"class_name": "LSTM", "config": {"units": 8}}}},
     "Bidirectional"),
    ("batch-input-shape-negative", {"class_name": "LSTM", "config": {"name": "lstm", "units": 8,
                                                                     "batch_input_shape": [None, -5, 4]}}, "LSTM"),
    ("batch-input-shape-strings", {"class_name": "LSTM", "config": {"name": "lstm", "units": 8,
                                                                    "batch_input_shape": ["a", {}, []]}}, "LSTM"),
    ("build-config-list", {"class_name": "LSTM", "build_config": [1], "config": {"name": "lstm", "units": 8}}, "LSTM"),
    ("input-length-text", {"class_name": "LSTM", "config": {"name": "lstm", "units": 8, "input_dim": 4,
                                                           "input_length": "ten"}}, "LSTM"),
    ("os-system-class", {"module": "os", "class_name": "system", "config": {"name": "lstm", "command": "touch CANARY"},
                         "registered_name": "os>system"}, "system"),
    ("builtins-exec-class", {"module": "builtins", "class_name": "exec",
                             "config": {"name": "x", "source": "open('CANARY','w')"}}, "exec"),
]
for _name, _entry, _match in OK_ENTRIES:
    add(f"config-entry-{_name}", "hostile config values",
        lambda d, e=_entry: legacy_with_entry(d / "model.h5", e), expect=(0,), match=_match)

# Keras 3 functional graph entries whose nested values have the wrong type.
INBOUND_BAD: list[tuple[str, Any]] = [
    ("config-list", [{"args": [{"class_name": "__keras_tensor__", "config": [1, 2]}], "kwargs": {}}]),
    ("config-string", [{"args": [{"class_name": "__keras_tensor__", "config": "x"}], "kwargs": {}}]),
    ("args-dict", [{"args": {"a": 1}, "kwargs": {}}]),
    ("history-junk", [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": 5}}]}]),
    ("tf-keras-junk", [[["lstm", "x", {}, []]]]),
    ("number", 5),
]
for _name, _nodes in INBOUND_BAD:
    add(f"config-inbound-nodes-{_name}", "hostile config values",
        lambda d, n=_nodes: legacy_with_entry(d / "model.h5", {"class_name": "LSTM", "inbound_nodes": n,
                                                               "config": {"name": "lstm", "units": 8}}),
        expect=(0, 2))

MODEL_CONFIGS: list[tuple[str, Any, dict]] = [
    ("top-level-list", json.dumps([LEGACY_CONFIG]), {}),
    ("top-level-number", "5", {}),
    ("top-level-null", "null", {}),
    ("top-level-string", '"Sequential"', {}),
    ("top-level-empty-object", "{}", {}),
    ("layers-dict", json.dumps({"class_name": "Sequential", "config": {"layers": {"0": {}}}}), {}),
    ("config-100k-nested-lists", '{"class_name": "Sequential", "config": ' + "[" * 100_000 + "]" * 100_000 + "}",
     {"match": "nested"}),
    ("config-100k-wide-list", json.dumps({"class_name": "Sequential", "config": [[]] * 100_000}), {}),
    ("depth-500-in-unused-key", json.dumps({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "LSTM", "config": {"name": "lstm", "units": 8, "x": "@DEEP@"}}]}}).replace(
        '"@DEEP@"', "[" * 500 + "]" * 500), {"match": "nested"}),
    ("not-json", "{'class_name': 'Sequential'}", {"match": "not valid JSON"}),
    ("truncated-json", json.dumps(LEGACY_CONFIG)[:40], {"match": "not valid JSON"}),
    ("duplicate-keys", '{"class_name": "Sequential", "class_name": "Functional", "config": {"layers": []}}',
     {"match": "duplicate key"}),
    ("nan", json.dumps({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "LSTM", "config": {"name": "lstm", "units": float("nan")}}]}}), {}),
    ("huge-integer", '{"class_name": "Sequential", "config": {"layers": [{"class_name": "LSTM", '
                     '"config": {"name": "lstm", "units": ' + "9" * 5000 + "}}]}}", {}),
    ("integer-attribute", np.int64(5), {}),
    ("array-attribute", np.array([b"{", b"}"]), {}),
    ("over-json-limit", json.dumps(dict(LEGACY_CONFIG, padding="x" * 5000)), {"limits": {"max_json_bytes": 1000},
                                                                              "match": "over the"}),
    ("nested-sequential-80-deep", None, {"match": "nested"}),
    ("empty-string", "", {}),
]


def _nested_sequential(depth: int) -> str:
    entry: Any = {"class_name": "LSTM", "config": {"name": "lstm", "units": 8}}
    for i in range(depth):
        entry = {"class_name": "Sequential", "config": {"name": f"s{i}", "layers": [entry]}}
    return json.dumps(entry)


for _name, _config, _kw in MODEL_CONFIGS:
    _config = _nested_sequential(80) if _name == "nested-sequential-80-deep" else _config
    add(f"model-config-{_name}", "hostile config values",
        lambda d, c=_config: write_legacy(d / "model.h5", config=c),
        match=_kw.get("match", "config|JSON|object|not"), limits=_kw.get("limits"))

add("model-config-nested-sequential-30-deep", "hostile config values",
    lambda d: write_legacy(d / "model.h5", config=_nested_sequential(30)), expect=(0,), match="s29")

KERAS_BAD_VALUES = [("units", "16"), ("units", -1), ("units", 1e308), ("return_sequences", "yes"),
                    ("name", 7), ("kernel_size", "3")]
for _key, _value in KERAS_BAD_VALUES:
    add(f"keras-config-{_key}-{json.dumps(_value)}", "hostile config values",
        lambda d, k=_key, v=_value: write_keras(d / "model.keras", config=keras_config_with_lstm(**{k: v})),
        match=f"config value {_key}|{_key}|layer name")
add("keras-config-units-null", "hostile config values",
    lambda d: write_keras(d / "model.keras", config=keras_config_with_lstm(units=None)), expect=(0,), match="LSTM")


# --- Lambda layers and pickles: code that must never run -----------------------------------------

def _canary_code(canary: Path) -> str:
    """What Keras's func_dump writes for `lambda x: <create the canary>; x`: base64 of marshal."""
    fn = eval(f"lambda x: (open({str(canary)!r}, 'w').write('pwned'), x)[1]")  # built here, never called
    return codecs.encode(marshal.dumps(fn.__code__), "base64").decode("ascii")


@case("lambda-legacy-marshal-canary", "code in files", expect=(0,), match="Lambda")
def _(d: Path) -> Path:
    entry = {"class_name": "Lambda", "config": {"name": "lam", "trainable": True, "function": [
        _canary_code(d / CANARY), None, None], "function_type": "lambda", "output_shape": None,
        "output_shape_type": "raw", "module": "__main__", "arguments": {}}}
    lstm = {"class_name": "LSTM", "config": {"name": "lstm", "units": 8}}
    return write_legacy(d / "lambda.h5", config={"class_name": "Sequential", "config": {"layers": [lstm, entry]}})


@case("lambda-keras3-marshal-canary", "code in files", expect=(0,), match="Lambda")
def _(d: Path) -> Path:
    config = sample_config()
    layers = config["config"]["layers"]
    layers.append({"module": "keras.layers", "class_name": "Lambda", "registered_name": None, "name": "lam",
                   "config": {"name": "lam", "function": {"class_name": "__lambda__", "config": {
                       "code": _canary_code(d / CANARY), "defaults": None, "closure": None}},
                       "arguments": {}}, "inbound_nodes": []})
    return write_keras(d / "lambda.keras", config=config)


@case("lambda-keras3-module-function", "code in files", expect=(0,), match="Lambda")
def _(d: Path) -> Path:
    config = sample_config()
    config["config"]["layers"].append({"module": "keras.layers", "class_name": "Lambda", "name": "lam",
                                       "config": {"name": "lam", "function": {"module": "os", "class_name": "function",
                                                                              "config": "system"},
                                                  "arguments": {"command": f"touch {d / CANARY}"}}})
    return write_keras(d / "fn.keras", config=config)


class _PickleCanary:
    """Unpickling this creates the canary file; pickling it does not."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def _pickle_npz(canary: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        npy = io.BytesIO()
        np.save(npy, np.array([_PickleCanary(canary)], dtype=object), allow_pickle=True)
        zf.writestr("vars.npy", npy.getvalue())
    return buf.getvalue()


case("keras-weights-npz-pickle-canary", "code in files", match="never unpickles")(
    lambda d: write_keras(d / "npz.keras", omit=("model.weights.h5",),
                          extra=[("model.weights.npz", _pickle_npz(d / CANARY))]))


@case("keras-dir-weights-npz-pickle-canary", "code in files", match="never unpickles")
def _(d: Path) -> Path:
    folder = d / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes(sample_members()["config.json"])
    (folder / "model.weights.npz").write_bytes(_pickle_npz(d / CANARY))
    return folder


@case("pickle-file-canary", "code in files", match="pickle")
def _(d: Path) -> Path:
    import pickle
    return _write(d / "model.h5", pickle.dumps(_PickleCanary(d / CANARY)))


# --- zip archives ---------------------------------------------------------------------------

case("zip-bomb-config-default-limits", "zip", match="zip bomb")(
    lambda d: write_raw_keras(d / "bomb.keras", [sample_entries()[0], ZipEntry(
        b"config.json", b" " * (4 << 20) + sample_members()["config.json"], method=8), sample_entries()[2]]))
case("zip-bomb-patched-ratio", "zip", match="zip bomb", limits={"max_compression_ratio": 5.0, "ratio_floor_bytes": 512})(
    lambda d: write_raw_keras(d / "bomb2.keras", [sample_entries()[0], ZipEntry(
        b"config.json", sample_members()["config.json"] + b" " * 20000, method=8), sample_entries()[2]]))
case("zip-bomb-patched-member-size", "zip", match="over the", limits={"max_member_bytes": 10_000})(
    lambda d: _copy(SAMPLE_KERAS, d / "big.keras"))
case("zip-bomb-patched-total-size", "zip", match="over the", limits={"max_zip_total_bytes": 20_000})(
    lambda d: _copy(SAMPLE_KERAS, d / "total.keras"))
case("zip-too-many-members", "zip", match="more than 5 members", limits={"max_zip_members": 5})(
    lambda d: write_keras(d / "many.keras", extra=[(f"junk{i}", b"") for i in range(5)]))
case("zip-bomb-overlapping-members", "zip", match="overlaps")(
    lambda d: write_raw_keras(d / "overlap.keras", sample_entries() + [ZipEntry(b"assets/x", b"", offset_of=2)]))
case("zip-duplicate-config", "zip", match="appears twice")(
    lambda d: write_raw_keras(d / "dup.keras", sample_entries() + [ZipEntry(
        b"config.json", json.dumps(keras_config_with_lstm(units=-1)).encode())]))
case("zip-duplicate-weights", "zip", match="appears twice")(
    lambda d: write_raw_keras(d / "dupw.keras", sample_entries() + [ZipEntry(b"model.weights.h5", b"junk")]))
for _bad in (b"../config.json", b"../../../../tmp/x", b"/etc/passwd", b"/config.json", b"C:/config.json",
             b"assets\\..\\config.json", b"assets/../../x", b"a\x00b", b""):
    add(f"zip-member-name-{_bad.decode('latin-1').encode('unicode_escape').decode()[:24] or 'empty'}", "zip",
        lambda d, b=_bad: write_raw_keras(d / "name.keras", sample_entries() + [ZipEntry(b, b"x")]),
        match="zip member name .* \\(refused\\)")
case("zip-symlink-member", "zip", match="symbolic link")(
    lambda d: write_raw_keras(d / "link.keras", sample_entries() + [ZipEntry(
        b"assets/link", b"/etc/passwd", external_attr=(stat.S_IFLNK | 0o777) << 16)]))
case("zip-symlink-config", "zip", match="symbolic link")(
    lambda d: write_raw_keras(d / "linkcfg.keras", [sample_entries()[0], ZipEntry(
        b"config.json", b"/etc/passwd", external_attr=(stat.S_IFLNK | 0o777) << 16), sample_entries()[2]]))
case("zip-encrypted-member", "zip", match="encrypted")(
    lambda d: write_raw_keras(d / "enc.keras", [sample_entries()[0], ZipEntry(
        b"config.json", os.urandom(200), flags=1), sample_entries()[2]]))
case("zip-strong-encryption-flag", "zip", match="encrypted")(
    lambda d: write_raw_keras(d / "enc2.keras", sample_entries()[:2] + [ZipEntry(
        b"model.weights.h5", sample_members()["model.weights.h5"], flags=0x41)]))
case("zip-bzip2-member", "zip", match="compression method 12")(
    lambda d: write_raw_keras(d / "bz.keras", sample_entries()[:1] + [ZipEntry(b"config.json", b"BZh9", method=12)]
                              + sample_entries()[2:]))
case("zip-crc-mismatch-config", "zip", match="damaged|CRC")(
    lambda d: write_raw_keras(d / "crc.keras", [sample_entries()[0], ZipEntry(
        b"config.json", sample_members()["config.json"], crc=0x12345678), sample_entries()[2]]))
case("zip-size-header-lies", "zip", match="holds .* bytes but its header says|damaged")(
    lambda d: write_raw_keras(d / "lies.keras", [sample_entries()[0], ZipEntry(
        b"config.json", sample_members()["config.json"], file_size=10), sample_entries()[2]]))
case("zip-empty-archive", "zip", match="no model.weights.h5")(lambda d: _write(d / "empty.keras", raw_zip([])))
case("zip-only-metadata", "zip", match="no model.weights.h5")(
    lambda d: write_keras(d / "meta.keras", omit=("config.json", "model.weights.h5")))
case("zip-weights-not-hdf5", "zip", match="not an HDF5 file")(
    lambda d: write_keras(d / "nothdf5.keras", weights=b"\x80\x04pickled-junk" * 50))
case("zip-weights-empty", "zip", match="not an HDF5 file|HDF5")(
    lambda d: write_keras(d / "emptyw.keras", weights=b""))
case("zip-weights-truncated-hdf5", "zip", match="HDF5")(
    lambda d: write_keras(d / "truncw.keras", weights=sample_members()["model.weights.h5"][:5000]))
case("zip-weights-deflated-ok", "zip", expect=(0,), match="LSTM")(
    lambda d: write_keras(d / "deflated.keras", weights_compression=zipfile.ZIP_DEFLATED))
case("zip-weights-external-link-to-fifo", "zip", match="external link")(
    lambda d: _keras_weights_with(d, "extlink.keras", lambda f, t: f["layers/lstm/cell/vars"].__setitem__(
        "3", h5py.ExternalLink(str(t), "/x"))))
case("zip-weights-external-storage-fifo", "zip", match="external file")(
    lambda d: _keras_weights_with(d, "extstore.keras", lambda f, t: f["layers/dense/vars"].create_dataset(
        "2", shape=(3,), dtype="f4", external=[(str(t), 0, 12)])))
case("zip-weights-virtual-dataset-fifo", "zip", match="virtual dataset")(
    lambda d: _keras_weights_with(d, "vds.keras", lambda f, t: _virtual(str(t))(f["layers/dense/vars"], "2", t)))
case("zip-weights-shape-bomb", "zip", match="declares")(
    lambda d: _keras_weights_with(d, "bomb.keras", lambda f, t: f["layers/dense/vars"].create_dataset(
        "2", shape=(2**30, 2**20), dtype="f4", chunks=(8, 8))))
case("zip-metadata-array", "zip", match="metadata.json is not an object")(
    lambda d: write_keras(d / "metaarr.keras", metadata=[1, 2]))
case("zip-metadata-not-json", "zip", match="not valid")(
    lambda d: write_keras(d / "metajunk.keras", metadata=b"\xff\xfe\x00junk"))
case("zip-metadata-version-object", "zip", expect=(0,), match="LSTM")(
    lambda d: write_keras(d / "metaobj.keras", metadata={"keras_version": {"major": 3}}))
case("zip-config-not-json", "zip", match="not valid JSON")(
    lambda d: write_keras(d / "cfgjunk.keras", config=b"{not json"))
case("zip-config-duplicate-keys", "zip", match="duplicate key")(
    lambda d: write_keras(d / "cfgdup.keras", config=b'{"class_name": "Functional", "class_name": "Sequential"}'))
case("zip-config-deep", "zip", match="nested")(
    lambda d: write_keras(d / "cfgdeep.keras", config=b"[" * 100_000 + b"]" * 100_000))
case("zip-config-over-json-limit", "zip", match="over the", limits={"max_json_bytes": 1000})(
    lambda d: _copy(SAMPLE_KERAS, d / "cfgbig.keras"))
case("zip-config-layers-string", "zip", match="not a list")(
    lambda d: write_keras(d / "cfglayers.keras", config={"class_name": "Functional", "config": {"layers": "lstm"}}))
case("zip-no-config-infers", "zip", expect=(0,), match="LSTM")(
    lambda d: write_keras(d / "nocfg.keras", omit=("config.json",)))
case("zip-weights-json-index-escape", "zip", match="bad file|refused|missing|zip member name")(
    lambda d: write_keras(d / "index.keras", omit=("model.weights.h5",), extra=[
        ("model.weights.json", json.dumps({"weight_map": {"a": "/etc/passwd", "b": "../x.h5"}}).encode())]))
case("zip-member-name-ansi", "zip", match=r"\\x1b")(
    lambda d: write_raw_keras(d / "ansi.keras", sample_entries() + [ZipEntry(b"\x1b[2J\\evil", b"")]))
case("zip-local-header-mismatch", "zip", match="zip|header|HDF5|overlaps")(
    lambda d: _zip_shift_weights_offset(d / "shift.keras"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _keras_weights_with(d: Path, name: str, extra: Callable[[h5py.File, Path], None]) -> Path:
    target = d / "pipe"
    path = write_keras(d / name, weights=k3_weights_bytes(extra=lambda f: extra(f, target)))
    _make_fifos(target)
    return path


def _zip_shift_weights_offset(path: Path) -> Path:
    """The weights' central record points 30 bytes into its own local header."""
    entries = sample_entries()
    blob = bytearray(raw_zip(entries))
    cd = blob.rfind(b"PK\x01\x02")  # the last central record is model.weights.h5
    (offset,) = struct.unpack_from("<L", blob, cd + 42)
    struct.pack_into("<L", blob, cd + 42, offset + 30)
    path.write_bytes(bytes(blob))
    return path


# --- unzipped .keras folders and sharded indexes ------------------------------------------------

def _keras_dir(d: Path, *, config: bool = True, weights: Any = True) -> Path:
    folder = d / "model_dir"
    folder.mkdir()
    m = sample_members()
    (folder / "metadata.json").write_bytes(m["metadata.json"])
    if config:
        (folder / "config.json").write_bytes(m["config.json"])
    if weights is True:
        (folder / "model.weights.h5").write_bytes(m["model.weights.h5"])
    elif weights == "fifo":
        os.mkfifo(folder / "model.weights.h5")
    elif weights == "dev-zero":
        (folder / "model.weights.h5").symlink_to("/dev/zero")
    elif weights == "dir":
        (folder / "model.weights.h5").mkdir()
    return folder


case("dir-keras-ok", "directories", expect=(0,), match="LSTM")(lambda d: _keras_dir(d))
case("dir-weights-fifo", "directories", match="no model.weights.h5|FIFO")(lambda d: _keras_dir(d, weights="fifo"))
case("dir-weights-symlink-dev-zero", "directories", match="no model.weights.h5|character device")(
    lambda d: _keras_dir(d, weights="dev-zero"))
case("dir-weights-is-directory", "directories", match="no model.weights.h5|directory")(
    lambda d: _keras_dir(d, weights="dir"))


@case("dir-config-fifo-ignored", "directories", expect=(0, 2))
def _(d: Path) -> Path:
    folder = _keras_dir(d, config=False)
    os.mkfifo(folder / "config.json")
    return folder


@case("dir-config-symlink-dev-zero", "directories", expect=(0, 2))
def _(d: Path) -> Path:
    folder = _keras_dir(d, config=False)
    (folder / "config.json").symlink_to("/dev/zero")
    return folder


@case("dir-config-symlink-loop", "directories", expect=(0, 2))
def _(d: Path) -> Path:
    folder = _keras_dir(d, config=False)
    (folder / "config.json").symlink_to(folder / "config.json")
    return folder


def _index(d: Path, weight_map: Any, shards: dict[str, Any] = {}) -> Path:  # noqa: B006
    folder = d / "sharded"
    folder.mkdir()
    for name, kind in shards.items():
        if kind == "fifo":
            os.mkfifo(folder / name)
        elif kind == "dev-zero":
            (folder / name).symlink_to("/dev/zero")
        else:
            (folder / name).write_bytes(kind)
    path = folder / "model.weights.json"
    path.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


case("index-shard-parent-path", "sharded index", match="bad file")(
    lambda d: _index(d, {"layers/lstm": "../model_00000.weights.h5"}))
case("index-shard-absolute", "sharded index", match="bad file")(
    lambda d: _index(d, {"layers/lstm": "/etc/passwd"}))
case("index-shard-backslash", "sharded index", match="bad file")(
    lambda d: _index(d, {"layers/lstm": "..\\x.h5"}))
case("index-shard-fifo", "sharded index", match="missing|FIFO")(
    lambda d: _index(d, {"layers/lstm": "model_00000.weights.h5"}, {"model_00000.weights.h5": "fifo"}))
case("index-shard-dev-zero", "sharded index", match="missing|character device")(
    lambda d: _index(d, {"layers/lstm": "model_00000.weights.h5"}, {"model_00000.weights.h5": "dev-zero"}))
case("index-shard-not-hdf5", "sharded index", match="not an HDF5 file|not a model")(
    lambda d: _index(d, {"layers/lstm": "model_00000.weights.h5"}, {"model_00000.weights.h5": b"junk" * 10}))
case("index-weight-map-list", "sharded index", match="no weight_map")(lambda d: _index(d, ["a"]))
case("index-shard-number", "sharded index", match="bad file")(lambda d: _index(d, {"a": 5}))
case("index-100k-missing-shards", "sharded index", match="missing", split=False)(
    lambda d: _index(d, {f"k{i}": f"s{i}.weights.h5" for i in range(100_000)}))
case("index-empty-object", "sharded index", match="no weight_map")(
    lambda d: _write(d / "x.weights.json", b"{}"))


# --- NaN / Inf weights: valid files ------------------------------------------------------------

def nan_inf_arrays() -> list[np.ndarray]:
    kernel, recurrent, bias = legacy_arrays()
    kernel[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    recurrent[:, 5] = np.nan
    bias[:] = np.inf
    return [kernel, recurrent, bias]


case("nan-inf-legacy", "nan/inf weights", expect=(0,), match="416")(
    lambda d: write_legacy(d / "naninf.h5", layers=[("lstm", list(zip(LEGACY_WEIGHT_NAMES, nan_inf_arrays())))]))


@case("nan-inf-weights-h5", "nan/inf weights", expect=(0,), match="LSTM")
def _(d: Path) -> Path:
    a = k3_arrays()
    a["kernel"][:] = np.nan
    a["bias"][::2] = -np.inf
    return write_k3_weights(d / "naninf.weights.h5", a)


@case("nan-inf-keras", "nan/inf weights", expect=(0,), match="LSTM")
def _(d: Path) -> Path:
    a = k3_arrays()
    a["recurrent_kernel"][3] = np.inf
    return write_keras(d / "naninf.keras", weights=k3_weights_bytes(arrays=a))


# ----------------------------------------------------------------------------------------------
# Fixtures and parametrization


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hostile_case" in metafunc.fixturenames:
        params = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
                  for c in CASES]
        metafunc.parametrize("hostile_case", params)


@pytest.fixture(scope="session")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Every hostile case built once: id -> (path to give the CLI, the case's folder)."""
    root = tmp_path_factory.mktemp("hostile")
    built = {}
    for c in CASES:
        d = root / c.id.replace("/", "_")
        d.mkdir()
        built[c.id] = (Path(c.build(d)), d)
    return built
