"""Outputs appear whole or not at all: written to a temporary file (or folder) beside the target and
renamed over it at the end; an existing output is replaced only when asked (--force)."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lstm_inspect.errors import UsageError


@contextmanager
def atomic_output(out: str | os.PathLike, force: bool) -> Iterator[str]:
    """Yield a temporary path in the target folder; rename it over `out` only if the body succeeds."""
    target = Path(out)
    if target.exists() and not force:
        raise UsageError(f"{target} already exists (use --force to replace it)")
    if target.is_dir():
        raise UsageError(f"{target} is a directory")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600; give the output the usual mode
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_folder:
    """Build a folder beside `out` and rename it into place; an existing output is replaced only with
    force and only if it looks like an earlier export (nothing but files ending in `suffixes`:
    .onnx models by default; `what` names them in the refusal)."""

    def __init__(self, out: str | os.PathLike, force: bool, suffixes: tuple[str, ...] = (".onnx",),
                 what: str = ".onnx models") -> None:
        self.target = Path(out)
        self.force = force
        self.tmp: str | None = None
        self.suffixes = suffixes
        self.what = what

    def __enter__(self) -> str:
        target = self.target
        if target.exists() or target.is_symlink():
            if not self.force:
                raise UsageError(f"{target} already exists (use --force to replace it)")
            if target.is_symlink() or not target.is_dir():
                raise UsageError(f"{target} exists and is not a folder; refusing to replace it")
            strangers = [p.name for p in target.iterdir() if not (p.is_file() and not p.is_symlink()
                                                                   and p.name.endswith(self.suffixes))]
            if strangers:
                raise UsageError(f"{target} holds files that are not {self.what} ({', '.join(strangers[:3])}); "
                                 f"refusing to replace it")
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise UsageError(f"output folder {parent} does not exist")
        self.tmp = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        target = self.target
        try:
            os.chmod(self.tmp, 0o777 & ~current_umask())
            if target.exists():
                old = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent)
                os.rmdir(old)
                os.rename(target, old)
                try:
                    os.rename(self.tmp, target)
                except BaseException:
                    os.rename(old, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(self.tmp, target)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False
