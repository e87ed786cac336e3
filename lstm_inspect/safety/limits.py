"""Budgets for one input file, and small helpers shared by the input checks.

Model files come from the internet: every reader checks sizes, counts and depths against these
limits before it allocates or follows anything. Defaults are generous for real models; tests pass
smaller ones.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any

from lstm_inspect.errors import NotAModelError
from lstm_inspect.safety.text import printable

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


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def stat_target(path: str | os.PathLike[str], name: str) -> os.stat_result:
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


def label_of(path_or_fileobj: Any) -> str | None:
    if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
        return os.fsdecode(path_or_fileobj)
    name = getattr(path_or_fileobj, "name", None)
    return name if isinstance(name, str) else None


def size_text(n: float) -> str:
    """Human-readable byte count for messages."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return printable(text.splitlines()[0] if text else type(exc).__name__, 300)
