"""Architecture snapshots ("lock files") and the checks built on them: pure library code.

`snapshot_data(path)` reads a model into a plain, JSON-ready dict (the lock file of
`lstm-inspect snapshot`, schema "lstm-inspect/snapshot" version 1, see the README's "Use in CI"). It runs in
the guarded child. Everything else here works on those dicts only:

- `load_lock` parses and validates a lock file (a malformed one is a CorruptModelError, exit 2);
- `compare(expected, actual)` matches layers by name (a removed + added layer of the same class and
  weight shapes at the same position is "renamed"), recurrent directions by path, and reports every
  difference as a `Finding`, grouped into one `CheckResult` per layer (one JUnit test case each);
- `finite_check`, `max_params_check` are the other `check` options;
- `diff_data(a, b)` (guarded child) adds, for directions present in both with equal block shapes,
  the relative change ||B - A|| / ||A|| of every W/U/b block.

Weight checksums: sha256 over `b"<dtype>;<d0>,<d1>,...;"` followed by the tensor's raw bytes in
C order, read in row slices so memory does not grow with the model. The same tensor saved in
another dialect (an .h5 and its .keras re-save) has the same checksum.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from lstm_inspect import __version__
from lstm_inspect.cells import GATE_MEANING, Block, Direction, Transform, directions
from lstm_inspect.commands.summary import direction_dict
from lstm_inspect.errors import CorruptModelError, UnsupportedDialectError, UsageError
from lstm_inspect.formats import open_model
from lstm_inspect.model import Framework, Layer, Model, Weight, strip_tf_suffix

SCHEMA = "lstm-inspect/snapshot"
VERSION = 1
CHECKSUM = "sha256(<dtype>;<comma-separated shape>; + raw bytes in C order)"
MAX_LOCK_BYTES = 64 << 20
CHUNK_BYTES = 8 << 20  # rows read per slice when hashing or scanning a tensor

# Config entries worth locking: they change what a layer computes without always changing a shape.
CONFIG_FACTS = ("merge_mode", "units", "output_dim", "filters", "kernel_size", "strides", "padding",
                "dilation_rate", "data_format", "activation", "recurrent_activation", "use_bias",
                "return_sequences", "return_state", "stateful", "go_backwards", "reset_after",
                "unroll", "input_dim")
DIRECTION_FIELDS = ("kind", "class", "units", "input_dim", "gates", "kernel_size", "use_bias",
                    "reset_after", "activation", "recurrent_activation", "return_sequences",
                    "return_state", "stateful", "go_backwards")
FLAG_FIELDS = ("return_sequences", "return_state", "stateful", "go_backwards")
# Config entries a recurrent direction already reports (compared there, not twice).
DIRECTION_COVERED = frozenset({"units", "output_dim", "filters", "kernel_size", "activation",
                               "recurrent_activation", "use_bias", "reset_after"} | set(FLAG_FIELDS))
IGNORED_CLASSES = frozenset({"InputLayer"})  # present in some dialects only; holds no weights


# ------------------------------------------------------------------------------------------------
# Building a snapshot (runs in the guarded child)

def snapshot_data(path: str | os.PathLike, with_checksums: bool = True, finite: bool = False) -> dict:
    """The lock-file dict of one model. `finite=True` adds a "nonfinite" list (not part of the lock)."""
    with open_model(path) as model:
        return build_snapshot(model, str(path), with_checksums=with_checksums, finite=finite)


def build_snapshot(model: Model, source: str, with_checksums: bool = True, finite: bool = False) -> dict:
    dirs = directions(model)
    blocks_of: dict[tuple, list[tuple[Direction, Block]]] = {}
    for d in dirs:
        for b in d.blocks:
            blocks_of.setdefault(_wkey(b.source), []).append((d, b))
    nonfinite: list[dict] | None = [] if finite else None
    total = model.total_params
    trainable = model.trainable_params
    by_dtype: dict[str, int] = {}
    for w in model.all_weights():
        by_dtype[w.dtype] = by_dtype.get(w.dtype, 0) + w.nbytes
    data: dict[str, Any] = {
        "schema": SCHEMA,
        "version": VERSION,
        "tool": {"name": "lstm-inspect", "version": __version__},
        "checksum": CHECKSUM if with_checksums else None,
        "source": {"file": os.path.basename(os.path.normpath(source)), "format": model.format,
                   "keras_version": model.keras_version, "backend": model.backend,
                   # other frameworks only: Keras lock files stay as they were
                   **({"framework": model.framework.value} if model.framework is not Framework.KERAS else {})},
        "model": {"name": model.name, "class": model.class_name, "has_config": model.has_config},
        "totals": {"params": total, "trainable_params": trainable, "non_trainable_params": total - trainable,
                   "bytes": sum(by_dtype.values()), "bytes_by_dtype": dict(sorted(by_dtype.items()))},
        "layers": [_layer_record(layer, "", with_checksums, blocks_of, nonfinite) for layer in model.layers],
        "recurrent": [direction_record(d) for d in dirs],
    }
    if nonfinite is not None:
        data["nonfinite"] = nonfinite
    return data


def _wkey(w: Weight) -> tuple:
    return (w.location, w.name, w.shape)


def _layer_record(layer: Layer, prefix: str, checksums: bool, blocks_of: dict,
                  nonfinite: list[dict] | None) -> dict:
    path = f"{prefix}/{layer.name}" if prefix else layer.name
    weights: list[tuple[str | None, Weight]] = [(None, w) for w in layer.weights]
    for child in layer.children:
        if child.role:  # wrapped layers (Bidirectional sides, TimeDistributed, RNN cells) belong here
            weights.extend((child.role, w) for w in child.all_weights())
    records = []
    for part, w in weights:
        rec: dict[str, Any] = {"name": w.name, "part": part, "shape": list(w.shape), "dtype": w.dtype,
                               "trainable": w.trainable, "params": w.size}
        if checksums:
            rec["sha256"] = tensor_sha256(w)
        records.append(rec)
        if nonfinite is not None:
            nonfinite.extend(_scan_weight(w, path, blocks_of.get(_wkey(w))))
    out: dict[str, Any] = {
        "name": layer.name,
        "class": layer.class_name,
        "trainable": layer.trainable,
        "inferred": layer.inferred,
        "params": layer.params,
        "config": config_facts(layer.config),
        "wraps": [{"role": c.role, "name": c.name, "class": c.class_name} for c in layer.children if c.role],
        "weights": records,
    }
    nested = [c for c in layer.children if not c.role]
    if nested:
        out["layers"] = [_layer_record(c, path, checksums, blocks_of, nonfinite) for c in nested]
    return out


def config_facts(config: Mapping | None) -> dict:
    """The entries of CONFIG_FACTS the layer's config states, as JSON scalars or lists."""
    if not isinstance(config, Mapping):
        return {}
    out = {}
    for key in CONFIG_FACTS:
        if key in config:
            out[key] = _plain(config[key])
    return out


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):  # Keras 3 serialises activations as objects
        inner = value.get("config")
        name = inner.get("name") if isinstance(inner, Mapping) else None
        return str(name or value.get("class_name"))
    return str(value)


_DIRECTION_KEYS = ("path", "kind", "class", "units", "input_dim", "gates", "params", "blocks", "kernel_size",
                   "use_bias", "reset_after", "activation", "recurrent_activation", "return_sequences",
                   "return_state", "stateful", "go_backwards")


def direction_record(d: Direction) -> dict:
    """The summary's direction entry, restricted to the facts a lock file pins."""
    full = direction_dict(d)
    return {"layer": d.path.split("/", 1)[0] or d.layer_name,  # ONNX node paths may start with "/"
            **{k: full[k] for k in _DIRECTION_KEYS}}


# --- reading tensors in row slices -------------------------------------------------------------

def _itemsize(dtype: str) -> int:
    if dtype == "bfloat16":
        return 2
    try:
        return max(1, np.dtype(dtype).itemsize)
    except TypeError:
        return 8


def iter_rows(w: Weight, chunk_bytes: int | None = None) -> Iterator[np.ndarray]:
    """The tensor in C order as consecutive row slices of at most about `chunk_bytes`."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    shape = w.shape
    if not shape or shape[0] == 0 or w.size == 0:
        yield np.asarray(w.read())
        return
    row = math.prod(shape[1:]) * _itemsize(w.dtype)
    step = max(1, chunk_bytes // max(1, row))
    if step >= shape[0]:
        yield np.asarray(w.read())
        return
    for start in range(0, shape[0], step):
        yield np.asarray(w.read(np.s_[start:min(start + step, shape[0])]))


def iter_block_rows(block: Block, chunk_bytes: int | None = None, dequantize: bool = False) -> Iterator[np.ndarray]:
    """A gate block as row slices (the same rows for A and B of a diff), whole when it has a transform.

    `dequantize=True` hands out real values (`Weight.read_values`) for quantized weights, as
    `Block.read()` does; the default hands out the stored values of row slices."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    shape = block.shape
    rows = block_row_range(block)
    if rows is None:
        yield block.read()
        return
    row = math.prod(shape[1:]) * _itemsize(block.source.dtype)
    step = max(1, chunk_bytes // max(1, row))
    if step >= shape[0]:
        yield block.read()
        return
    read = block.source.read_values if dequantize else block.source.read
    sel = block.selection
    rest = (Ellipsis,) if sel is Ellipsis else tuple(sel[1:])
    first = rows.start
    for start in range(0, shape[0], step):
        yield np.asarray(read((slice(first + start, first + min(start + step, shape[0])),) + rest))


def block_row_range(block: Block) -> range | None:
    """The rows of the source tensor a block's rows are, when the block is a plain slice of it that
    row slices can be read from (no transform, rank >= 2, leading selection a step-1 slice); else None."""
    shape, sel = block.shape, block.selection
    if block.transform is not Transform.NONE or len(shape) < 2 or shape[0] == 0:
        return None
    if len(block.source.shape) != len(shape):
        return None
    if sel is Ellipsis:
        return range(shape[0])
    if not (isinstance(sel, tuple) and sel and isinstance(sel[0], slice) and sel[0].step in (None, 1)):
        return None
    start, stop, _ = sel[0].indices(block.source.shape[0])
    return range(start, stop) if stop - start == shape[0] else None


def iter_block_cols(block: Block, chunk_bytes: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first column, values) of a block as slices of its last axis, dequantized: the block's whole
    leading axes, a band of columns at a time (whole when it has a transform or an unusual selection)."""
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    shape, sel = block.shape, block.selection
    last = _column_slice(block)
    per_column = math.prod(shape[:-1]) * _itemsize(block.source.dtype)
    step = max(1, chunk_bytes // max(1, per_column))
    if last is None or not shape or step >= shape[-1]:
        yield 0, block.read()
        return
    lead = (slice(None),) * (len(shape) - 1) if sel is Ellipsis else tuple(sel[:-1])
    for start in range(0, shape[-1], step):
        stop = min(start + step, shape[-1])
        yield start, np.asarray(block.source.read_values(lead + (slice(last.start + start, last.start + stop),)))


def _column_slice(block: Block) -> range | None:
    shape, sel = block.shape, block.selection
    if block.transform is not Transform.NONE or not shape or len(block.source.shape) != len(shape):
        return None
    if sel is Ellipsis:
        return range(shape[-1])
    if not (isinstance(sel, tuple) and len(sel) == len(shape)
            and all(isinstance(s, slice) and s.step in (None, 1) for s in sel)):
        return None
    start, stop, _ = sel[-1].indices(block.source.shape[-1])
    return range(start, stop) if stop - start == shape[-1] else None


def _check_numeric(arr: np.ndarray, w: Weight) -> np.ndarray:
    if arr.dtype.hasobject:
        raise CorruptModelError(f"weight {w.name} does not hold numbers (dtype {arr.dtype})")
    return np.ascontiguousarray(arr)


def tensor_sha256(w: Weight) -> str:
    digest = hashlib.sha256(f"{w.dtype};{','.join(str(d) for d in w.shape)};".encode())
    for chunk in iter_rows(w):
        array = _check_numeric(chunk, w)
        if array.size:  # an empty tensor (a dimension of 0) adds no bytes; memoryview cannot cast it
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _count_nonfinite(arr: np.ndarray, dtype: str) -> tuple[int, int]:
    """(NaN count, Inf count)."""
    if dtype == "bfloat16" and arr.dtype.itemsize == 2 and arr.dtype.kind != "f":
        bits = arr.view(np.uint16)
        special = (bits & 0x7F80) == 0x7F80
        nan = int(np.count_nonzero(special & ((bits & 0x007F) != 0)))
        return nan, int(np.count_nonzero(special)) - nan
    if arr.dtype.kind not in "fc":
        return 0, 0
    return int(np.count_nonzero(np.isnan(arr))), int(np.count_nonzero(np.isinf(arr)))


def _scan_weight(w: Weight, layer_path: str, blocks: list[tuple[Direction, Block]] | None) -> list[dict]:
    """NaN/Inf in one tensor: per gate block for recurrent weights, else for the whole tensor."""
    found = []
    if blocks:
        for d, b in blocks:
            nan = inf = 0
            for chunk in iter_block_rows(b):
                n, i = _count_nonfinite(_check_numeric(chunk, w), w.dtype)
                nan, inf = nan + n, inf + i
            if nan or inf:
                gate = b.name.partition("_")[2]
                found.append({"tensor": w.name, "layer": layer_path, "direction": d.path, "block": b.name,
                              "gate": gate or None, "nan": nan, "inf": inf, "size": b.size})
        return found
    nan = inf = 0
    for chunk in iter_rows(w):
        n, i = _count_nonfinite(_check_numeric(chunk, w), w.dtype)
        nan, inf = nan + n, inf + i
    if nan or inf:
        found.append({"tensor": w.name, "layer": layer_path, "direction": None, "block": None,
                      "gate": None, "nan": nan, "inf": inf, "size": w.size})
    return found


# ------------------------------------------------------------------------------------------------
# Writing and reading lock files

def dumps(data: Mapping) -> str:
    """Stable text: sorted keys, two-space indent, one trailing newline (diffs cleanly in git)."""
    lock = {k: v for k, v in data.items() if k != "nonfinite"}
    return json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def load_lock(path: str | os.PathLike) -> dict:
    """Read and validate a lock file; anything unexpected is a CorruptModelError naming the file."""
    label = str(path)
    try:
        if os.path.isdir(path):
            raise CorruptModelError("is a directory, not a snapshot file", file=label)
        with open(path, "rb") as fh:
            raw = fh.read(MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        raise UsageError("lock file not found", file=label) from None
    except OSError as err:
        raise UsageError(f"cannot read the lock file ({err.strerror or err})", file=label) from None
    if len(raw) > MAX_LOCK_BYTES:
        raise CorruptModelError(f"larger than {MAX_LOCK_BYTES >> 20} MiB: not a snapshot", file=label)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptModelError(f"not a valid snapshot: not JSON ({str(err).splitlines()[0][:200]})",
                                file=label) from None
    validate(data, label)
    return data


class _Invalid(Exception):
    pass


def validate(data: Any, label: str = "snapshot") -> None:
    """Raise CorruptModelError unless `data` is a snapshot this version can compare."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CorruptModelError(f"not an lstm-inspect snapshot (no \"schema\": \"{SCHEMA}\")", file=label)
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptModelError("snapshot has no integer \"version\"", file=label)
    if version > VERSION:
        raise CorruptModelError(f"snapshot version {version} is newer than this lstm-inspect understands "
                                f"(version {VERSION}); upgrade lstm-inspect", file=label)
    if version < 1:
        raise CorruptModelError(f"snapshot version {version} is not valid", file=label)
    try:
        _obj(data, "source", {"file": str, "format": str})
        _obj(data, "totals", {"params": int, "trainable_params": int, "non_trainable_params": int})
        _list(data, "layers", "layers", _valid_layer)
        _list(data, "recurrent", "recurrent", _valid_direction)
    except _Invalid as err:
        raise CorruptModelError(f"malformed snapshot: {err}", file=label) from None


def _type_ok(value: Any, kind: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "shape":
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if kind == "strs":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "scalar":
        return value is None or isinstance(value, (bool, int, float, str)) or (
            isinstance(value, list) and all(v is None or isinstance(v, (bool, int, float, str)) for v in value))
    if isinstance(kind, tuple):
        return any(_type_ok(value, k) for k in kind)
    if kind is None:
        return value is None
    return isinstance(value, kind)


_KIND_TEXT = {int: "an integer", str: "a string", bool: "true or false", dict: "an object",
              "shape": "a list of integers", "strs": "a list of strings"}


def _need(obj: Mapping, key: str, kind: Any, where: str, optional: bool = False) -> None:
    if key not in obj:
        if optional:
            return
        raise _Invalid(f"{where}: missing \"{key}\"")
    if not _type_ok(obj[key], kind):
        text = _KIND_TEXT.get(kind, "of another type") if not isinstance(kind, tuple) else "of another type"
        raise _Invalid(f"{where}.{key}: expected {text}")


def _obj(data: Mapping, key: str, fields: Mapping[str, Any]) -> None:
    if not isinstance(data.get(key), dict):
        raise _Invalid(f"\"{key}\" is missing or not an object")
    for name, kind in fields.items():
        _need(data[key], name, kind, key)


def _list(data: Mapping, key: str, where: str, check) -> None:
    if not isinstance(data.get(key), list):
        raise _Invalid(f"{where}: missing or not a list")
    for i, item in enumerate(data[key]):
        if not isinstance(item, dict):
            raise _Invalid(f"{where}[{i}]: not an object")
        check(item, f"{where}[{i}]")


def _valid_layer(layer: dict, where: str, depth: int = 0) -> None:
    if depth > 50:
        raise _Invalid(f"{where}: layers nested too deeply")
    _need(layer, "name", str, where)
    _need(layer, "class", str, where)
    _need(layer, "trainable", bool, where)
    _need(layer, "params", int, where)
    _need(layer, "config", dict, where, optional=True)
    if isinstance(layer.get("config"), dict):
        for k, v in layer["config"].items():
            if not _type_ok(v, "scalar"):
                raise _Invalid(f"{where}.config.{k}: expected a JSON scalar or list of scalars")
    if "wraps" in layer:
        _list(layer, "wraps", f"{where}.wraps",
              lambda item, w: (_need(item, "role", str, w), _need(item, "class", str, w),
                               _need(item, "name", str, w)))

    def weight(item: dict, w: str) -> None:
        _need(item, "name", str, w)
        _need(item, "shape", "shape", w)
        _need(item, "dtype", str, w)
        _need(item, "trainable", bool, w, optional=True)
        _need(item, "params", int, w, optional=True)
        _need(item, "sha256", (str, None), w, optional=True)
        _need(item, "part", (str, None), w, optional=True)

    _list(layer, "weights", f"{where}.weights", weight)
    if "layers" in layer:
        _list(layer, "layers", f"{where}.layers", lambda item, w: _valid_layer(item, w, depth + 1))


def _valid_direction(d: dict, where: str) -> None:
    for key, kind in (("path", str), ("kind", str), ("class", str), ("units", int), ("input_dim", int),
                      ("gates", "strs"), ("params", int), ("blocks", dict)):
        _need(d, key, kind, where)
    for name, shape in d["blocks"].items():
        if not _type_ok(shape, "shape"):
            raise _Invalid(f"{where}.blocks.{name}: expected a list of integers")
    for key in ("use_bias", "reset_after") + FLAG_FIELDS:
        _need(d, key, (bool, None), where, optional=True)
    for key in ("activation", "recurrent_activation", "layer"):
        _need(d, key, (str, None), where, optional=True)
    _need(d, "kernel_size", ("shape", None), where, optional=True)


# ------------------------------------------------------------------------------------------------
# Findings

class _Pairs(tuple):
    """A frozen dict (key, value) pairs, turned back into a dict by `to_dict`."""


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _Pairs((k, _freeze(v)) for k, v in value.items())
    return value


@dataclass(frozen=True)
class Finding:
    """One failed (or noteworthy) fact: which check, about what, what changed."""

    check: str        # the check group: against, weights, expect, max-params, finite
    subject: str      # the layer / direction path / tensor it is about ("model" for totals)
    kind: str         # short code: units, layer-added, layer-renamed, shape, dtype, values, nonfinite...
    message: str      # one line for people
    expected: Any = None
    actual: Any = None
    severity: str = "error"  # error fails the check; warning and notice do not

    @staticmethod
    def make(check: str, subject: str, kind: str, message: str, expected: Any = None, actual: Any = None,
             severity: str = "error") -> "Finding":
        return Finding(check, subject, kind, message, _freeze(expected), _freeze(actual), severity)

    def to_dict(self) -> dict:
        return {"check": self.check, "subject": self.subject, "kind": self.kind, "message": self.message,
                "expected": _thaw(self.expected), "actual": _thaw(self.actual), "severity": self.severity}


def _thaw(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class CheckResult:
    """One check (one JUnit test case): passes when none of its findings is an error."""

    name: str
    group: str
    findings: tuple[Finding, ...] = ()

    @property
    def passed(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "passed": self.passed,
                "findings": [f.to_dict() for f in self.findings]}


@dataclass(frozen=True)
class CheckReport:
    file: str
    checks: tuple[CheckResult, ...]
    against: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for c in self.checks for f in c.findings)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def to_dict(self) -> dict:
        errors = sum(1 for f in self.findings if f.severity == "error")
        return {"file": self.file, "against": self.against, "ok": self.ok,
                "summary": {"checks": len(self.checks), "failed": len(self.failed), "errors": errors,
                            "warnings": sum(1 for f in self.findings if f.severity == "warning")},
                "checks": [c.to_dict() for c in self.checks]}


# ------------------------------------------------------------------------------------------------
# Structural comparison

@dataclass(frozen=True)
class Comparison:
    checks: tuple[CheckResult, ...]
    pairs: tuple[tuple[str, str], ...] = ()  # (path in A, path in B) of directions with equal blocks
    # across frameworks: (the path a direction of B was compared under, its own path in B), for recurrent
    # layers paired by position because no name matched (see align_recurrent_layers)
    aligned: tuple[tuple[str, str], ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(f for c in self.checks for f in c.findings)

    @property
    def identical(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)


def _fmt(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "none"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _top(layers: list) -> list[dict]:
    return [layer for layer in layers if layer.get("class") not in IGNORED_CLASSES]


def _signature(layer: dict) -> tuple:
    return (layer["class"], tuple((tuple(w["shape"]), w["dtype"]) for w in layer["weights"]))


def _normal_weight_name(name: str, layer: str) -> str:
    short = strip_tf_suffix(name).rsplit("/", 1)[-1]
    if layer and short.startswith(layer + "_") and len(short) > len(layer) + 1:
        short = short[len(layer) + 1:]  # Keras 1: <layer>_W_i
    return short


def _weight_label(w: dict, layer: str, k: int) -> str:
    """kernel, forward kernel, W_i...: the weight as people call it (its position when unnamed)."""
    short = _normal_weight_name(w["name"], layer) or f"weight #{k + 1}"
    part = w.get("part")
    return f"{part} {short}" if part and part not in ("cell", "layer") else short


def match_layers(expected: list[dict], actual: list[dict]):
    """Pairs (i, j) by name, plus renamed pairs (same position, class and weight shapes).

    Returns (pairs, renamed, removed, added) as index lists into `expected` / `actual`.
    """
    by_name: dict[str, int] = {}
    for j, layer in enumerate(actual):
        by_name.setdefault(layer["name"], j)
    used: set[int] = set()
    pairs, removed = [], []
    for i, layer in enumerate(expected):
        j = by_name.get(layer["name"])
        if j is not None and j not in used:
            pairs.append((i, j))
            used.add(j)
        else:
            removed.append(i)
    added = [j for j in range(len(actual)) if j not in used]
    renamed = []
    for i in list(removed):
        if i in added and _signature(expected[i]) == _signature(actual[i]):
            renamed.append((i, i))
            removed.remove(i)
            added.remove(i)
    return pairs, renamed, removed, added


def compare(expected: Mapping, actual: Mapping, *, semantic: bool = False, weights: bool = False) -> Comparison:
    """Every difference between two snapshots. `semantic=True` (diff) ignores the container format and
    weight-name spelling; `weights=True` also compares the per-tensor checksums."""
    ctx = _Ctx(semantic, weights, group="structure" if semantic else "against",
               cross=semantic and _framework(expected) != _framework(actual))
    aligned: dict[str, str] = {}
    alignment_notes: list[Finding] = []
    if ctx.cross:
        actual, aligned, alignment_notes = align_recurrent_layers(ctx, expected, actual)
    checks: list[CheckResult] = []
    exp_dirs = {d["path"]: d for d in expected["recurrent"]}
    act_dirs = {d["path"]: d for d in actual["recurrent"]}
    exp_layers, act_layers = _top(expected["layers"]), _top(actual["layers"])
    pairs, renamed, removed, added = match_layers(exp_layers, act_layers)
    weight_checks: list[CheckResult] = []
    dir_pairs: list[tuple[str, str]] = []
    seen_dirs_e: set[str] = set()
    seen_dirs_a: set[str] = set()

    # Order of matched layers.
    order_e = [i for i, _ in sorted(pairs + renamed)]
    order_a = [j for _, j in sorted(pairs + renamed, key=lambda p: p[1])]
    rank_e = {i: k for k, i in enumerate(order_e)}
    rank_a = {j: k for k, j in enumerate(order_a)}

    for i, j in sorted(pairs + renamed):
        e, a = exp_layers[i], act_layers[j]
        name = a["name"]
        found: list[Finding] = []
        if (i, j) in renamed:
            found.append(ctx.finding(name, "layer-renamed",
                                     f"layer {e['name']} renamed to {a['name']} (same class and weight shapes "
                                     f"at position {i + 1})", e["name"], a["name"]))
        if rank_e[i] != rank_a[j]:
            found.append(ctx.finding(name, "layer-moved", f"layer {name} moved: position {i + 1} → {j + 1}",
                                     i + 1, j + 1))
        found.extend(_compare_layer(ctx, e, a, name, has_dirs=bool(_dirs_of(a["name"], act_dirs))))
        for pe, pa in _direction_pairs(e["name"], a["name"], exp_dirs, act_dirs):
            seen_dirs_e.add(pe)
            seen_dirs_a.add(pa)
            found.extend(_compare_direction(ctx, exp_dirs[pe], act_dirs[pa], pa))
            same = _comparable_blocks(ctx, exp_dirs[pe], act_dirs[pa])
            if same[0] == same[1] and exp_dirs[pe]["kind"] == act_dirs[pa]["kind"]:
                dir_pairs.append((pe, pa))
        for pe in _dirs_of(e["name"], exp_dirs):
            if pe not in seen_dirs_e:
                seen_dirs_e.add(pe)
                found.append(ctx.finding(pe, "recurrent-removed",
                                         f"recurrent direction {pe} removed ({exp_dirs[pe]['kind']}, "
                                         f"{exp_dirs[pe]['units']} units)", pe, None))
        for pa in _dirs_of(a["name"], act_dirs):
            if pa not in seen_dirs_a:
                seen_dirs_a.add(pa)
                found.append(ctx.finding(pa, "recurrent-added",
                                         f"recurrent direction {pa} added ({act_dirs[pa]['kind']}, "
                                         f"{act_dirs[pa]['units']} units)", None, pa))
        checks.append(CheckResult(f"layer {name}", ctx.group, tuple(sorted(found, key=_priority))))
        if weights:
            weight_checks.append(CheckResult(f"weights {name}", "weights",
                                             tuple(_compare_values(e, a, name))))
    for i in removed:
        e = exp_layers[i]
        seen_dirs_e.update(_dirs_of(e["name"], exp_dirs))
        checks.append(CheckResult(f"layer {e['name']}", ctx.group, (ctx.finding(
            e["name"], "layer-removed",
            f"layer {e['name']} ({e['class']}, {e['params']:,} params) removed (was at position {i + 1})",
            e["name"], None, severity=_one_side(ctx, e["name"], exp_dirs)),)))
    for j in added:
        a = act_layers[j]
        seen_dirs_a.update(_dirs_of(a["name"], act_dirs))
        checks.append(CheckResult(f"layer {a['name']}", ctx.group, (ctx.finding(
            a["name"], "layer-added",
            f"layer {a['name']} ({a['class']}, {a['params']:,} params) added at position {j + 1}",
            None, a["name"], severity=_one_side(ctx, a["name"], act_dirs)),)))
    # Directions whose top-level layer is not a layer of the snapshot (weights-only oddities).
    stray: list[Finding] = []
    for pe in exp_dirs:
        if pe not in seen_dirs_e:
            if pe in act_dirs and pe not in seen_dirs_a:
                seen_dirs_a.add(pe)
                stray.extend(_compare_direction(ctx, exp_dirs[pe], act_dirs[pe], pe))
            else:
                stray.append(ctx.finding(pe, "recurrent-removed", f"recurrent direction {pe} removed", pe, None))
    for pa in act_dirs:
        if pa not in seen_dirs_a:
            stray.append(ctx.finding(pa, "recurrent-added", f"recurrent direction {pa} added", None, pa))
    checks.append(CheckResult("model", ctx.group, tuple(_compare_model(ctx, expected, actual) + stray
                                                        + alignment_notes)))
    return Comparison(tuple(checks + weight_checks), tuple(dir_pairs), tuple(aligned.items()))


def align_recurrent_layers(ctx: "_Ctx", expected: Mapping, actual: Mapping) -> tuple[Mapping, dict[str, str], list]:
    """Across frameworks, recurrent layers no name matches are paired in order: a converted file often
    keeps no layer name (TFLite's fused operators are `op<k>`) or another one (Keras 3 traces `lstm` as
    `lstm_1`). Pairs need the same class of layer (Bidirectional or not) and the same kinds of
    directions. Returns B with those layers and directions renamed to A's names, {new path: own path},
    and a warning per pair saying it was paired by position."""
    exp_dirs = {d["path"]: d for d in expected["recurrent"]}
    act_dirs = {d["path"]: d for d in actual["recurrent"]}
    names_e = {layer["name"] for layer in _top(expected["layers"])}
    names_a = {layer["name"] for layer in _top(actual["layers"])}
    lone_e = [layer for layer in _top(expected["layers"]) if _dirs_of(layer["name"], exp_dirs)
              and layer["name"] not in names_a]
    lone_a = [layer for layer in _top(actual["layers"]) if _dirs_of(layer["name"], act_dirs)
              and layer["name"] not in names_e]
    if not lone_e or len(lone_e) != len(lone_a):
        return actual, {}, []

    def shape(layer: Mapping, dirs: Mapping, name: str) -> list:
        return [(p[len(name):], dirs[p]["kind"]) for p in _dirs_of(name, dirs)]
    renames = {}
    for e, a in zip(lone_e, lone_a):
        if shape(e, exp_dirs, e["name"]) != shape(a, act_dirs, a["name"]) or \
                (e["class"] == "Bidirectional") != (a["class"] == "Bidirectional"):
            return actual, {}, []
        renames[a["name"]] = e["name"]
    aligned: dict[str, str] = {}
    recurrent = []
    for d in actual["recurrent"]:
        head, sep, tail = d["path"].partition("/")
        if head in renames:
            new = renames[head] + sep + tail
            aligned[new] = d["path"]
            d = dict(d, path=new, layer=renames[head])
        recurrent.append(d)
    layers = [dict(layer, name=renames.get(layer["name"], layer["name"])) for layer in actual["layers"]]
    notes = [ctx.finding(new, "aligned", f"{old} ({_framework(actual)}) compared with {new} "
                                         f"({_framework(expected)}) by position: no layer name in common",
                         new, old, severity="warning") for old, new in renames.items()]
    return dict(actual, layers=layers, recurrent=recurrent), aligned, notes


# Root causes first (a changed unit count explains the shapes and parameter counts after it).
_PRIORITY = {"layer-renamed": 0, "layer-moved": 0, "class": 1, "kind": 1, "units": 2, "input_dim": 2,
             "gates": 2, "kernel_size": 2, "reset_after": 2, "wraps": 3, "weights": 6, "weight-name": 6,
             "shape": 6, "dtype": 6, "blocks": 7, "params": 8, "recurrent-added": 9, "recurrent-removed": 9}


def _priority(f: Finding) -> int:
    return _PRIORITY.get(f.kind, 4)


@dataclass
class _Ctx:
    semantic: bool
    weights: bool
    group: str
    # diff across frameworks (a Keras model and its ONNX or PyTorch conversion): stored tensors differ by
    # layout, so layers holding recurrent directions are compared through their gate blocks, a second bias
    # (bU) is compared as b + bU, and layers or totals found on one side only are warnings
    cross: bool = False

    def finding(self, subject: str, kind: str, message: str, expected: Any = None, actual: Any = None,
                severity: str = "error") -> Finding:
        return Finding.make(self.group, subject, kind, message, expected, actual, severity)


def _one_side(ctx: _Ctx, layer: str, dirs: Mapping[str, dict]) -> str:
    """A layer on one side only is an error, except across frameworks when it holds no recurrent direction
    (a conversion carries the recurrent layers; graphs and state dicts hold other tensors)."""
    return "warning" if ctx.cross and not _dirs_of(layer, dirs) else "error"


def _framework(snapshot: Mapping) -> str:
    return str(snapshot.get("source", {}).get("framework", Framework.KERAS.value))


def _comparable_blocks(ctx: _Ctx, e: dict, a: dict) -> tuple[dict, dict]:
    """The block shapes compared: across frameworks, without bU when only one side keeps a second bias."""
    be, ba = e["blocks"], a["blocks"]
    if ctx.cross and _has_second_bias(be) != _has_second_bias(ba):
        be = {k: v for k, v in be.items() if not k.startswith("bU")}
        ba = {k: v for k, v in ba.items() if not k.startswith("bU")}
    return be, ba


def _has_second_bias(blocks: Mapping) -> bool:
    return any(k.startswith("bU") for k in blocks)


def _dirs_of(layer: str, dirs: Mapping[str, dict]) -> list[str]:
    return [p for p in dirs if p == layer or p.startswith(layer + "/")]


def _direction_pairs(name_e: str, name_a: str, exp_dirs: Mapping, act_dirs: Mapping) -> list[tuple[str, str]]:
    out = []
    for pe in _dirs_of(name_e, exp_dirs):
        pa = name_a + pe[len(name_e):]
        if pa in act_dirs:
            out.append((pe, pa))
    return out


def _compare_layer(ctx: _Ctx, e: dict, a: dict, path: str, has_dirs: bool = False) -> list[Finding]:
    if ctx.cross and has_dirs:
        return []  # each framework stores the cell its own way: its directions are compared instead
    out: list[Finding] = []
    f = ctx.finding
    if e["class"] != a["class"]:
        out.append(f(path, "class", f"layer {path}: class {e['class']} → {a['class']}", e["class"], a["class"]))
    if e["trainable"] != a["trainable"]:
        out.append(f(path, "trainable", f"layer {path}: trainable {_fmt(e['trainable'])} → {_fmt(a['trainable'])}",
                     e["trainable"], a["trainable"]))
    ce, ca = e.get("config") or {}, a.get("config") or {}
    for key in sorted(set(ce) & set(ca)):
        if has_dirs and key in DIRECTION_COVERED:
            continue
        if ce[key] != ca[key] and not (key in ("activation", "recurrent_activation")
                                       and str(ce[key]).lower() == str(ca[key]).lower()):
            out.append(f(path, f"config.{key}", f"layer {path}: {key} {_fmt(ce[key])} → {_fmt(ca[key])}",
                         ce[key], ca[key]))
    we = [(w["role"], w["class"]) for w in e.get("wraps") or []]
    wa = [(w["role"], w["class"]) for w in a.get("wraps") or []]
    if we != wa:
        out.append(f(path, "wraps", f"layer {path}: wraps {_wraps(we)} → {_wraps(wa)}",
                     [list(x) for x in we], [list(x) for x in wa]))
    out.extend(_compare_weights(ctx, e, a, path))
    if e["params"] != a["params"]:
        out.append(f(path, "params", f"layer {path}: {e['params']:,} → {a['params']:,} params",
                     e["params"], a["params"]))
    # Nested models: their layers, matched the same way.
    ne, na = _top(e.get("layers") or []), _top(a.get("layers") or [])
    if ne or na:
        pairs, renamed, removed, added = match_layers(ne, na)
        for i, j in sorted(pairs + renamed):
            sub = f"{path}/{na[j]['name']}"
            if (i, j) in renamed:
                out.append(f(sub, "layer-renamed", f"layer {path}/{ne[i]['name']} renamed to {sub}",
                             ne[i]["name"], na[j]["name"]))
            out.extend(_compare_layer(ctx, ne[i], na[j], sub))
        for i in removed:
            out.append(f(f"{path}/{ne[i]['name']}", "layer-removed",
                         f"layer {path}/{ne[i]['name']} ({ne[i]['class']}) removed", ne[i]["name"], None))
        for j in added:
            out.append(f(f"{path}/{na[j]['name']}", "layer-added",
                         f"layer {path}/{na[j]['name']} ({na[j]['class']}) added", None, na[j]["name"]))
    return out


def _wraps(items: list[tuple[str, str]]) -> str:
    return ", ".join(f"{role} {cls}" for role, cls in items) or "nothing"


def _compare_weights(ctx: _Ctx, e: dict, a: dict, path: str) -> list[Finding]:
    out: list[Finding] = []
    f = ctx.finding
    we, wa = e["weights"], a["weights"]
    if len(we) != len(wa):
        out.append(f(path, "weights", f"layer {path}: {len(we)} → {len(wa)} weight tensors "
                                      f"({', '.join(_shape(w['shape']) for w in we) or 'none'} → "
                                      f"{', '.join(_shape(w['shape']) for w in wa) or 'none'})",
                     [w["shape"] for w in we], [w["shape"] for w in wa]))
        return out
    for k, (x, y) in enumerate(zip(we, wa)):
        label = _weight_label(y, a["name"], k)
        where = f"{path} {label}"
        if not ctx.semantic:
            nx, ny = _normal_weight_name(x["name"], e["name"]), _normal_weight_name(y["name"], a["name"])
            if nx != ny:
                out.append(f(path, "weight-name", f"layer {path}: weight #{k + 1} {nx} → {ny}", nx, ny))
        if x["shape"] != y["shape"]:
            out.append(f(path, "shape", f"layer {path}: {label} shape {_shape(x['shape'])} → {_shape(y['shape'])}",
                         x["shape"], y["shape"]))
        if x["dtype"] != y["dtype"]:
            out.append(f(path, "dtype", f"layer {path}: {label} dtype {x['dtype']} → {y['dtype']}",
                         x["dtype"], y["dtype"]))
        if "trainable" in x and "trainable" in y and x["trainable"] != y["trainable"] and \
                e["trainable"] == a["trainable"]:
            out.append(f(path, "trainable", f"{where}: trainable {_fmt(x['trainable'])} → {_fmt(y['trainable'])}",
                         x["trainable"], y["trainable"]))
    return out


def _compare_values(e: dict, a: dict, path: str, prefix: str = "") -> list[Finding]:
    """Per-tensor checksums (only where the shapes and dtypes agree: otherwise a structural finding)."""
    out: list[Finding] = []
    if len(e["weights"]) == len(a["weights"]):
        for k, (x, y) in enumerate(zip(e["weights"], a["weights"])):
            if x["shape"] != y["shape"] or x["dtype"] != y["dtype"]:
                continue
            label = _weight_label(y, a["name"], k)
            sx, sy = x.get("sha256"), y.get("sha256")
            if sx is None:
                out.append(Finding.make("weights", path, "no-checksum",
                                        f"layer {path}: {label} has no checksum in the lock file", None, sy))
            elif sx != sy:
                out.append(Finding.make("weights", path, "values",
                                        f"layer {path}: {label} {_shape(y['shape'])} values changed "
                                        f"(sha256 {sx[:12]}… → {str(sy)[:12]}…)", sx, sy))
    ne, na = _top(e.get("layers") or []), _top(a.get("layers") or [])
    if ne or na:
        pairs, renamed, _, _ = match_layers(ne, na)
        for i, j in pairs + renamed:
            out.extend(_compare_values(ne[i], na[j], f"{path}/{na[j]['name']}"))
    return out


def _compare_direction(ctx: _Ctx, e: dict, a: dict, path: str) -> list[Finding]:
    out: list[Finding] = []
    for key in DIRECTION_FIELDS:
        x, y = e.get(key), a.get(key)
        if x is None or y is None or x == y or (ctx.cross and key == "class"):
            continue
        if key in ("activation", "recurrent_activation") and str(x).lower() == str(y).lower():
            continue
        if key == "gates":
            x, y = " ".join(x), " ".join(y)
            if x == y:
                continue
        out.append(ctx.finding(path, key, f"{path}: {key} {_fmt(x)} → {_fmt(y)}", x, y))
    implied = any(e.get(k) != a.get(k) for k in ("kind", "units", "input_dim", "kernel_size"))
    be, ba = _comparable_blocks(ctx, e, a)
    if not implied and be != ba:
        gone = sorted((b for b in be if b not in ba), key=_block_key)
        new = sorted((b for b in ba if b not in be), key=_block_key)
        changed = sorted((b for b in be if b in ba and be[b] != ba[b]), key=_block_key)
        parts = ([f"blocks removed: {', '.join(gone)}"] if gone else []) + \
                ([f"blocks added: {', '.join(new)}"] if new else []) + \
                [f"{b} {_shape(be[b])} → {_shape(ba[b])}" for b in changed]
        out.append(ctx.finding(path, "blocks", f"{path}: {'; '.join(parts)}", e["blocks"], a["blocks"]))
    return out


def _block_key(name: str) -> tuple:
    """W, U, b, bU; gates in the order the cells use (lock files store blocks sorted by name)."""
    kind, _, gate = name.partition("_")
    return ({"W": 0, "U": 1, "b": 2, "bU": 3}.get(kind, 4), "ifcozrh".find(gate) if gate else -1, name)


def _compare_model(ctx: _Ctx, expected: Mapping, actual: Mapping) -> list[Finding]:
    out: list[Finding] = []
    te, ta = expected["totals"], actual["totals"]
    for key, text in (("params", "total params"), ("trainable_params", "trainable params"),
                      ("non_trainable_params", "non-trainable params")):
        if te[key] != ta[key]:
            out.append(ctx.finding("model", f"totals.{key}", f"{text} {te[key]:,} → {ta[key]:,}", te[key], ta[key],
                                   severity="warning" if ctx.cross else "error"))
    ne, na = len(expected["recurrent"]), len(actual["recurrent"])
    if ne != na:
        out.append(ctx.finding("model", "recurrent.count", f"recurrent directions {ne} → {na}", ne, na))
    fe, fa = expected["source"]["format"], actual["source"]["format"]
    if not ctx.semantic and fe != fa:
        out.append(ctx.finding("model", "format", f"saved format {fe} → {fa}", fe, fa, severity="warning"))
    return out


# ------------------------------------------------------------------------------------------------
# Other checks

def max_params_check(data: Mapping, limit: int) -> CheckResult:
    total = data["totals"]["params"]
    found = () if total <= limit else (Finding.make(
        "max-params", "model", "max-params", f"{total:,} params, more than the limit {limit:,}", limit, total),)
    return CheckResult(f"max-params {limit}", "max-params", found)


def finite_check(data: Mapping) -> CheckResult:
    found = []
    for rec in data.get("nonfinite", []):
        counts = ", ".join(t for t in (f"{rec['nan']} NaN" if rec["nan"] else "",
                                       f"{rec['inf']} Inf" if rec["inf"] else "") if t)
        if rec.get("block"):
            gate = rec.get("gate")
            gate_text = f"gate {gate} ({GATE_MEANING.get(gate, gate)}), " if gate else ""
            msg = (f"{rec['direction']}: {counts} of {rec['size']:,} values in {gate_text}block {rec['block']} "
                   f"of tensor {rec['tensor']}")
            subject = rec["direction"]
        else:
            msg = f"layer {rec['layer']}: {counts} of {rec['size']:,} values in tensor {rec['tensor']}"
            subject = rec["layer"]
        found.append(Finding.make("finite", subject, "nonfinite", msg, 0, rec["nan"] + rec["inf"]))
    return CheckResult("finite", "finite", tuple(found))


# ------------------------------------------------------------------------------------------------
# diff: per-block relative change (runs in the guarded child)

def _as_float64(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16" and arr.dtype.kind != "f":
        return (arr.view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return np.asarray(arr, dtype=np.float64)


def block_change(a: np.ndarray, b: np.ndarray) -> dict:
    """||B - A|| / ||A|| (Frobenius, float64). None when ||A|| = 0 and B differs, or values are not finite."""
    return _change(float(np.sum(np.square(a))), float(np.sum(np.square(b - a))))


def _streamed_change(x: Block, y: Block) -> dict:
    """block_change of two blocks of equal shape, read in matching row slices."""
    sq_a = sq_d = 0.0
    for ca, cb in zip(iter_block_rows(x), iter_block_rows(y)):
        ca, cb = _as_float64(ca, x.source.dtype), _as_float64(cb, y.source.dtype)
        if ca.shape != cb.shape:  # one side has a transform (read whole), the other not: compare whole
            return block_change(_as_float64(x.read(), x.source.dtype), _as_float64(y.read(), y.source.dtype))
        sq_a += float(np.sum(np.square(ca)))
        sq_d += float(np.sum(np.square(cb - ca)))
    return _change(sq_a, sq_d)


def _change(sq_a: float, sq_d: float) -> dict:
    norm_a, norm_d = math.sqrt(sq_a) if sq_a == sq_a else sq_a, math.sqrt(sq_d) if sq_d == sq_d else sq_d
    if not (math.isfinite(norm_a) and math.isfinite(norm_d)):
        return {"relative": None, "norm_a": None, "norm_diff": None, "note": "non-finite values"}
    if norm_a == 0.0:
        return {"relative": 0.0 if norm_d == 0.0 else None, "norm_a": 0.0, "norm_diff": norm_d,
                "note": None if norm_d == 0.0 else "||A|| = 0: relative change undefined"}
    return {"relative": norm_d / norm_a, "norm_a": norm_a, "norm_diff": norm_d, "note": None}


def diff_data(path_a: str | os.PathLike, path_b: str | os.PathLike, stats: bool = False) -> dict:
    """Both snapshots (without checksums) and the per-block changes of matching directions.

    `stats=True` (diff --stats) adds to each change the statistics of `stats` for A and B side by
    side (block moments, spectral norms, the effective forget bias; no probe): `change["stats"]`."""
    with open_model(path_a) as ma, open_model(path_b) as mb:
        sa = build_snapshot(ma, str(path_a), with_checksums=False)
        sb = build_snapshot(mb, str(path_b), with_checksums=False)
        comparison = compare(sa, sb, semantic=True)
        own = dict(comparison.aligned)  # paths B's directions were compared under -> their own paths
        da = {d.path: d for d in directions(ma)}
        db = {d.path: d for d in directions(mb)}
        changes = []
        for pa, pb in comparison.pairs:
            pb = own.get(pb, pb)
            x, y = da[pa], db[pb]
            blocks = _block_changes(x, y)
            changes.append({"path": pa, "path_b": pb, "kind": x.kind.value, "gates": list(x.gates),
                            "blocks": blocks, "gate_change": _gate_change(list(x.gates), blocks)})
            if stats:
                from lstm_inspect.commands.stats import diff_stats  # stats builds on this module
                changes[-1]["stats"] = diff_stats(ma, x, mb, y)
    return {"a": sa, "b": sb, "changes": changes}


def _block_changes(x: Direction, y: Direction) -> dict[str, dict]:
    """The change of every block of x against the same block of y. When only one side keeps a second
    bias (Keras against ONNX or PyTorch), the bias compared is b + bU, the one the cell adds."""
    second = _has_second_bias({b.name: b for b in x.blocks}) != _has_second_bias({b.name: b for b in y.blocks})
    out = {}
    for block in x.blocks:
        if second and block.name.startswith("bU"):
            continue
        try:
            if second and (block.name == "b" or block.name.startswith("b_")):
                out[block.name] = dict(block_change(_bias_sum(x, block.name), _bias_sum(y, block.name)),
                                       note="b + bU (one side keeps a second bias)")
            else:
                out[block.name] = _streamed_change(block, y.block(block.name))
        except UnsupportedDialectError as err:  # the file does not hold the values (ONNX graph inputs)
            out[block.name] = {"relative": None, "norm_a": None, "norm_diff": None, "note": err.message}
    return out


def _bias_sum(d: Direction, name: str) -> np.ndarray:
    total = _as_float64(d.block(name).read(), d.block(name).source.dtype)
    second = "bU" + name[1:]
    if d.has_block(second):
        total = total + _as_float64(d.block(second).read(), d.block(second).source.dtype)
    return total


def _gate_change(gates: list[str], blocks: Mapping[str, dict]) -> dict:
    """Per gate: the relative change of all its blocks together (sqrt(sum diff²) / sqrt(sum A²))."""
    out = {}
    for gate in gates or [""]:
        names = [n for n in blocks if n.partition("_")[2] == gate]
        if any(blocks[n]["norm_a"] is None for n in names):
            out[gate or "-"] = None
            continue
        na = math.sqrt(sum(blocks[n]["norm_a"] ** 2 for n in names))
        nd = math.sqrt(sum(blocks[n]["norm_diff"] ** 2 for n in names))
        out[gate or "-"] = nd / na if na > 0 else (0.0 if nd == 0 else None)
    return out


@dataclass(frozen=True)
class DiffReport:
    a: str
    b: str
    format_a: str
    format_b: str
    comparison: Comparison
    changes: tuple[dict, ...] = field(default=())

    @property
    def identical(self) -> bool:
        return self.comparison.identical

    def to_dict(self) -> dict:
        return {"a": {"file": self.a, "format": self.format_a}, "b": {"file": self.b, "format": self.format_b},
                "identical_structure": self.identical,
                "findings": [f.to_dict() for f in self.comparison.findings],
                "changes": list(self.changes)}


# ------------------------------------------------------------------------------------------------
# The reports of `check` and `diff`

def check_report(file: str, data: Mapping, lock: Mapping | None, against: str | None, *,
                 expectations: Sequence = (), limit: int | None = None, weights: bool = False,
                 finite: bool = False) -> CheckReport:
    """Every check `check` was asked for, on a snapshot of the model: the lock file, the
    expectations (commands.expect), the parameter limit, finiteness."""
    from lstm_inspect.commands import expect  # expect builds on this module's records
    checks: list[CheckResult] = []
    if lock is not None:
        checks.extend(compare(lock, data, weights=weights).checks)
    checks.extend(expect.evaluate(e, data) for e in expectations)
    if limit is not None:
        checks.append(max_params_check(data, limit))
    if finite:
        checks.append(finite_check(data))
    return CheckReport(file, tuple(checks), against)


def diff_report(a: str, b: str, data: Mapping) -> DiffReport:
    """The structural comparison and the per-block changes of `diff_data`, as one report."""
    comparison = compare(data["a"], data["b"], semantic=True)
    return DiffReport(a, b, data["a"]["source"]["format"], data["b"]["source"]["format"], comparison,
                      tuple(data["changes"]))


def count_weights(layer: Mapping) -> int:
    """Weight tensors of a snapshot layer record, nested models included."""
    return len(layer["weights"]) + sum(count_weights(c) for c in layer.get("layers", []))
