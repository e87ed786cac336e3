"""What a path holds, from its file type and magic bytes, before any parser touches it.

Only regular files and directories get through (a FIFO would block, a device never ends). Formats
lstm-inspect does not read yet are named in the error, so the message helps.
"""
from __future__ import annotations

import enum
import os
import re
import stat

from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError
from lstm_inspect.safety.jsonload import strip_bom
from lstm_inspect.safety.limits import DEFAULT_LIMITS, MiB, Limits, size_text, stat_target


class Container(enum.Enum):
    """What kind of container a path holds, from its file type and magic bytes."""

    HDF5 = "hdf5"
    ZIP = "zip"
    DIRECTORY = "directory"
    JSON = "json"
    ONNX = "onnx"
    TENSORFLOW = "tensorflow"  # a TF checkpoint (prefix, .index, data shard, V1 file) or SavedModel folder
    TFLITE = "tflite"


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TFLITE_IDENTIFIER = b"TFL3"  # a FlatBuffers file identifier: bytes 4-8, after the root offset
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_HEAD_BYTES = 4096


def sniff(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> Container:
    """Classify `path` without ever opening anything but a regular file (a FIFO would block)."""
    name = os.fsdecode(path)
    if not os.path.lexists(name) and os.path.isfile(name + ".index"):
        return Container.TENSORFLOW  # a checkpoint prefix names no file of its own
    st = stat_target(path, name)
    if stat.S_ISDIR(st.st_mode):
        return Container.TENSORFLOW if _tensorflow_folder(name) else Container.DIRECTORY
    if st.st_size == 0:
        raise NotAModelError("empty file", file=name)
    if st.st_size > limits.max_file_bytes:
        raise UnsafeModelError(f"file is {size_text(st.st_size)}, over the {size_text(limits.max_file_bytes)} limit",
                               file=name)
    if _tensorflow_file_name(name):
        return Container.TENSORFLOW
    head, userblock_hdf5 = _read_magic(path, st, name)
    try:
        return _classify(head, userblock_hdf5, name, st.st_size)
    except NotAModelError:
        if _ends_with_table_magic(path):  # a V1 checkpoint: one table file, no .index
            return Container.TENSORFLOW
        raise


# --- TensorFlow: checkpoints are recognised by their file names, V1 files by the table magic at the end
_TF_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")
_TF_TABLE_MAGIC = (0xDB4775248B80FB57).to_bytes(8, "little")
_KERAS_FOLDER_FILES = ("config.json", "model.weights.h5", "metadata.json")


def _tensorflow_folder(name: str) -> bool:
    """A SavedModel folder, or a checkpoint folder (a `checkpoint` file, or one .index file)."""
    join = os.path.join
    if any(os.path.isfile(join(name, f)) for f in ("saved_model.pb", "saved_model.pbtxt", "keras_metadata.pb")):
        return True
    if os.path.isfile(join(name, "variables", "variables.index")) or os.path.isfile(join(name, "checkpoint")):
        return True
    if any(os.path.isfile(join(name, f)) for f in _KERAS_FOLDER_FILES):
        return False
    try:
        return sum(1 for f in os.listdir(name) if f.endswith(".index")) == 1
    except OSError:
        return False


def _tensorflow_file_name(name: str) -> bool:
    """Files of a checkpoint or SavedModel that are passed instead of the checkpoint itself."""
    base = os.path.basename(name)
    if base in ("checkpoint",) or _TF_DATA_SHARD.search(base):
        return True
    if base in ("saved_model.pb", "keras_metadata.pb"):  # only inside a SavedModel folder with its weights
        return os.path.isfile(os.path.join(os.path.dirname(name) or ".", "variables", "variables.index"))
    if base.endswith(".meta") and os.path.isfile(name[: -len(".meta")] + ".index"):
        return True
    return base.endswith(".index") and _ends_with_table_magic(name)


def _ends_with_table_magic(path: str | os.PathLike[str]) -> bool:
    """A regular file ending in the TF/leveldb table magic (opened without blocking on a FIFO)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or now.st_size < 48:
            return False
        return _pread(fd, 8, now.st_size - 8) == _TF_TABLE_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


def _read_magic(path: str | os.PathLike[str], st: os.stat_result, name: str) -> tuple[bytes, bool]:
    """Read the head, and probe the HDF5 user-block offsets (512, 1024, 2048, ...).

    O_NONBLOCK plus an fstat identity check: if the path was swapped for a FIFO after the stat,
    the open does not block and the swap is refused.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise NotAModelError(f"cannot read it ({exc.strerror or exc})", file=name) from None
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise NotAModelError("the file changed while being checked", file=name)
        head = _pread(fd, _HEAD_BYTES, 0)
        offset, found = 512, False
        while not found and offset + len(HDF5_SIGNATURE) <= now.st_size:
            found = _pread(fd, len(HDF5_SIGNATURE), offset) == HDF5_SIGNATURE
            offset *= 2
        return head, found
    except OSError as exc:
        raise NotAModelError(f"cannot read it ({exc.strerror or exc})", file=name) from None
    finally:
        os.close(fd)


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # pragma: no cover - non-POSIX
    return os.read(fd, n)  # pragma: no cover


def _classify(head: bytes, userblock_hdf5: bool, name: str, size: int | None = None) -> Container:
    if head.startswith(HDF5_SIGNATURE):
        return Container.HDF5
    if head.startswith(_ZIP_SIGNATURES):
        return Container.ZIP
    if head[4:8] == TFLITE_IDENTIFIER:
        return Container.TFLITE
    if userblock_hdf5:
        return Container.HDF5
    if strip_bom(head).lstrip(b" \t\r\n").startswith(b"{"):
        return Container.JSON
    from lstm_inspect.formats.onnx.magic import cut_short, looks_like_onnx  # ONNX: no magic, its first fields
    if looks_like_onnx(head, len(head) if size is None else size):
        return Container.ONNX
    problem = cut_short(head, len(head) if size is None else size)
    if problem:
        raise CorruptModelError(f"{problem} (truncated?)", file=name)
    what = _looks_like(head, name)
    preview = " ".join(f"{b:02x}" for b in head[:8])
    raise NotAModelError(f"not a model file{': ' + what if what else ''} (starts with {preview})", file=name)


def _looks_like(head: bytes, name: str) -> str:
    """Name a few common wrong inputs so the message helps; '' when unknown."""
    text = strip_bom(head).lstrip(b" \t\r\n")
    lower, suffix = text[:64].lower(), os.path.splitext(name)[1].lower()
    checks = (
        (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5, "looks like a Python pickle, which is never loaded"),
        (head.startswith(b"\x93NUMPY"), "looks like a NumPy .npy array"),
        (head.startswith(b"version https://git-lfs"), "is a Git LFS pointer, not the model itself (git lfs pull?)"),
        (lower.startswith((b"<!doctype html", b"<html")), "looks like an HTML page (a failed download?)"),
        (head.startswith(b"\x1f\x8b"), "looks like gzip-compressed data"),
        (head.startswith(b"BZh"), "looks like bzip2-compressed data"),
        (head.startswith(b"\xfd7zXZ\x00"), "looks like xz-compressed data"),
        (head.startswith(b"7z\xbc\xaf\x27\x1c"), "looks like a 7-Zip archive"),
        (head[257:262] == b"ustar", "looks like a tar archive"),
        (head.startswith(b"GGUF"), "looks like a GGUF model"),
        (_is_safetensors(head), "looks like a safetensors file"),
        (suffix == ".onnx" or (len(head) > 2 and head[0] == 0x08 and 3 <= head[1] <= 12 and head[2] in (0x12, 0x1A, 0x3A)),
         "looks like an ONNX model"),
        (suffix == ".pb" or head.startswith(b"\x08\x01\x12"),
         "looks like a protocol buffer (a TensorFlow SavedModel's saved_model.pb? pass its folder)"),
        (text.startswith(b"["), "JSON that is not an object"),
    )
    return next((what for hit, what in checks if hit), "")


def _is_safetensors(head: bytes) -> bool:
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * MiB
