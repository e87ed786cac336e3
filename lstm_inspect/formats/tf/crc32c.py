"""CRC-32C (Castagnoli), the checksum of every TensorFlow table block and tensor.

`crc32c(data, crc)` extends a running checksum like `zlib.crc32` does (standard pre- and
post-inversion), so `crc32c(b, crc32c(a)) == crc32c(a + b)`. TF stores checksums *masked*
(`masked`/`unmask`) so that a CRC of data holding CRCs stays well distributed.

A C implementation is used when one is importable (`google-crc32c`, else `crc32c`: both optional,
neither is needed); otherwise a pure fallback: a byte loop for short inputs and, for long ones,
numpy computing thousands of interleaved lanes at once (slicing-by-4) whose CRCs are then combined
with the zero-extension operator of the CRC (a 32x32 GF(2) matrix applied through byte tables).
`IMPLEMENTATION` names the one in use.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Union

import numpy as np

Buffer = Union[bytes, bytearray, memoryview]

_POLY = 0x82F63B78  # CRC-32C, reflected
_MASK_DELTA = 0xA282EAD8
_M32 = 0xFFFFFFFF


def masked(crc: int) -> int:
    """TF/leveldb's mask: rotate right by 15 bits, then add a constant."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _M32


def unmask(masked_crc: int) -> int:
    rot = (masked_crc - _MASK_DELTA) & _M32
    return ((rot >> 17) | (rot << 15)) & _M32


# ----------------------------------------------------------------------------------------- pure fallback
def _byte_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ _POLY, table >> 1).astype(np.uint32)
    return table


_T0 = _byte_table()
_TABLE = _T0.tolist()
# Slicing-by-4: _SLICE[k][b] is the register after byte b is followed by k zero bytes.
_SLICE = [_T0]
for _ in range(3):
    _SLICE.append((_SLICE[-1] >> 8) ^ _T0[_SLICE[-1] & 0xFF])

_LANE_BYTES = 256  # bytes per lane: a multiple of 4
_MAX_LANES = 8192  # lanes per numpy pass (2 MiB)
_NUMPY_FROM = 4096  # shorter inputs are faster in the byte loop


def _register_python(data: Buffer, reg: int) -> int:
    table = _TABLE
    for byte in data:
        reg = table[(reg ^ byte) & 0xFF] ^ (reg >> 8)
    return reg


def _zero_operator(nbytes: int) -> list[int]:
    """Columns of the linear map 'feed nbytes zero bytes' on a raw register (square-and-multiply)."""
    one_byte = [_register_python(b"\x00", 1 << j) for j in range(32)]
    result = [1 << j for j in range(32)]  # identity
    power = one_byte
    while nbytes:
        if nbytes & 1:
            result = _compose(power, result)
        power = _compose(power, power)
        nbytes >>= 1
    return result


def _compose(outer: list[int], inner: list[int]) -> list[int]:
    return [_apply_columns(outer, column) for column in inner]


def _apply_columns(columns: list[int], x: int) -> int:
    out = 0
    for j in range(32):
        if x >> j & 1:
            out ^= columns[j]
    return out


@lru_cache(maxsize=None)
def _operator_tables(nbytes: int) -> np.ndarray:
    """(4, 256) tables: the zero-extension by nbytes of a register, one table per register byte."""
    columns = np.array(_zero_operator(nbytes), dtype=np.uint32)
    tables = np.zeros((4, 256), dtype=np.uint32)
    values = np.arange(256)
    for byte in range(4):
        for bit in range(8):
            hit = (values >> bit & 1).astype(bool)
            tables[byte, hit] ^= columns[8 * byte + bit]
    return tables


def _bytes_of(regs: np.ndarray) -> np.ndarray:
    """(n, 4) view of the registers' bytes, least significant first."""
    return np.ascontiguousarray(regs, dtype="<u4").view(np.uint8).reshape(-1, 4)


def _apply_tables(tables: np.ndarray, regs: np.ndarray) -> np.ndarray:
    b = _bytes_of(regs)
    return tables[0][b[:, 0]] ^ tables[1][b[:, 1]] ^ tables[2][b[:, 2]] ^ tables[3][b[:, 3]]


def _register_lanes(block: memoryview, reg: int, lanes: int) -> int:
    """The register after `block` (lanes * _LANE_BYTES bytes): every lane at once, then combined."""
    words = np.frombuffer(block, dtype="<u4").reshape(lanes, _LANE_BYTES // 4)
    columns = np.array(words.T, order="C")  # a copy: one row per step, one column per lane
    columns[0, 0] ^= np.uint32(reg)  # a start register acts as if xored into the first 4 bytes
    regs = np.zeros(lanes, dtype=np.uint32)
    t0, t1, t2, t3 = _SLICE
    for row in columns:
        regs ^= row
        b = _bytes_of(regs)
        regs = t3[b[:, 0]] ^ t2[b[:, 1]] ^ t1[b[:, 2]] ^ t0[b[:, 3]]
    span = _LANE_BYTES
    while len(regs) > 1:  # lane k is followed by lane k+1: shift k over k+1's length, then xor
        regs = _apply_tables(_operator_tables(span), regs[0::2]) ^ regs[1::2]
        span *= 2
    return int(regs[0])


def _crc32c_pure(data: Buffer, crc: int = 0) -> int:
    view = memoryview(data).cast("B")
    reg = crc ^ _M32
    pos = 0
    if len(view) >= _NUMPY_FROM:
        while len(view) - pos >= _LANE_BYTES:
            lanes = min(_MAX_LANES, 1 << (((len(view) - pos) // _LANE_BYTES).bit_length() - 1))
            end = pos + lanes * _LANE_BYTES
            reg = _register_lanes(view[pos:end], reg, lanes)
            pos = end
    return _register_python(view[pos:], reg) ^ _M32


# ----------------------------------------------------------------------------------------- selection
_COPY_CHUNK = 4 << 20


def _select() -> tuple[str, Callable[[Buffer, int], int]]:
    try:
        import google_crc32c

        if google_crc32c.implementation == "c":
            return "google-crc32c", _google_extend(google_crc32c.extend)
    except ImportError:
        pass
    try:
        import crc32c as _crc32c_package

        return "crc32c", lambda data, crc=0: _crc32c_package.crc32c(data, crc)
    except ImportError:
        pass
    return "numpy", _crc32c_pure


def _google_extend(extend: Callable[[int, bytes], int]) -> Callable[[Buffer, int], int]:
    """google-crc32c takes `bytes` only (no memoryview, no bytearray): other buffers go in 4 MiB copies."""
    def run(data: Buffer, crc: int = 0) -> int:
        if isinstance(data, bytes):
            return extend(crc, data)
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _COPY_CHUNK):
            crc = extend(crc, bytes(view[start:start + _COPY_CHUNK]))
        return crc
    return run


IMPLEMENTATION, _native = _select()


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC-32C of `data`, continuing from `crc` (the CRC of what came before; 0 to start)."""
    return _native(data, crc)
