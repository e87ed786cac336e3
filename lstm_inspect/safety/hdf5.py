"""HDF5 files: open read-only without locking or plugins, and refuse unsafe structure before any
read (soft/external links, hard-link cycles, external storage, virtual datasets, plugin filters,
shape bombs, odd types, oversized attributes). Crashes inside libhdf5 itself are the guard's job.

h5py is imported only inside these functions: reading a non-HDF5 format never imports it.
"""
from __future__ import annotations

import math
import os
import stat
import sys
from typing import IO, TYPE_CHECKING, Any

from lstm_inspect.errors import CorruptModelError, NotAModelError, UnsafeModelError, UnsupportedDialectError
from lstm_inspect.safety.limits import DEFAULT_LIMITS, Limits, first_line, label_of, size_text, stat_target
from lstm_inspect.safety.text import printable

if TYPE_CHECKING:  # pragma: no cover
    import h5py


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

    label = label_of(path_or_fileobj)
    if label is not None and isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        if not stat.S_ISREG(stat_target(path_or_fileobj, label).st_mode):
            raise NotAModelError("is a directory, not an HDF5 file", file=label)
    try:
        f = h5py.File(path_or_fileobj, "r", locking=False)
    except (OSError, ValueError) as exc:
        raise CorruptModelError(f"cannot open it as an HDF5 file ({first_line(exc)})", file=label) from None
    try:
        check_h5_structure(f, limits)
    except BaseException:
        f.close()
        raise
    return f


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
        self.label = None if f.driver == "fileobj" else label_of(f.filename)
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
                raise self.fail(UnsafeModelError, f"{where} is {size_text(declared)}, over the "
                                f"{size_text(self.limits.max_attribute_bytes)} limit")

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
            raise self.fail(UnsafeModelError, f"dataset {path} declares {size_text(declared)}, over the "
                            f"{size_text(lim.max_dataset_bytes)} limit")
        if declared > lim.ratio_floor_bytes and declared > lim.max_declared_ratio * stored:
            raise self.fail(UnsafeModelError, f"dataset {path} declares {size_text(declared)} but stores only "
                            f"{size_text(stored)} (over {lim.max_declared_ratio:g}x, refused)")


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
