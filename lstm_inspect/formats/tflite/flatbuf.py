"""A bounded reader of FlatBuffers tables, driven by the caller's knowledge of the schema.

No generated code and no `flatbuffers` package: a `Table` answers "field k as a little-endian int32",
"field k as a table / vector / string / union / struct", with the schema's default when the field is absent.
Every offset is checked against the buffer (and every field against its table's declared size), vector
lengths times element size are checked before anything is read, and the reader counts nesting depth,
visited objects and copied bytes, so a hostile buffer ends in a typed error: `CorruptModelError` naming the
field that failed (`Model.subgraphs[0].tensors[3].name: ...`), or `UnsafeModelError` when a budget is spent.

Layout reminder: the buffer starts with the uoffset of the root table; a table starts with an int32 that
points back (soffset) to its vtable: uint16 vtable size, uint16 table size, then one uint16 offset per field
(0 = absent). Offsets to tables, vectors and strings are uint32 relative to where they are stored, so they
only point forward; a vector or string is a uint32 count followed by its elements.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from lstm_inspect.errors import CorruptModelError, UnsafeModelError

Data = Union[bytes, bytearray, memoryview, Any]  # anything with the buffer protocol and len(), e.g. an mmap

_U16, _U32, _I32 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<i")


@dataclass(frozen=True)
class Budget:
    """How much one buffer may make the reader do. The defaults fit models of up to ~100,000 tensors and
    keep a hostile file (a million offsets to one shared table) to a few seconds."""

    max_depth: int = 32  # tables within tables (TFLite needs 5: Model/SubGraph/Operator/Options)
    max_objects: int = 500_000  # tables, vectors and strings opened (a tensor costs two to six)
    max_copied_bytes: int = 512 << 20  # bytes copied out of the buffer (names, shapes, scales...)


DEFAULT_BUDGET = Budget()


class Flatbuffer:
    """One buffer being read; owns the budget counters shared by all its tables."""

    def __init__(self, data: Data, budget: Budget = DEFAULT_BUDGET, what: str = "flatbuffer") -> None:
        self.data, self.size, self.budget, self.what = data, len(data), budget, what
        self.objects = 0
        self.copied = 0

    def root(self, name: str, identifier: bytes | None = None) -> "Table":
        if self.size < 8:
            raise CorruptModelError(f"{self.what} is {self.size} bytes, too short for a flatbuffer")
        if identifier is not None and bytes(self.data[4:8]) != identifier:
            raise CorruptModelError(f"{self.what} does not carry the file identifier {identifier.decode()}")
        return self.table_at(self.u32(0, name), 0, name)

    # -- checked primitive reads -----------------------------------------------------------------

    def fail(self, where: str, problem: str) -> CorruptModelError:
        return CorruptModelError(f"{self.what}: {where}: {problem}")

    def check(self, pos: int, n: int, where: str) -> None:
        if pos < 0 or n < 0 or pos + n > self.size:
            raise self.fail(where, f"{n} bytes at offset {pos} run past the end of the {self.size}-byte buffer")

    def u16(self, pos: int, where: str) -> int:
        self.check(pos, 2, where)
        return _U16.unpack_from(self.data, pos)[0]

    def u32(self, pos: int, where: str) -> int:
        self.check(pos, 4, where)
        return _U32.unpack_from(self.data, pos)[0]

    def count_object(self, where: str, depth: int) -> None:
        self.objects += 1
        if self.objects > self.budget.max_objects:
            raise UnsafeModelError(f"{self.what}: {where}: more than {self.budget.max_objects} objects (refused)")
        if depth > self.budget.max_depth:
            raise self.fail(where, f"nested more than {self.budget.max_depth} levels deep")

    def count_copy(self, n: int, where: str) -> None:
        self.copied += n
        if self.copied > self.budget.max_copied_bytes:
            raise UnsafeModelError(f"{self.what}: {where}: more than {self.budget.max_copied_bytes} bytes of "
                                   "names and small vectors (refused)")

    def table_at(self, pos: int, depth: int, where: str) -> "Table":
        self.count_object(where, depth)
        self.check(pos, 4, where)
        vtable = pos - _I32.unpack_from(self.data, pos)[0]
        vt_size, table_size = self.u16(vtable, where + " (vtable)"), self.u16(vtable + 2, where + " (vtable)")
        if vt_size < 4 or vt_size % 2:
            raise self.fail(where, f"vtable size {vt_size} is not an even number >= 4")
        if table_size < 4:
            raise self.fail(where, f"table size {table_size} is smaller than its vtable offset")
        self.check(vtable, vt_size, where + " (vtable)")
        self.check(pos, table_size, where)
        return Table(self, pos, vtable, vt_size, table_size, depth, where)


class Table:
    """One table: fields by id (the order of declaration in the schema, unions taking two ids)."""

    __slots__ = ("fb", "pos", "vtable", "vt_size", "size", "depth", "where")

    def __init__(self, fb: Flatbuffer, pos: int, vtable: int, vt_size: int, size: int, depth: int,
                 where: str) -> None:
        self.fb, self.pos, self.vtable, self.vt_size, self.size = fb, pos, vtable, vt_size, size
        self.depth, self.where = depth, where

    def field_pos(self, field: int, nbytes: int, name: str) -> int:
        """Absolute position of a present field (0 when absent), which must lie inside the table."""
        slot = 4 + 2 * field
        if slot + 2 > self.vt_size:
            return 0
        offset = _U16.unpack_from(self.fb.data, self.vtable + slot)[0]
        if offset == 0:
            return 0
        if offset + nbytes > self.size:
            raise self.fb.fail(f"{self.where}.{name}", f"field lies outside its {self.size}-byte table")
        return self.pos + offset

    def has(self, field: int) -> bool:
        return self.field_pos(field, 0, f"field {field}") != 0

    def scalar(self, field: int, fmt: str, default: Any, name: str) -> Any:
        """A scalar field: fmt is a struct code ('b', 'B', 'h', 'i', 'I', 'q', 'Q', 'f', '?'...)."""
        size = struct.calcsize(fmt)
        pos = self.field_pos(field, size, name)
        return default if pos == 0 else struct.unpack_from("<" + fmt, self.fb.data, pos)[0]

    def _target(self, field: int, name: str) -> int:
        """Where an offset field points (0 when the field is absent)."""
        pos = self.field_pos(field, 4, name)
        return 0 if pos == 0 else pos + self.fb.u32(pos, f"{self.where}.{name}")

    def table(self, field: int, name: str) -> Table | None:
        target = self._target(field, name)
        return None if target == 0 else self.fb.table_at(target, self.depth + 1, f"{self.where}.{name}")

    def vector_extent(self, field: int, item_size: int, name: str) -> tuple[int, int] | None:
        """(position of the first element, element count) of a vector field, checked but not read."""
        target = self._target(field, name)
        if target == 0:
            return None
        where = f"{self.where}.{name}"
        self.fb.count_object(where, self.depth + 1)
        count = self.fb.u32(target, where)
        if count * item_size > self.fb.size - (target + 4):
            raise self.fb.fail(where, f"{count} elements of {item_size} bytes run past the end of the buffer")
        return target + 4, count

    def tables(self, field: int, name: str) -> list[Table]:
        extent = self.vector_extent(field, 4, name)
        if extent is None:
            return []
        start, count = extent
        out = []
        for i in range(count):
            slot = start + 4 * i
            where = f"{self.where}.{name}[{i}]"
            out.append(self.fb.table_at(slot + self.fb.u32(slot, where), self.depth + 1, where))
        return out

    def numbers(self, field: int, dtype: str, name: str) -> np.ndarray | None:
        """A vector of scalars, copied out (dtype like '<i4', '<f4', 'u1')."""
        dt = np.dtype(dtype)
        extent = self.vector_extent(field, dt.itemsize, name)
        if extent is None:
            return None
        start, count = extent
        self.fb.count_copy(count * dt.itemsize, f"{self.where}.{name}")
        return np.frombuffer(self.fb.data, dtype=dt, count=count, offset=start).copy()

    def ints(self, field: int, dtype: str, name: str) -> tuple[int, ...] | None:
        values = self.numbers(field, dtype, name)
        return None if values is None else tuple(int(v) for v in values)

    def string(self, field: int, name: str) -> str | None:
        """A string field; bytes that are not UTF-8 are kept as surrogate escapes (printable() shows them)."""
        extent = self.vector_extent(field, 1, name)
        if extent is None:
            return None
        start, count = extent
        self.fb.count_copy(count, f"{self.where}.{name}")
        return bytes(self.fb.data[start:start + count]).decode("utf-8", "surrogateescape")

    def union(self, type_field: int, name: str) -> tuple[int, Table | None]:
        """(type, table) of a union, whose type is stored in `type_field` and value in the next field."""
        kind = self.scalar(type_field, "B", 0, name + "_type")
        return (0, None) if kind == 0 else (kind, self.table(type_field + 1, name))

    def struct(self, field: int, fmt: str, name: str) -> tuple | None:
        """An inline struct, read with a struct format (without the byte-order character)."""
        size = struct.calcsize("<" + fmt)
        pos = self.field_pos(field, size, name)
        return None if pos == 0 else struct.unpack_from("<" + fmt, self.fb.data, pos)
