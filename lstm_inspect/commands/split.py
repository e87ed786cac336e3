"""Writers for per-gate blocks: streaming, atomic, safe to load with `allow_pickle=False`.

`split_gates` writes an `.npz` (a zip of `.npy` members, uncompressed) one block at a time, so
memory does not grow with the model. The archive is written to a temporary file in the target
folder and renamed at the end: on any failure nothing is left behind and an existing output is
untouched. Keys are `<direction path>/<block>` exactly as in `summary --format json`.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from lstm_inspect.cells import Block, Direction, Transform, directions, select, with_forget_bias
from lstm_inspect.cells.quant import direction_storage
from lstm_inspect.errors import CorruptModelError
from lstm_inspect.formats import open_model
from lstm_inspect.model import Model, Weight
from lstm_inspect.writers.atomic import atomic_output
from lstm_inspect.writers.npz import NpzStreamWriter, row_chunks

META_KEY = "__meta__"
MATH_LAYOUT = "keras: y = x @ W + h @ U + b; W (input_dim, units), U (units, units), b (units,)"

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass(frozen=True)
class SplitResult:
    output: str
    keys: tuple[str, ...]
    directions: tuple[str, ...]
    bytes_written: int


def sanitize_key(path: str, block: str) -> str:
    """An archive member name that cannot escape: no '..', no absolute or empty parts, no controls."""
    parts = []
    for part in path.split("/") + [block]:
        clean = "".join(ch if ch.isprintable() and ch not in "\\:" else "_" for ch in part).strip()
        if clean in ("", ".", ".."):
            clean = clean.replace(".", "_") or "_"
        parts.append(clean)
    return "/".join(parts)


def unique_keys(keys: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        candidate = key
        while candidate in seen or candidate == META_KEY:
            seen[key] = seen.get(key, 0) + 1
            candidate = f"{key}~{seen[key]}"
        seen.setdefault(candidate, 0)
        out.append(candidate)
    return out


def file_sha256(path: str | os.PathLike) -> str | None:
    p = Path(path)
    if not p.is_file():  # a folder, or a checkpoint prefix (several files, none of them the model)
        return None
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(8 << 20))  # one buffer, refilled: no allocation per chunk
    with open(p, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def metadata(model: Model, dirs: Sequence[Direction], keys: dict[str, list[str]], source: str,
             sha256: str | None) -> dict:
    meta = _keras_metadata(model, dirs, keys, source, sha256)
    if model.framework.value != "keras":  # other frameworks' facts; Keras archives stay as they were
        meta["source"].update(framework=model.framework.value, producer=model.producer)
        for d in dirs:
            meta["directions"][d.path].update(_framework_facts(d))
    return meta


FORGET_BIAS_RULE = ("b_f is written as stored; the cell adds forget_bias to the forget gate at run time, "
                    "so the Keras-math forget gate is σ(x W_f + h U_f + b_f + forget_bias)")


def _framework_facts(d: Direction) -> dict:
    """What a direction of a non-Keras file adds to the archive's metadata (only what it states)."""
    facts: dict = {"source_layout": d.source_layout, "notes": list(d.notes)}
    if d.forget_bias is not None:
        facts.update(forget_bias=d.forget_bias, forget_bias_folded=False, forget_bias_rule=FORGET_BIAS_RULE)
    for key in ("projection_size", "cell_clip", "proj_clip", "go_backwards"):
        if getattr(d, key) is not None:
            facts[key] = getattr(d, key)
    return facts


def _keras_metadata(model: Model, dirs: Sequence[Direction], keys: dict[str, list[str]], source: str,
                    sha256: str | None) -> dict:
    return {
        "tool": "lstm-inspect",
        "schema": 1,
        "source": {"file": os.path.basename(os.path.normpath(source)), "sha256": sha256,
                   "format": model.format, "keras_version": model.keras_version},
        "math_layout": MATH_LAYOUT,
        "directions": {
            d.path: {
                "kind": d.kind.value, "class": d.class_name, "units": d.units, "input_dim": d.input_dim,
                "gates": list(d.gates), "kernel_size": list(d.kernel_size) if d.kernel_size else None,
                "use_bias": d.use_bias, "reset_after": d.reset_after,
                "activation": d.activation, "recurrent_activation": d.recurrent_activation,
                "corrections": list(d.corrections),
                "stored_dtype": d.blocks[0].source.dtype if d.blocks else None,
                "blocks": {b.name: {"key": k, "shape": list(b.shape)} for b, k in zip(d.blocks, keys[d.path])},
                **_other_framework_facts(d),
            } for d in dirs
        },
    }


def _other_framework_facts(d: Direction) -> dict:
    """Facts Keras directions never have, present only when stated: clipping, projection, and per block the
    stored dtype, scales and zero points of quantized weights (the blocks themselves are the dequantized
    float32 values; TFLite float16 blocks are written as stored, float16)."""
    facts = {"projection_size": d.projection_size, "cell_clip": d.cell_clip, "proj_clip": d.proj_clip,
             "quantization": direction_storage(d)}
    return {k: v for k, v in facts.items() if v is not None}



def _streamable(block: Block) -> bool:
    """A plain column slice (or all) of a band of rows of a tensor of rank >= 2, stored as the values
    themselves (not quantized): readable in row chunks of its source. The band is all rows, or a
    contiguous range of them (TF1 kernels stack the W rows and the U rows: [x; h])."""
    if block.transform is not Transform.NONE or len(block.source.shape) < 2 or block.source.quantization:
        return False
    if block.selection is Ellipsis:
        return True
    sel = block.selection
    return isinstance(sel, tuple) and len(sel) == len(block.source.shape) and isinstance(sel[-1], slice) \
        and sel[-1].step in (None, 1) and _row_band(sel) is not None \
        and all(s == slice(None) for s in sel[1:-1])


def _row_band(selection) -> tuple[int, int | None] | None:
    """(start, stop) of the rows a selection takes on axis 0: all of them, or a contiguous range."""
    if selection is Ellipsis:
        return 0, None
    first = selection[0]
    if not isinstance(first, slice) or first.step not in (None, 1):
        return None
    if (first.start is not None and first.start < 0) or (first.stop is not None and first.stop < 0):
        return None
    return first.start or 0, first.stop


def _band_rows(block: Block) -> tuple[int, int]:
    start, stop = _row_band(block.selection)  # type: ignore[misc]
    rows = block.source.shape[0]
    return min(start, rows), rows if stop is None else min(stop, rows)


def write_blocks(tmp: str, blocks: Sequence[tuple[str, Block]], meta: Callable[[], str],
                 progress: ProgressFn | None = None) -> int:
    """Write the blocks (and `__meta__`) into an npz at `tmp`; returns the array bytes written.

    Blocks cut from the same tensor share one sequential read of it, in row chunks (see npzstream).
    """
    placeholder = meta()  # same length as the final text: only the sha256 is filled in later
    members = [(key, np.dtype(b.dtype), b.shape) for key, b in blocks]
    members.append((META_KEY, np.array(placeholder).dtype, ()))
    total = sum(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize for _, dtype, shape in members[:-1])
    # Blocks of the same band of rows of one tensor share one sequential read of those rows.
    by_source: dict[tuple[str, int, int], list[tuple[int, Block]]] = {}
    whole: list[tuple[int, Block]] = []
    for index, (_, block) in enumerate(blocks):
        target = by_source.setdefault((block.source.location or str(id(block.source)),) + _band_rows(block), []) \
            if _streamable(block) else whole
        target.append((index, block))
    writer = NpzStreamWriter(tmp, members)
    done = 0
    try:
        for (_, first, stop), group in by_source.items():
            source = group[0][1].source
            if source.extent is not None:
                done = _copy_extent(writer, group, source, done, total, progress, first, stop)
                continue
            for rows in row_chunks(stop - first, source.nbytes // max(1, source.shape[0])):
                data = source.read(slice(first + rows.start, first + rows.stop))
                for index, block in group:
                    part = data if block.selection is Ellipsis else data[..., block.selection[-1]]
                    writer.add(index, part)
                    done += part.nbytes
                if progress:
                    progress(done, total)
        for index, block in whole:
            part = block.read()
            writer.add(index, part)
            done += part.nbytes
            if progress:
                progress(done, total)
        final = meta()
        if len(final) != len(placeholder):
            raise RuntimeError("metadata changed length while writing")
        writer.add(len(members) - 1, np.array(final))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    # No fsync: like cp, write-back is left to the OS (an fsync of 1 GB takes ~40 s on slow disks);
    # the rename still guarantees that readers never see a half-written archive.
    return done


def _copy_extent(writer: NpzStreamWriter, group: list[tuple[int, Block]], source: Weight, done: int,
                 total: int, progress: ProgressFn | None, first: int = 0, stop: int | None = None) -> int:
    """Copy column blocks straight from the source file's bytes: the rows first..stop of the tensor
    are read once, in bands of rows (one `pread` each); each gate's columns of a band are gathered
    into a contiguous buffer (one strided NumPy copy) and written with one `pwrite`. Memory: a band
    and one gathered band."""
    path, offset = source.extent  # type: ignore[misc]
    width = source.shape[-1]
    itemsize = source.nbytes // max(1, source.size)
    row_bytes = width * itemsize
    per_first_axis = source.size // max(1, source.shape[0]) // max(1, width)  # rows of a 2-D view per axis-0 index
    stop = source.shape[0] if stop is None else stop
    offset += first * per_first_axis * row_bytes
    rows_total = (stop - first) * per_first_axis
    band_rows = next(row_chunks(rows_total, row_bytes), slice(0, 0)).stop
    # Copy elements as unsigned integers of their width: no float conversion, NaN payloads intact.
    element = np.dtype(f"<u{itemsize}")
    band = np.empty((band_rows, width), dtype=element)
    gathered = np.empty(band_rows * width, dtype=element)
    fd = os.open(path, os.O_RDONLY)
    try:
        if offset + rows_total * row_bytes > os.fstat(fd).st_size:
            raise CorruptModelError(f"weight {source.name} extends past the end of the file")
        for rows in row_chunks(rows_total, row_bytes):
            n = rows.stop - rows.start
            _pread_exactly(fd, memoryview(band[:n]).cast("B"), offset + rows.start * row_bytes, source.name)
            for index, block in group:
                columns = slice(None) if block.selection is Ellipsis else block.selection[-1]
                part = band[:n, columns]
                if not part.flags.c_contiguous:
                    out = gathered[:part.size].reshape(part.shape)
                    np.copyto(out, part)
                    part = out
                writer.add(index, part.view(writer.members[index].dtype))
            done += n * row_bytes
            if progress:
                progress(done, total)
    finally:
        os.close(fd)
    return done


def _pread_exactly(fd: int, view: memoryview, position: int, name: str) -> None:
    while len(view):
        got = os.preadv(fd, [view], position)
        if got <= 0:
            raise CorruptModelError(f"weight {name} ends early: the file is truncated")
        view, position = view[got:], position + got


def split_gates(model_path: str | os.PathLike, out: str | os.PathLike, patterns: Iterable[str] = (),
                force: bool = False, progress: ProgressFn | None = None,
                tmp_path: str | None = None, source_hash: bool = True,
                forget_bias: float | None = None) -> SplitResult:
    """Write every selected direction's per-gate blocks to `out` (.npz), atomically.

    With `tmp_path` the caller owns the temporary file (the guarded CLI: the child writes it, the
    parent renames it); otherwise this function creates it beside `out` and renames it itself.
    `source_hash=False` records no sha256 of the source in `__meta__` (it is the largest CPU cost
    of splitting a big file: about 1 s per GB here).
    """
    with open_model(model_path) as model:
        dirs = with_forget_bias(select(directions(model), patterns), forget_bias)
        keys = {d.path: unique_keys([sanitize_key(d.path, b.name) for b in d.blocks]) for d in dirs}
        # Keys must also be unique across directions (two hostile paths may sanitise alike).
        flat = unique_keys([k for d in dirs for k in keys[d.path]])
        it = iter(flat)
        keys = {d.path: [next(it) for _ in d.blocks] for d in dirs}
        # Hash the source on the other core while the blocks are copied (hashlib drops the GIL).
        hashed = source_hash and Path(model_path).is_file()
        digest = _background(file_sha256, str(model_path)) if hashed else (lambda: None)
        state = {"done": False}

        def meta_text() -> str:
            sha = digest() if state["done"] else ("0" * 64 if hashed else None)
            state["done"] = True
            return json.dumps(metadata(model, dirs, keys, str(model_path), sha), indent=1)

        blocks = [(k, b) for d in dirs for b, k in zip(d.blocks, keys[d.path])]
        if tmp_path is not None:
            written = write_blocks(tmp_path, blocks, meta_text, progress)
        else:
            with atomic_output(out, force) as tmp:
                written = write_blocks(tmp, blocks, meta_text, progress)
    return SplitResult(str(out), tuple(flat), tuple(d.path for d in dirs), written)


def _background(fn: Callable[..., str | None], *args: object) -> Callable[[], str | None]:
    """Run fn in a thread now; the returned callable waits for its result (re-raising its error)."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as err:  # handed to the caller below
            result["error"] = err

    thread = threading.Thread(target=work, daemon=True)
    thread.start()

    def wait() -> str | None:
        thread.join()
        if "error" in result:
            raise result["error"]  # type: ignore[misc]
        return result["value"]  # type: ignore[return-value]
    return wait
