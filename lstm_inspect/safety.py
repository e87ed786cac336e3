"""Checks done before and during parsing of files that come from the internet.

Every check is a plain function that raises a typed error with a one-line message. They keep the
reader from being told to open other files (HDF5 links, external storage, virtual datasets, zip
member names), to allocate without bound (shape bombs, zip bombs, huge JSON) or to block (FIFOs,
devices). Crashes inside libhdf5 itself are the guard's job (lstm_inspect.guard).

Messages may quote names taken from the file; they are made printable (no control characters)
but not rich-escaped: print messages with markup off, or pass names through `escape_name`.
"""
from __future__ import annotations

import enum
import json
import math
import os
import re
import stat
import sys
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any


from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError, UnsupportedDialectError

if TYPE_CHECKING:  # pragma: no cover
    import h5py

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """Budgets for one input file. Defaults are generous for real models; tests pass smaller ones."""

    max_file_bytes: int = 16 * GiB
    max_zip_members: int = 10_000
    max_member_bytes: int = 8 * GiB
    max_zip_total_bytes: int = 16 * GiB
    max_compression_ratio: float = 100.0
    max_json_bytes: int = 64 * MiB
    max_json_depth: int = 200
    max_h5_objects: int = 100_000
    max_h5_depth: int = 64
    max_dataset_bytes: int = 8 * GiB
    max_declared_ratio: float = 1000.0  # declared / stored bytes, as Keras checks
    ratio_floor_bytes: int = 1 * MiB  # ratios are only checked above this size (tiny data compresses well)
    max_attribute_bytes: int = 64 * MiB
    max_attributes: int = 10_000  # per object
    max_name_bytes: int = 4096


DEFAULT_LIMITS = Limits()


class Container(enum.Enum):
    """What kind of container a path holds, from its file type and magic bytes."""

    HDF5 = "hdf5"
    ZIP = "zip"
    DIRECTORY = "directory"
    JSON = "json"


# ----------------------------------------------------------------------------------------------
# sniff


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
_HEAD_BYTES = 4096
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def sniff(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> Container:
    """Classify `path` without ever opening anything but a regular file (a FIFO would block)."""
    name = os.fsdecode(path)
    st = _stat_target(path, name)
    if stat.S_ISDIR(st.st_mode):
        return Container.DIRECTORY
    if st.st_size == 0:
        raise NotAModelError("empty file", file=name)
    if st.st_size > limits.max_file_bytes:
        raise UnsafeModelError(f"file is {_size(st.st_size)}, over the {_size(limits.max_file_bytes)} limit",
                               file=name)
    head, userblock_hdf5 = _read_magic(path, st, name)
    return _classify(head, userblock_hdf5, name)


def _stat_target(path: str | os.PathLike[str], name: str) -> os.stat_result:
    """lstat, then stat a symlink's target: only regular files and directories get through."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise NotAModelError("broken symbolic link (its target does not exist)", file=name) from None
    except FileNotFoundError:
        raise NotAModelError("no such file", file=name) from None
    except OSError as exc:
        raise NotAModelError(f"cannot read it ({exc.strerror or exc})", file=name) from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return st
    kind = next((what for test, what in _SPECIAL_FILES if test(st.st_mode)), "not a regular file")
    raise NotAModelError(f"is {kind}, not a model file", file=name)


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


def _classify(head: bytes, userblock_hdf5: bool, name: str) -> Container:
    if head.startswith(HDF5_SIGNATURE):
        return Container.HDF5
    if head.startswith(_ZIP_SIGNATURES):
        return Container.ZIP
    if userblock_hdf5:
        return Container.HDF5
    if _strip_bom(head).lstrip(b" \t\r\n").startswith(b"{"):
        return Container.JSON
    what = _looks_like(head, name)
    preview = " ".join(f"{b:02x}" for b in head[:8])
    raise NotAModelError(f"not a model file{': ' + what if what else ''} (starts with {preview})", file=name)


def _looks_like(head: bytes, name: str) -> str:
    """Name a few common wrong inputs so the message helps; '' when unknown."""
    text = _strip_bom(head).lstrip(b" \t\r\n")
    lower, suffix = text[:64].lower(), os.path.splitext(name)[1].lower()
    checks = (
        (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5, "looks like a Python pickle, which is never loaded"),
        (head[4:8] == b"TFL3", "looks like a TensorFlow Lite flatbuffer"),
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


def _strip_bom(data: bytes) -> bytes:
    return data[3:] if data.startswith(b"\xef\xbb\xbf") else data


# ----------------------------------------------------------------------------------------------
# HDF5


_BUILTIN_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset",
                    32000: "lzf"}  # lzf is registered by h5py itself, not loaded as a plugin
_INT_SIZES, _FLOAT_SIZES = (1, 2, 4, 8), (2, 4, 8)


def disable_hdf5_plugins() -> None:
    """Stop libhdf5 from loading filter plugins (shared libraries) a hostile file could ask for.

    The environment variable only matters if h5py is not imported yet; removing every plugin
    search path works at any time.
    """
    if "h5py" not in sys.modules:
        os.environ["HDF5_PLUGIN_PRELOAD"] = "::"  # HDF5's "no plugins" value, read at library init
    from h5py import h5pl

    while h5pl.size() > 0:
        h5pl.remove(0)


def open_h5(path_or_fileobj: str | os.PathLike[str] | IO[bytes], limits: Limits = DEFAULT_LIMITS) -> "h5py.File":
    """Open read-only without file locking or plugins, then refuse unsafe structure before any read."""
    disable_hdf5_plugins()
    import h5py

    label = _label_of(path_or_fileobj)
    if label is not None and isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        if not stat.S_ISREG(_stat_target(path_or_fileobj, label).st_mode):
            raise NotAModelError("is a directory, not an HDF5 file", file=label)
    try:
        f = h5py.File(path_or_fileobj, "r", locking=False)
    except (OSError, ValueError) as exc:
        raise CorruptModelError(f"cannot open it as an HDF5 file ({_first_line(exc)})", file=label) from None
    try:
        check_h5_structure(f, limits)
    except BaseException:
        f.close()
        raise
    return f


def _label_of(path_or_fileobj: Any) -> str | None:
    if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        return os.fsdecode(path_or_fileobj)
    name = getattr(path_or_fileobj, "name", None)
    return name if isinstance(name, str) else None


def check_h5_structure(f: "h5py.File", limits: Limits = DEFAULT_LIMITS) -> None:
    """Walk every link without following any: refuse soft/external links, cycles, external storage,
    virtual datasets, shape bombs, unknown filters, odd types and oversized attributes.
    """
    _H5Walk(f, limits).run()


class _H5Walk:
    """Iterative depth-first walk over hard links, each object checked once (by its address)."""

    def __init__(self, f: "h5py.File", limits: Limits) -> None:
        self.f, self.limits = f, limits
        # A file object's "filename" is its repr; the caller names the model file instead.
        self.label = None if f.driver == "fileobj" else _label_of(f.filename)
        self.count = 0

    def fail(self, cls: type, message: str) -> Exception:
        return cls(message, file=self.label)

    def run(self) -> None:
        from h5py import h5g, h5o

        root = h5g.open(self.f.id, b"/")
        root_addr = h5o.get_info(root).addr
        seen = {root_addr}
        self.check_attributes(root, "/")
        stack = [(root, "/", 0, (root_addr,))]
        while stack:
            gid, path, depth, ancestors = stack.pop()
            for name in self.link_names(gid, path):
                child = self.visit(gid, name, path, depth + 1, ancestors, seen)
                if child is not None:
                    stack.append(child)

    def link_names(self, gid: Any, path: str) -> list[bytes]:
        """The group's link names, counted against the object budget before they are listed."""
        self.count += gid.get_num_objs()
        if self.count > self.limits.max_h5_objects:
            raise self.fail(UnsafeModelError, f"more than {self.limits.max_h5_objects} HDF5 objects")
        names: list[bytes] = []
        room = self.limits.max_h5_objects - self.count + gid.get_num_objs()

        def collect(name: bytes) -> bool | None:
            names.append(name)
            return True if len(names) > room else None  # a damaged index may hold more than it says

        gid.links.iterate(collect)
        if len(names) > room:
            raise self.fail(UnsafeModelError, f"more than {self.limits.max_h5_objects} HDF5 objects")
        return names

    def visit(self, gid: Any, name: bytes, parent: str, depth: int, ancestors: tuple, seen: set) -> tuple | None:
        """Check one link; return a stack entry when it is a group still to walk."""
        from h5py import h5l, h5o

        path = self.child_path(parent, name)
        kind = gid.links.get_info(name).type
        if kind != h5l.TYPE_HARD:
            raise self.link_error(gid, name, path, kind)
        obj = h5o.open(gid, name)
        info = h5o.get_info(obj)
        if info.addr in ancestors:
            raise self.fail(UnsafeModelError, f"HDF5 group {path} links back to its own ancestor (a hard-link cycle)")
        if info.addr in seen:
            return None
        seen.add(info.addr)
        if depth > self.limits.max_h5_depth:
            raise self.fail(UnsafeModelError, f"HDF5 objects nested more than {self.limits.max_h5_depth} deep")
        self.check_attributes(obj, path)
        if info.type == h5o.TYPE_GROUP:
            return obj, path, depth, ancestors + (info.addr,)
        if info.type == h5o.TYPE_DATASET:
            self.check_dataset(obj, path)
        elif info.type == h5o.TYPE_NAMED_DATATYPE:
            self.check_type(obj, f"named datatype {path}")
        return None

    def child_path(self, parent: str, name: bytes) -> str:
        """Refuse names HDF5 would resolve as paths ('a/b', '.') and names that are not UTF-8."""
        if not name or name == b"." or b"/" in name or len(name) > self.limits.max_name_bytes:
            raise self.fail(CorruptModelError, f"HDF5 group {parent} has a malformed link name")
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(CorruptModelError, f"HDF5 group {parent} has a link name that is not UTF-8") from None
        return parent.rstrip("/") + "/" + printable(text, 200)

    def link_error(self, gid: Any, name: bytes, path: str, kind: int) -> Exception:
        from h5py import h5l

        if kind == h5l.TYPE_SOFT:
            target = printable(gid.links.get_val(name).decode("utf-8", "replace"), 200)
            return self.fail(UnsafeModelError, f"HDF5 link {path} is a soft link to {target} (refused)")
        if kind == h5l.TYPE_EXTERNAL:
            filename, obj = (p.decode("utf-8", "replace") for p in gid.links.get_val(name))
            return self.fail(UnsafeModelError, f"HDF5 link {path} is an external link to "
                             f"{printable(filename, 200)}:{printable(obj, 200)} (refused: it would open another file)")
        return self.fail(UnsafeModelError, f"HDF5 link {path} is a user-defined link (type {kind}, refused)")

    def check_attributes(self, obj: Any, path: str) -> None:
        """Attribute count, names, types and declared sizes; values are not read here."""
        from h5py import h5a

        count = h5a.get_num_attrs(obj)
        if count > self.limits.max_attributes:
            raise self.fail(UnsafeModelError, f"HDF5 object {path} has more than {self.limits.max_attributes} attributes")
        for index in range(count):
            attr = h5a.open(obj, index=index)
            name = attr.get_name()
            if len(name) > self.limits.max_name_bytes:
                raise self.fail(CorruptModelError, f"HDF5 object {path} has an attribute with an overlong name")
            where = f"attribute {printable(name.decode('utf-8', 'replace'), 200)} of {path}"
            tid = attr.get_type()
            self.check_type(tid, where)
            declared = _npoints(attr.get_space()) * tid.get_size()
            if declared > self.limits.max_attribute_bytes:
                raise self.fail(UnsafeModelError, f"{where} is {_size(declared)}, over the "
                                f"{_size(self.limits.max_attribute_bytes)} limit")

    def check_type(self, tid: Any, where: str) -> None:
        """Plain numbers, bools (h5py stores them as an int8 enum) and strings only."""
        from h5py import h5t

        cls, size = tid.get_class(), tid.get_size()
        if (cls == h5t.INTEGER and size in _INT_SIZES) or (cls == h5t.FLOAT and size in _FLOAT_SIZES):
            return
        if cls == h5t.STRING:
            return
        if cls == h5t.OPAQUE and size == 2:  # bfloat16: Keras stores it as 2-byte opaque ("|V2")
            return
        if cls == h5t.ENUM and tid.get_super().get_class() == h5t.INTEGER:
            return
        error = UnsafeModelError if cls in (h5t.REFERENCE, h5t.VLEN) else UnsupportedDialectError
        raise self.fail(error, f"{where} has an unsupported data type ({_type_class_name(cls)}, {size} bytes)")

    def check_dataset(self, did: Any, path: str) -> None:
        """No external storage or virtual layout; no plugin filters; size and declared/stored ratio."""
        from h5py import h5d

        dcpl = did.get_create_plist()
        if dcpl.get_layout() == h5d.VIRTUAL:
            raise self.fail(UnsafeModelError, f"dataset {path} is a virtual dataset (refused: it reads other files)")
        if dcpl.get_external_count() > 0:
            raise self.fail(UnsafeModelError, f"dataset {path} keeps its data in an external file (refused)")
        for index in range(dcpl.get_nfilters()):
            code = dcpl.get_filter(index)[0]
            if code not in _BUILTIN_FILTERS:
                raise self.fail(UnsupportedDialectError, f"dataset {path} needs HDF5 filter {code}, "
                                "which lstm-inspect does not load (filter plugins are disabled)")
        tid = did.get_type()
        self.check_type(tid, f"dataset {path}")
        self.check_size(path, _npoints(did.get_space()) * tid.get_size(), did.get_storage_size())

    def check_size(self, path: str, declared: int, stored: int) -> None:
        lim = self.limits
        if declared > lim.max_dataset_bytes:
            raise self.fail(UnsafeModelError, f"dataset {path} declares {_size(declared)}, over the "
                            f"{_size(lim.max_dataset_bytes)} limit")
        if declared > lim.ratio_floor_bytes and declared > lim.max_declared_ratio * stored:
            raise self.fail(UnsafeModelError, f"dataset {path} declares {_size(declared)} but stores only "
                            f"{_size(stored)} (over {lim.max_declared_ratio:g}x, refused)")


def _npoints(space: Any) -> int:
    """Element count of a dataspace: 0 for a null space, 1 for a scalar."""
    from h5py import h5s

    kind = space.get_simple_extent_type()
    if kind == h5s.NULL:
        return 0
    if kind == h5s.SCALAR:
        return 1
    return math.prod(space.get_simple_extent_dims())


def _type_class_name(cls: int) -> str:
    from h5py import h5t

    names = {h5t.INTEGER: "integer", h5t.FLOAT: "float", h5t.TIME: "time", h5t.STRING: "string",
             h5t.BITFIELD: "bitfield", h5t.OPAQUE: "opaque", h5t.COMPOUND: "compound",
             h5t.REFERENCE: "reference", h5t.ENUM: "enum", h5t.VLEN: "variable-length", h5t.ARRAY: "array"}
    return names.get(cls, f"class {cls}")


# ----------------------------------------------------------------------------------------------
# zip


_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}  # what Keras writes
_DRIVE = re.compile(r"^[A-Za-z]:")
_READ_CHUNK = 1 * MiB


def check_zip(zf: zipfile.ZipFile, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse bombs, overlapping members, duplicate or path-escaping names, links and encryption."""
    label = _label_of(zf.filename) if zf.filename else None
    infos = zf.infolist()
    if len(infos) > limits.max_zip_members:
        raise UnsafeModelError(f"zip has more than {limits.max_zip_members} members", file=label)
    seen: set[str] = set()
    for info in infos:
        _check_member(info, limits, label)
        if info.filename in seen:
            raise UnsafeModelError(f"zip member '{printable(info.filename, 200)}' appears twice (refused)", file=label)
        seen.add(info.filename)
    _check_zip_totals(infos, limits, label)
    _check_zip_overlap(infos, zf.start_dir, label)


def read_member(zf: zipfile.ZipFile, name: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Read one member, never more than its declared size + 1 bytes; the data must match the header."""
    label = _label_of(zf.filename) if zf.filename else None
    shown = printable(name, 200)
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CorruptModelError(f"zip member '{shown}' is missing", file=label) from None
    _check_member(info, limits, label)
    try:
        data = _read_at_most(zf, info, info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise CorruptModelError(f"zip member '{shown}' is damaged ({_first_line(exc)})", file=label) from None
    if len(data) != info.file_size:
        raise CorruptModelError(f"zip member '{shown}' holds {len(data)} bytes but its header says "
                                f"{info.file_size}", file=label)
    return data


def _read_at_most(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """Chunked reads (bounded decompression), then one more read so zipfile checks the CRC."""
    buf = bytearray()
    with zf.open(info) as fp:
        while len(buf) < limit:
            chunk = fp.read(min(_READ_CHUNK, limit - len(buf)))
            if not chunk:
                break
            buf += chunk
    return bytes(buf)


def _check_member(info: zipfile.ZipInfo, limits: Limits, label: str | None) -> None:
    _check_member_name(info, label)
    shown = printable(info.filename, 200)
    if info.flag_bits & 0x41:
        raise UnsafeModelError(f"zip member '{shown}' is encrypted (refused)", file=label)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeModelError(f"zip member '{shown}' is a symbolic link (refused)", file=label)
    if info.compress_type not in _ZIP_METHODS:
        raise UnsupportedDialectError(f"zip member '{shown}' uses compression method {info.compress_type}, "
                                      "not stored or deflated", file=label)
    if info.file_size > limits.max_member_bytes:
        raise UnsafeModelError(f"zip member '{shown}' is {_size(info.file_size)}, over the "
                               f"{_size(limits.max_member_bytes)} limit", file=label)
    if _is_bomb(info.file_size, info.compress_size, limits):
        raise UnsafeModelError(f"zip member '{shown}' expands {_size(info.compress_size)} to "
                               f"{_size(info.file_size)} (a zip bomb?)", file=label)


def _check_member_name(info: zipfile.ZipInfo, label: str | None) -> None:
    """zipfile cuts names at NUL (orig_filename keeps it); '..', absolute, drive and '\\' are refused."""
    raw, name = info.orig_filename, info.filename
    shown = printable(raw, 200)
    problem = (
        "contains a NUL byte" if "\x00" in raw else
        "is empty" if not name else
        "contains a backslash" if "\\" in raw else
        "is an absolute path" if name.startswith("/") else
        "starts with a drive letter" if _DRIVE.match(name) else
        "contains a '..' component" if ".." in name.split("/") else ""
    )
    if problem:
        raise UnsafeModelError(f"zip member name '{shown}' {problem} (refused)", file=label)


def _check_zip_totals(infos: list[zipfile.ZipInfo], limits: Limits, label: str | None) -> None:
    total = sum(i.file_size for i in infos)
    packed = sum(i.compress_size for i in infos)
    if total > limits.max_zip_total_bytes:
        raise UnsafeModelError(f"zip expands to {_size(total)}, over the {_size(limits.max_zip_total_bytes)} limit",
                               file=label)
    if _is_bomb(total, packed, limits):
        raise UnsafeModelError(f"zip expands {_size(packed)} to {_size(total)} (a zip bomb?)", file=label)


def _check_zip_overlap(infos: list[zipfile.ZipInfo], start_dir: int, label: str | None) -> None:
    """Members whose data overlap (or run into the central directory) are the classic bomb trick."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    for this, after in zip(ordered, ordered[1:] + [None]):
        end = this.header_offset + this.compress_size
        limit = after.header_offset if after is not None else start_dir
        if end > limit:
            raise UnsafeModelError(f"zip member '{printable(this.filename, 200)}' overlaps other data "
                                   "(refused: a zip bomb?)", file=label)


def _is_bomb(expanded: int, packed: int, limits: Limits) -> bool:
    return expanded > limits.ratio_floor_bytes and expanded > limits.max_compression_ratio * packed


# ----------------------------------------------------------------------------------------------
# JSON


class _DuplicateKey(Exception):
    pass


class _BadConstant(Exception):
    pass


def load_json(data: bytes | str, what: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse untrusted JSON: size, strict UTF-8, no duplicate keys, no NaN/Infinity, bounded depth.

    `data` may also be a str (h5py returns variable-length string attributes decoded).
    """
    if len(data) > limits.max_json_bytes:
        raise UnsafeModelError(f"{what} is {_size(len(data))}, over the {_size(limits.max_json_bytes)} limit")
    try:
        text = data.lstrip("\ufeff") if isinstance(data, str) else _strip_bom(bytes(data)).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptModelError(f"{what} is not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise UnsafeModelError(f"{what} has a duplicate key '{printable(str(exc), 100)}' (refused)") from None
    except _BadConstant as exc:
        raise CorruptModelError(f"{what} contains {exc}, which is not valid JSON") from None
    except RecursionError:
        raise UnsafeModelError(f"{what} is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise CorruptModelError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise CorruptModelError(f"{what} is not valid JSON ({_first_line(exc)})") from None
    if _json_depth(value) > limits.max_json_depth:
        raise UnsafeModelError(f"{what} is nested more than {limits.max_json_depth} levels deep")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Two values for one key: parsers disagree on which wins, so refuse instead of guessing."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _no_constants(name: str) -> Any:
    raise _BadConstant(name)


def _json_depth(value: Any) -> int:
    """Nesting depth, computed without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


# ----------------------------------------------------------------------------------------------
# Names


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_name(s: str | bytes, *, max_chars: int = 1000) -> str:
    """A name from a file, safe to print on one line through rich: control characters, newlines,
    ANSI escapes, bidi overrides and other non-printables are shown as \\x.. / \\u.. escapes,
    undecodable bytes (surrogateescape) as \\x.., and rich markup is escaped.
    """
    from rich.markup import escape  # only when printing through rich: keeps the reading path light

    if isinstance(s, bytes):
        s = s.decode("utf-8", "surrogateescape")
    return escape(printable(s, max_chars))


def printable(s: str, max_chars: int = 1000) -> str:
    """One printable line (no rich escaping); longer names are cut with an ellipsis."""
    cut = len(s) > max_chars
    if s.isprintable() and not cut:
        return s
    out = []
    for ch in s[:max_chars]:
        if ch.isprintable():
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        else:
            out.append(_escape_char(ord(ch)))
    return "".join(out) + ("…" if cut else "")


def _escape_char(cp: int) -> str:
    if 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte kept by surrogateescape
        return f"\\x{cp - 0xDC00:02x}"
    if cp < 0x100:
        return f"\\x{cp:02x}"
    return f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}"


# ----------------------------------------------------------------------------------------------
# Helpers


def _size(n: float) -> str:
    """Human-readable byte count for messages."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return printable(text.splitlines()[0] if text else type(exc).__name__, 300)
