"""A streaming `.npz` writer: every member's place in the archive is known up front, so blocks can be
written in any interleaving, each as its data is read.

Why not `np.savez` / `zipfile`: they write one member at a time, so a kernel whose four gates are
column slices would be read four times (once per gate, each a strided read). Here each source tensor
is read once, in bands of rows; the caller gathers each gate's columns of a band into one contiguous
buffer and hands it over; it is CRC'd and written with one `pwrite` at its known place. Few, large
system calls and no thread hand-offs: on two cores that beats per-row scatter writes several times
over. The result is a plain ZIP64 archive of uncompressed `.npy` members that
`np.load(..., allow_pickle=False)` (and any zip tool) reads; CRCs are real and checked on read.

CRC-32 comes from `isal` (Intel ISA-L, about 3x zlib's speed here) where it is installed, else from
`zlib`: the same checksum either way.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

try:  # the same CRC-32 as zlib's, faster
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency where it installs
    from zlib import crc32

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01: fixed, so equal inputs give equal archives
_UTF8 = 0x800
_ZIP64 = 45
_FF4 = 0xFFFFFFFF


@dataclass
class Member:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int = 0          # of the local header
    data_offset: int = 0     # of the .npy header
    npy_header: bytes = b""
    crc: int = 0
    received: int = 0        # array bytes received so far (they must arrive in order)
    encoded_name: bytes = field(default=b"", repr=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def size(self) -> int:
        return len(self.npy_header) + self.nbytes


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    import io
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _local_header(m: Member) -> bytes:
    extra = struct.pack("<HHQQ", 1, 16, m.size, m.size)
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, _ZIP64, _UTF8, 0, 0, _DOS_DATE, m.crc, _FF4, _FF4,
                       len(m.encoded_name), len(extra)) + m.encoded_name + extra


def _central_header(m: Member) -> bytes:
    extra = struct.pack("<HHQQQ", 1, 24, m.size, m.size, m.offset)
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, _ZIP64, _ZIP64, _UTF8, 0, 0, _DOS_DATE, m.crc,
                       _FF4, _FF4, len(m.encoded_name), len(extra), 0, 0, 0, 0o100644 << 16, _FF4) \
        + m.encoded_name + extra


def _end_records(count: int, cd_offset: int, cd_size: int) -> bytes:
    zip64_eocd_offset = cd_offset + cd_size
    record = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _ZIP64, _ZIP64, 0, 0, count, count, cd_size, cd_offset)
    locator = struct.pack("<IIQI", 0x07064B50, 0, zip64_eocd_offset, 1)
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), _FF4, _FF4, 0)
    return record + locator + eocd


class NpzStreamWriter:
    """Lay out members, then accept their data piece by piece (in order within each member)."""

    def __init__(self, path: str, members: Iterable[tuple[str, np.dtype, tuple[int, ...]]]) -> None:
        self.members = [Member(f"{name}.npy", np.dtype(dtype), tuple(shape)) for name, dtype, shape in members]
        position = 0
        for m in self.members:
            m.encoded_name = m.name.encode("utf-8")
            m.npy_header = _npy_header(m.dtype, m.shape)
            m.offset = position
            m.data_offset = position + len(_local_header(m))
            position = m.data_offset + m.size
        self.end = position
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for m in self.members:
            m.crc = crc32(m.npy_header)
            _pwrite_all(self.fd, memoryview(m.npy_header), m.data_offset)

    def add(self, index: int, chunk: np.ndarray) -> None:
        """The next values of member `index` (C order); pieces of one member must come in order."""
        m = self.members[index]
        if chunk.dtype != m.dtype:
            raise ValueError(f"{m.name}: chunk dtype {chunk.dtype} != planned {m.dtype}")
        data = memoryview(np.ascontiguousarray(chunk)).cast("B")
        position = m.data_offset + len(m.npy_header) + m.received
        m.received += len(data)
        if m.received > m.nbytes:
            raise ValueError(f"{m.name}: more data than its shape {m.shape} holds")
        m.crc = crc32(data, m.crc)
        _pwrite_all(self.fd, data, position)

    def finish(self) -> None:
        """Write the local headers (with the CRCs) and the central directory."""
        for m in self.members:
            if m.received != m.nbytes:
                raise ValueError(f"{m.name}: received {m.received} of {m.nbytes} bytes")
            os.pwrite(self.fd, _local_header(m), m.offset)
        central = b"".join(_central_header(m) for m in self.members)
        os.pwrite(self.fd, central + _end_records(len(self.members), self.end, len(central)), self.end)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pwrite_all(fd: int, data: memoryview, position: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, position)
        data, position = data[n:], position + n


def row_chunks(length: int, row_bytes: int, target: int = 32 << 20) -> Iterator[slice]:
    """Slices along axis 0 holding about `target` bytes each."""
    step = max(1, target // max(1, row_bytes))
    for start in range(0, length, step):
        yield slice(start, min(length, start + step))
