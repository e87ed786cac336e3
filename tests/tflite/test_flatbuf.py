"""The generic flatbuffer reader on a buffer written with the `flatbuffers` package itself (a made-up schema:
scalar with default, string, vector, struct, union, vector of tables), and its typed errors."""
from __future__ import annotations

import struct
import subprocess
import sys

import flatbuffers
import pytest

from lstm_inspect.errors import CorruptModelError, UnsafeModelError
from lstm_inspect.formats.tflite.flatbuf import Budget, Flatbuffer


def sample() -> bytes:
    """table Root { a: int = 7 (0); name: string (1); v: [short] (2); s: Pair (3); u: Inner union (4, 5);
    list: [Inner] (6) }   struct Pair { x: float; y: float }   table Inner { x: int (0) }"""
    b = flatbuffers.Builder(0)
    name = b.CreateString("héllo")
    b.StartVector(2, 3, 2)
    for value in reversed((1, -2, 3)):
        b.PrependInt16(value)
    vector = b.EndVector()
    b.StartObject(1)
    b.PrependInt32Slot(0, 42, 0)
    inner = b.EndObject()
    b.StartVector(4, 2, 4)
    b.PrependUOffsetTRelative(inner)
    b.PrependUOffsetTRelative(inner)
    tables = b.EndVector()
    b.StartObject(7)
    b.PrependInt32Slot(0, 7, 7)  # equal to the default: not written
    b.PrependUOffsetTRelativeSlot(1, name, 0)
    b.PrependUOffsetTRelativeSlot(2, vector, 0)
    b.Prep(4, 8)
    b.PrependFloat32(2.5)
    b.PrependFloat32(1.5)
    b.PrependStructSlot(3, b.Offset(), 0)
    b.PrependUint8Slot(4, 1, 0)
    b.PrependUOffsetTRelativeSlot(5, inner, 0)
    b.PrependUOffsetTRelativeSlot(6, tables, 0)
    b.Finish(b.EndObject(), file_identifier=b"TEST")
    return bytes(b.Output())


def test_every_kind_of_field():
    root = Flatbuffer(sample(), what="test").root("Root", b"TEST")
    assert (root.scalar(0, "i", 7, "a"), root.has(0)) == (7, False)
    assert root.string(1, "name") == "héllo"
    assert root.numbers(2, "<i2", "v").tolist() == [1, -2, 3]
    assert root.struct(3, "ff", "s") == (1.5, 2.5)
    kind, inner = root.union(4, "u")
    assert (kind, inner.scalar(0, "i", 0, "x")) == (1, 42)
    listed = root.tables(6, "list")
    assert [t.pos for t in listed] == [inner.pos, inner.pos] and listed[1].where == "Root.list[1]"
    assert (root.table(9, "absent"), root.tables(9, "absent"), root.scalar(30, "q", -1, "beyond")) == (None, [], -1)


def patched(data: bytes, position: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, position, value)
    return bytes(out)


def test_damage_is_named_by_field():
    data = sample()
    root = Flatbuffer(data).root("Root")
    start, _ = root.vector_extent(2, 2, "v")
    cases = [
        (patched(data, start - 4, "<I", 0x7FFFFFFF), lambda r: r.numbers(2, "<i2", "v"),
         r"Root\.v: 2147483647 elements of 2 bytes run past the end"),
        (patched(data, root.vtable + 6, "<H", root.size + 8), lambda r: r.string(1, "name"),
         r"Root\.name: field lies outside its"),
        (patched(data, root.vtable, "<H", 5), lambda r: r, r"Root: vtable size 5 is not an even number"),
        (patched(data, 0, "<I", len(data) + 100), lambda r: r, r"Root: 4 bytes at offset \d+ run past"),
    ]
    for damaged, use, message in cases:
        with pytest.raises(CorruptModelError, match=message):
            use(Flatbuffer(damaged).root("Root"))
    with pytest.raises(CorruptModelError, match="identifier"):
        Flatbuffer(data).root("Root", b"TFL3")
    with pytest.raises(CorruptModelError, match="too short"):
        Flatbuffer(data[:6]).root("Root")


def test_budgets():
    root = Flatbuffer(sample(), Budget(max_depth=0)).root("Root")
    with pytest.raises(CorruptModelError, match=r"Root\.u: nested more than 0 levels"):
        root.union(4, "u")
    root = Flatbuffer(sample(), Budget(max_objects=3)).root("Root")
    with pytest.raises(UnsafeModelError, match="more than 3 objects"):
        root.tables(6, "list")
    root = Flatbuffer(sample(), Budget(max_copied_bytes=4)).root("Root")
    with pytest.raises(UnsafeModelError, match="bytes of names"):
        root.string(1, "name")


def test_reading_path_imports_no_ml_framework():
    """(h5py is not in the list: the parent package lstm_inspect.formats imports it for the Keras readers.)"""
    code = ("import sys, lstm_inspect.formats.tflite.recurrent; "
            "bad = [m for m in ('tensorflow', 'flatbuffers', 'keras', 'tf_keras', 'torch', 'onnx') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
