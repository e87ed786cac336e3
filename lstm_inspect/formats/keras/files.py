"""The Keras file dialects: which container holds what. Legacy HDF5 (full model or weights only),
the Keras 3 `.keras` zip (members read in place, never extracted) and its unzipped folder,
`.weights.h5`, and sharded `*.weights.json` + `*_0000k.weights.h5`.

Keras archives whose weights are the pickled `model.weights.npz` are refused: lstm-inspect never
unpickles.
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import h5py

from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError, UnsupportedDialectError
from lstm_inspect.formats.keras.configs import parse_model_config
from lstm_inspect.formats.keras.keras3 import K3Tree, read_tree
from lstm_inspect.formats.keras.legacy_h5 import is_legacy, read_legacy
from lstm_inspect.formats.sniff import Container, sniff
from lstm_inspect.safety.hdf5 import open_h5
from lstm_inspect.safety.jsonload import load_json
from lstm_inspect.safety.limits import Limits
from lstm_inspect.safety.zipcheck import check_zip, read_member


def _open_h5(source: Any, limits: Limits, closers: list) -> h5py.File:
    f = open_h5(source, limits)
    closers.append(f.close)
    return f


def _read_hdf5(path: Path, limits: Limits, closers: list) -> dict:
    f = _open_h5(path, limits, closers)
    return _read_h5_file(f, limits, (str(path), 0))


def _read_h5_file(f: h5py.File, limits: Limits, base: tuple[str, int] | None) -> dict:
    if is_legacy(f):
        return read_legacy(f, lambda data, what: load_json(data, what, limits), base)
    if "layers" in f or "vars" in f:
        tree = K3Tree()
        tree.add_file(f, base)
        return {"format": "keras-weights-h5", "layers": read_tree(tree, None), "has_config": False}
    raise UnsupportedDialectError("an HDF5 file, but not a Keras model or weights file "
                                  "(no model_config, layer_names or layers/ group)")


def _read_zip(path: Path, limits: Limits, closers: list) -> dict:
    raw = open(path, "rb")
    closers.append(raw.close)
    try:
        zf = zipfile.ZipFile(raw)
    except zipfile.BadZipFile as err:
        raise NotAModelError(f"not a valid zip archive ({err})") from err
    closers.append(zf.close)
    check_zip(zf, limits)
    names = set(zf.namelist())
    if "model.weights.npz" in names and "model.weights.h5" not in names:
        raise UnsafeModelError("its weights are model.weights.npz, whose entries are pickled "
                               "Python objects; lstm-inspect never unpickles (re-save as .h5 weights)")
    read = lambda name: read_member(zf, name, limits)  # noqa: E731
    return _read_archive(names, read, lambda name: _zip_member_h5(path, raw, zf, name, limits, closers),
                         limits, fmt="keras-zip")


def _read_dir(path: Path, limits: Limits, closers: list) -> dict:
    names = {p.name for p in path.iterdir() if p.is_file()}
    if not ({"config.json", "model.weights.h5"} & names):
        raise NotAModelError("a directory, but not an unzipped Keras model "
                             "(no config.json or model.weights.h5)")
    if "model.weights.npz" in names and "model.weights.h5" not in names:
        raise UnsafeModelError("its weights are model.weights.npz (pickled); lstm-inspect never unpickles")

    def read(name: str) -> bytes:
        return _read_small_file(path / name, limits)

    def open_member(name: str) -> tuple[h5py.File, tuple[str, int]]:
        member = path / name
        if sniff(member, limits) is not Container.HDF5:
            raise NotAModelError(f"{name} is not an HDF5 file")
        return _open_h5(member, limits, closers), (str(member), 0)

    return _read_archive(names, read, open_member, limits, fmt="keras-dir")


def _read_small_file(path: Path, limits: Limits) -> bytes:
    if not path.is_file():
        raise CorruptModelError(f"{path.name} is missing")
    with open(path, "rb") as fh:
        data = fh.read(limits.max_json_bytes + 1)
    if len(data) > limits.max_json_bytes:
        raise UnsafeModelError(f"{path.name} is larger than {limits.max_json_bytes} bytes")
    return data


def _read_archive(names: set[str], read: Callable[[str], bytes],
                  open_member: Callable[[str], tuple[h5py.File, tuple[str, int] | None]],
                  limits: Limits, fmt: str) -> dict:
    """Shared by the zip and the folder form of a Keras 3 model."""
    def parse(name: str) -> Any:
        return load_json(read(name), name, limits)

    metadata = parse("metadata.json") if "metadata.json" in names else {}
    if not isinstance(metadata, dict):
        raise CorruptModelError("metadata.json is not an object")
    root = parse_model_config(parse("config.json")) if "config.json" in names else None
    tree = K3Tree()
    if "model.weights.h5" in names:
        tree.add_file(*open_member("model.weights.h5"))
    elif "model.weights.json" in names:
        for shard in _shard_names(parse("model.weights.json"), names):
            tree.add_file(*open_member(shard))
    else:
        raise CorruptModelError("no model.weights.h5 in the archive")
    keras_version = metadata.get("keras_version")
    return {"format": fmt, "layers": read_tree(tree, root), "has_config": root is not None,
            "keras_version": str(keras_version) if keras_version is not None else None,
            "name": root.name if root else None, "class_name": root.class_name if root else None}


def _zip_member_h5(path: Path, raw: io.BufferedReader, zf: zipfile.ZipFile, name: str,
                   limits: Limits, closers: list) -> tuple[h5py.File, tuple[str, int] | None]:
    """Open an HDF5 member in place when it is stored uncompressed (as Keras writes it), else in memory.
    Returns the file and, when in place, (zip path, offset of the member's data)."""
    info = zf.getinfo(name)
    if info.compress_type == zipfile.ZIP_STORED:
        raw.seek(info.header_offset)
        header = raw.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CorruptModelError(f"{name}: bad local zip header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        source: Any = _Window(raw, start, info.file_size)
        base: tuple[str, int] | None = (str(path), start)
        _check_crc(source, info, name)
    else:
        source, base = io.BytesIO(read_member(zf, name, limits)), None
    if source.read(8) != b"\x89HDF\r\n\x1a\n":
        raise NotAModelError(f"{name} inside the archive is not an HDF5 file")
    source.seek(0)
    return _open_h5(source, limits, closers), base


_CRC_CHECK_LIMIT = 256 << 20  # bytes: checking costs ~1 s per GB here, so huge members are not checked


def _check_crc(source: "_Window", info: zipfile.ZipInfo, name: str) -> None:
    """A damaged member is refused at once: libhdf5 can hang on a few changed bytes (zipfile would
    check the CRC when reading the whole member; reading in place must do it itself)."""
    if info.file_size > _CRC_CHECK_LIMIT:
        return
    crc = 0
    for chunk in iter(lambda: source.read(1 << 20), b""):
        crc = zlib.crc32(chunk, crc)
    source.seek(0)
    if crc != info.CRC:
        raise CorruptModelError(f"{name} inside the archive is damaged (its CRC-32 does not match)")


class _Window(io.RawIOBase):
    """A read-only, seekable view of [start, start+size) of an open file: the zip member in place."""

    def __init__(self, raw: io.BufferedReader, start: int, size: int) -> None:
        self._raw, self._start, self._size, self._pos = raw, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n == 0:
            return 0
        self._raw.seek(self._start + self._pos)
        got = self._raw.readinto(memoryview(buffer)[:n])
        self._pos += got or 0
        return got or 0


def _shard_names(index: Any, names: set[str]) -> list[str]:
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CorruptModelError("sharded weights index has no weight_map")
    shards: dict[str, None] = {}  # ordered and de-duplicated in linear time
    for value in index["weight_map"].values():
        for shard in value if isinstance(value, list) else [value]:
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise UnsafeModelError(f"sharded weights index names a bad file: {repr(shard)[:60]}")
            shards[shard] = None
    missing = [s for s in shards if s not in names]
    if missing:
        raise CorruptModelError(f"shard {missing[0]} named by the index is missing")
    return list(shards)


def _read_json_index(path: Path, limits: Limits, closers: list) -> dict:
    """A sharded `*.weights.json` beside its `*_00000.weights.h5` shards."""
    index = load_json(_read_small_file(path, limits), path.name, limits)
    folder = path.parent
    names = {p.name for p in folder.iterdir() if p.is_file()}
    tree = K3Tree()
    for shard in _shard_names(index, names):
        member = folder / shard
        if sniff(member, limits) is not Container.HDF5:
            raise NotAModelError(f"shard {shard} is not an HDF5 file")
        tree.add_file(_open_h5(member, limits, closers), (str(member), 0))
    return {"format": "keras-weights-sharded", "layers": read_tree(tree, None), "has_config": False}


READERS = {
    Container.HDF5: _read_hdf5,
    Container.ZIP: _read_zip,
    Container.DIRECTORY: _read_dir,
    Container.JSON: _read_json_index,
}
