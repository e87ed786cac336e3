"""A streaming `.npz` writer: every member's place in the archive is known up front, so blocks can be
written in any interleaving, as their data is read, with the CRC and the write on other cores.

Why not `np.savez` / `zipfile`: they write one member at a time, so a kernel whose four gates are
column slices must be read four times (once per gate, each a strided read), and the CRC, the copy and
the write run one after the other on one core. Here each source tensor is read once, in row chunks;
each chunk is cut into its gate blocks, whose bytes go to a CRC thread and a `pwrite` thread while the
next chunk is read. The result is a plain ZIP64 archive of uncompressed `.npy` members that
`np.load(..., allow_pickle=False)` (and any zip tool) reads; CRCs are real and checked on read.
"""
from __future__ import annotations

import os
import queue
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01: fixed, so equal inputs give equal archives
_UTF8 = 0x800
_ZIP64 = 45
_FF4 = 0xFFFFFFFF
_IOV_MAX = 1024  # Linux's limit on buffers per pwritev


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
    """Lay out members, then accept their data chunk by chunk (in order within each member)."""

    def __init__(self, path: str, members: Iterable[tuple[str, np.dtype, tuple[int, ...]]],
                 queue_depth: int = 4) -> None:
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
        self._crc_queue: queue.Queue = queue.Queue(queue_depth)
        self._write_queue: queue.Queue = queue.Queue(queue_depth)
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._crc_worker, daemon=True),
                         threading.Thread(target=self._write_worker, daemon=True)]
        for t in self._threads:
            t.start()
        for i, m in enumerate(self.members):
            self._submit(i, memoryview(m.npy_header), header=True)

    # -- producer side ----------------------------------------------------------------------
    def add_segments(self, index: int, segments: list[memoryview], pending: "Pending") -> None:
        """The next bytes of member `index`, as pieces of a buffer the caller reuses only after
        `pending.wait()` (both workers are done with it)."""
        m = self.members[index]
        size = sum(len(seg) for seg in segments)
        position = m.data_offset + len(m.npy_header) + m.received
        m.received += size
        if m.received > m.nbytes:
            raise ValueError(f"{m.name}: more data than its shape {m.shape} holds")
        self._raise_worker_error()
        pending.expect(2)  # the CRC worker and the write worker each release it once
        item = (index, position, segments, pending)
        self._crc_queue.put(item)
        self._write_queue.put(item)

    def add(self, index: int, chunk: np.ndarray) -> None:
        """The next bytes of member `index` (C order); chunks of one member must come in order."""
        m = self.members[index]
        if chunk.dtype != m.dtype:
            raise ValueError(f"{m.name}: chunk dtype {chunk.dtype} != planned {m.dtype}")
        data = np.ascontiguousarray(chunk)
        self._submit(index, memoryview(data).cast("B"))

    def _submit(self, index: int, data: memoryview, header: bool = False) -> None:
        m = self.members[index]
        if header:
            position = m.data_offset
        else:
            position = m.data_offset + len(m.npy_header) + m.received
            m.received += len(data)
            if m.received > m.nbytes:
                raise ValueError(f"{m.name}: more data than its shape {m.shape} holds")
        self._raise_worker_error()
        item = (index, position, [data], None)
        self._crc_queue.put(item)
        self._write_queue.put(item)

    def finish(self) -> None:
        """Wait for the workers, then write local headers (with CRCs) and the central directory."""
        self._stop_workers()
        self._raise_worker_error()
        for m in self.members:
            if m.received != m.nbytes:
                raise ValueError(f"{m.name}: received {m.received} of {m.nbytes} bytes")
            os.pwrite(self.fd, _local_header(m), m.offset)
        central = b"".join(_central_header(m) for m in self.members)
        os.pwrite(self.fd, central + _end_records(len(self.members), self.end, len(central)), self.end)
        os.close(self.fd)
        self.fd = -1

    def abort(self) -> None:
        self._stop_workers()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- workers ----------------------------------------------------------------------------
    def _stop_workers(self) -> None:
        if not any(t.is_alive() for t in self._threads):
            return
        self._crc_queue.put(None)
        self._write_queue.put(None)
        for t in self._threads:
            t.join()

    def _raise_worker_error(self) -> None:
        if self._errors:
            raise self._errors[0]

    def _crc_worker(self) -> None:  # zlib.crc32 releases the GIL on large buffers
        self._drain(self._crc_queue, lambda i, _pos, segments: self._update_crc(i, segments))

    def _write_worker(self) -> None:  # so does os.pwrite
        self._drain(self._write_queue, self._pwrite)

    def _update_crc(self, index: int, segments: list[memoryview]) -> None:
        m = self.members[index]
        crc = m.crc
        for seg in segments:
            crc = zlib.crc32(seg, crc)
        m.crc = crc

    def _pwrite(self, _index: int, position: int, segments: list[memoryview]) -> None:
        for start in range(0, len(segments), _IOV_MAX):
            batch = segments[start:start + _IOV_MAX]
            total = sum(len(seg) for seg in batch)
            written = os.pwritev(self.fd, batch, position)
            if written != total:  # short write (rare on regular files): finish piece by piece
                self._pwrite_rest(batch, position, written)
            position += total

    def _pwrite_rest(self, batch: list[memoryview], position: int, skip: int) -> None:
        for seg in batch:
            if skip >= len(seg):
                skip -= len(seg)
                position += len(seg)
                continue
            data, position, skip = seg[skip:], position + skip, 0
            while len(data):
                n = os.pwrite(self.fd, data, position)
                data, position = data[n:], position + n

    def _drain(self, q: queue.Queue, handle) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            index, position, segments, pending = item
            try:
                if not self._errors:  # after an error keep draining so the producer never blocks
                    handle(index, position, segments)
            except BaseException as err:  # reported to the producer on its next call
                self._errors.append(err)
            finally:
                if pending is not None:
                    pending.release()


class Pending:
    """Counts the workers still using a buffer; `wait()` returns when none is."""

    def __init__(self) -> None:
        self._count = 0
        self._done = threading.Condition()

    def expect(self, n: int) -> None:
        with self._done:
            self._count += n

    def release(self) -> None:
        with self._done:
            self._count -= 1
            if self._count <= 0:
                self._done.notify_all()

    def wait(self) -> None:
        with self._done:
            self._done.wait_for(lambda: self._count <= 0)


def row_chunks(length: int, row_bytes: int, target: int = 16 << 20) -> Iterator[slice]:
    """Slices along axis 0 holding about `target` bytes each."""
    step = max(1, target // max(1, row_bytes))
    for start in range(0, length, step):
        yield slice(start, min(length, start + step))
