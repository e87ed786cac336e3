"""Zip archives (.keras, PyTorch .pt): bombs, overlapping members, path-escaping names, links and
encryption are refused before any member is read; members are read with bounded decompression."""
from __future__ import annotations

import re
import stat
import zipfile
import zlib

from lstm_inspect.errors import CorruptModelError, UnsafeModelError, UnsupportedDialectError
from lstm_inspect.safety.limits import DEFAULT_LIMITS, MiB, Limits, first_line, label_of, size_text
from lstm_inspect.safety.text import printable


_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}  # what Keras writes
_DRIVE = re.compile(r"^[A-Za-z]:")
_READ_CHUNK = 1 * MiB


def check_zip(zf: zipfile.ZipFile, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse bombs, overlapping members, duplicate or path-escaping names, links and encryption."""
    label = label_of(zf.filename) if zf.filename else None
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
    label = label_of(zf.filename) if zf.filename else None
    shown = printable(name, 200)
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise CorruptModelError(f"zip member '{shown}' is missing", file=label) from None
    _check_member(info, limits, label)
    try:
        data = _read_at_most(zf, info, info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise CorruptModelError(f"zip member '{shown}' is damaged ({first_line(exc)})", file=label) from None
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
        raise UnsafeModelError(f"zip member '{shown}' is {size_text(info.file_size)}, over the "
                               f"{size_text(limits.max_member_bytes)} limit", file=label)
    if _is_bomb(info.file_size, info.compress_size, limits):
        raise UnsafeModelError(f"zip member '{shown}' expands {size_text(info.compress_size)} to "
                               f"{size_text(info.file_size)} (a zip bomb?)", file=label)


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
        raise UnsafeModelError(f"zip expands to {size_text(total)}, over the {size_text(limits.max_zip_total_bytes)} limit",
                               file=label)
    if _is_bomb(total, packed, limits):
        raise UnsafeModelError(f"zip expands {size_text(packed)} to {size_text(total)} (a zip bomb?)", file=label)


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
