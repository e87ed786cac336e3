"""`verify`: prove the gate split by numbers, with Keras doing the cell arithmetic.

Two halves, so the guard keeps working:

* `collect()` runs in the guarded child (no TensorFlow): it reads the file and returns plain data per
  selected direction: config facts, the split blocks, and the file's own tensors in the layout Keras
  loads them ("file tensors", converted by tf_keras's rules, independently of the splitter).
* `check()` runs in the parent: it imports Keras lazily, builds each layer fresh from the parsed
  facts (never `load_model`, never a custom object), and compares three computations on a seeded
  input: NumPy from the blocks (`reference.run`), Keras with the blocks fused back into Keras
  weights, and Keras with the file tensors. The first difference checks the reference and the
  re-fusing; the second checks the split against the file (a mislabelled gate shows up there).

TensorFlow, Keras and tf_keras are imported only inside functions of this module.
"""
from __future__ import annotations

import importlib.util
import os
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lstm_inspect import reference as ref
from lstm_inspect.cells import layouts
from lstm_inspect.cells.core import CellKind
from lstm_inspect.errors import CorruptModelError, MissingExtraError, UsageError
from lstm_inspect.model import Framework

MISSING_TF = "verify needs TensorFlow: pip install 'lstm-inspect[tf]'"
PRODUCER_LABEL = {"keras1": "Keras 1", "keras2": "Keras 2 / tf.keras", "keras3": "Keras 3", None: "unknown Keras"}
CONV_KEYS = ("strides", "padding", "dilation_rate", "data_format")


# ============================================================================================
# Which framework runs the check
# ============================================================================================

@dataclass(frozen=True)
class Runner:
    """The parent-side check of one framework: what it needs installed, its default tolerance, the
    check itself and the table renderer of its report."""

    require: Callable[[], None]
    check: Callable[..., dict]
    render_table: Callable[[Mapping[str, Any], Any], None]
    tolerance: float | None = 1e-5  # None: the check chooses per direction (quantized TFLite)


def runner_for(framework: str) -> Runner:
    """Keras (and TF2 Keras-shaped layers) run in Keras, TF1 cells in TensorFlow, ONNX nodes in
    onnxruntime, TFLite operators in tf.lite.Interpreter; each imported only here, on the parent side."""
    from lstm_inspect.render import verify as render
    if framework == "onnx":
        from lstm_inspect.commands import verify_onnx
        from lstm_inspect.render import verify_onnx as render_onnx
        return Runner(verify_onnx.require_onnxruntime, verify_onnx.check, render_onnx.render_table,
                      verify_onnx.DEFAULT_TOLERANCE)
    if framework == "tflite":
        from lstm_inspect.commands import verify_tflite
        from lstm_inspect.render import verify_tflite as render_tflite
        return Runner(verify_tflite.require_tensorflow, verify_tflite.check, render_tflite.render_table, None)
    if framework == "tensorflow":
        from lstm_inspect.commands import verify_tf
        return Runner(require_tensorflow, verify_tf.check, render.render_table)
    return Runner(require_tensorflow, check, render.render_table)


# ============================================================================================
# Child side: read the file (no TensorFlow here)
# ============================================================================================

def collect(path: str, patterns: Sequence[str] = (), file_tensors: bool = True,
            forget_bias: float | None = None) -> dict[str, Any]:
    """Everything `verify` and `convert` need from the file, as plain data (runs guarded).
    `forget_bias`: the run-time forget bias of TF1 LSTM cells as the user states it."""
    from lstm_inspect.cells import directions, select, with_forget_bias
    from lstm_inspect.commands.split import file_sha256
    from lstm_inspect.formats import open_model

    with open_model(path) as model:
        dirs = with_forget_bias(select(directions(model), patterns), forget_bias)
        if not dirs:
            raise UsageError("the model has no recurrent layers")
        if model.framework is Framework.ONNX:
            from lstm_inspect.commands.verify_onnx import collect_model
            return collect_model(model, path, dirs, file_tensors)
        if model.framework is Framework.TFLITE:  # the interpreter, not Keras, runs it (verify_tflite)
            from lstm_inspect.commands.verify_tflite import collect_model
            return collect_model(model, path, dirs, file_tensors)
        owners = _weight_owners(model)
        producer = _producer(model.keras_version, dirs)
        tensorflow = model.framework is Framework.TENSORFLOW  # its own tensors are read by TF's loader
        out = [_facts(d, owners, producer, model.keras_version, file_tensors and not tensorflow) for d in dirs]
        data = {"file": str(path), "name": os.path.basename(os.path.normpath(str(path))),
                "format": model.format, "keras_version": model.keras_version, "producer": producer,
                "sha256": file_sha256(path), "directions": out, "framework": model.framework.value}
        if tensorflow:
            from lstm_inspect.commands import verify_tf
            verify_tf.add_facts(data, str(path), dirs)
        return data


def _weight_owners(model) -> dict[int, tuple[Any, tuple[Any, ...]]]:
    """id(weight) -> (layer holding it, its ancestors from the top)."""
    owners: dict[int, tuple[Any, tuple[Any, ...]]] = {}

    def walk(layer, ancestors):
        for w in layer.weights:
            owners[id(w)] = (layer, ancestors)
        for child in layer.children:
            walk(child, ancestors + (layer,))
    for top in model.layers:
        walk(top, ())
    return owners


def _producer(version: str | None, dirs) -> str | None:
    v = (version or "").strip()
    if v.startswith("1."):
        return "keras1"
    if v.startswith("2."):
        return "keras2"
    if v.startswith("3."):
        return "keras3"
    if any("Keras 1 layout" in c for d in dirs for c in d.corrections):
        return "keras1"
    return None


def _standalone_keras2(version: str | None) -> bool:
    """Keras 1 and standalone Keras 2.0-2.3 default recurrent_activation to hard_sigmoid."""
    v = version or ""
    if v.startswith("1."):
        return True
    if not v.startswith("2.") or v.endswith("-tf"):
        return False
    try:
        minor = int(v.split(".")[1])
    except (IndexError, ValueError):
        return False
    return minor <= 3


def _as_float(array: np.ndarray, dtype: str) -> np.ndarray:
    """Block values as float32 (float64 kept); bfloat16 arrives as raw uint16 bits."""
    array = np.asarray(array)
    if dtype == "bfloat16" and array.dtype.kind in "uV" and array.dtype.itemsize == 2:
        return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if array.dtype == np.float64:
        return array
    return array.astype(np.float32)


def _facts(d, owners, producer: str | None, version: str | None, file_tensors: bool) -> dict[str, Any]:
    kind = d.kind.value
    holder, ancestors = owners.get(id(d.blocks[0].source), (None, ()))
    config = dict(holder.config or {}) if holder is not None and holder.config else {}
    notes: list[str] = []
    activation, recurrent = d.activation, d.recurrent_activation
    assumed = []
    if activation is None:
        activation = "tanh"
        assumed.append("activation")
    if kind != "SimpleRNN" and recurrent is None:
        recurrent = "hard_sigmoid" if _standalone_keras2(version) else "sigmoid"
        assumed.append("recurrent_activation")
    if assumed:
        notes.append(f"no config for {', '.join(assumed)}: assumed the {PRODUCER_LABEL[producer]} default "
                     f"({activation}{', ' + recurrent if recurrent else ''})")
    flags = {k: getattr(d, k) for k in ("return_sequences", "return_state", "stateful", "go_backwards")}
    if flags["go_backwards"] is None:
        backward_side = d.path.endswith("/backward")
        flags["go_backwards"] = backward_side
        notes.append(f"go_backwards not stated: assumed {backward_side}")
    conv = None
    if kind == "ConvLSTM":
        conv = _conv_config(config, ancestors, len(d.kernel_size or ()), notes)
    bidi = None
    chain = list(ancestors) + ([holder] if holder is not None else [])
    for k, layer in enumerate(chain):
        if layer.class_name == "Bidirectional" and k + 1 < len(chain):
            side = chain[k + 1].role
            layer_path, _, tail = d.path.rpartition("/")
            bidi = {"side": side, "merge_mode": _merge_mode(layer.config),
                    "layer": layer_path if tail == side else None}
    dtype = d.blocks[0].source.dtype
    facts: dict[str, Any] = {
        "path": d.path, "kind": kind, "class": d.class_name, "units": d.units, "input_dim": d.input_dim,
        "use_bias": d.use_bias, "reset_after": d.reset_after, "activation": activation,
        "recurrent_activation": recurrent if kind != "SimpleRNN" else None,
        "activation_assumed": bool(assumed), **flags,
        "kernel_size": list(d.kernel_size) if d.kernel_size else None, "conv": conv,
        "is_cudnn": d.is_cudnn, "dtype": dtype, "bidirectional": bidi,
        "stacked_cell": holder is not None and holder.role.startswith("cell_"),
        "blocks": {b.name: _as_float(b.read(), b.source.dtype) for b in d.blocks},
        "file_tensors": None, "file_tensors_note": None, "notes": notes,
        "corrections": list(d.corrections),
        # cells of other frameworks (None for Keras): projection, run-time forget bias, clipping
        "projection_size": d.projection_size, "forget_bias": d.forget_bias, "cell_clip": d.cell_clip,
        "proj_clip": d.proj_clip, "source_layout": d.source_layout,
    }
    if file_tensors:
        try:
            facts["file_tensors"], facts["file_tensors_note"] = _file_tensors(holder, d)
        except ValueError as exc:
            facts["file_tensors_note"] = f"not checked: {exc}"
    return facts


def _merge_mode(config: Mapping | None) -> str:
    if not config or "merge_mode" not in config:
        return "concat"
    mode = config.get("merge_mode")
    return "none" if mode is None else str(mode)


def _conv_config(config: Mapping, ancestors, rank: int, notes: list[str]) -> dict[str, Any]:
    sources = [config] + [a.config or {} for a in reversed(ancestors)]

    def find(*keys):
        for src in sources:
            for key in keys:
                if key in src:
                    return src[key]
        return None
    conv = {
        "strides": find("strides", "subsample"),
        "padding": find("padding", "border_mode"),
        "dilation_rate": find("dilation_rate"),
        "data_format": find("data_format"),
    }
    ordering = find("dim_ordering")
    if conv["data_format"] is None and ordering in ("th", "tf"):
        conv["data_format"] = "channels_first" if ordering == "th" else "channels_last"
    defaults = {"strides": 1, "padding": "valid", "dilation_rate": 1, "data_format": "channels_last"}
    missing = [k for k, v in conv.items() if v is None]
    for k in missing:
        conv[k] = defaults[k]
    if missing:
        notes.append(f"no config for {', '.join(missing)}: assumed the Keras defaults")
    return conv


def _file_tensors(holder, d) -> tuple[list[np.ndarray], str]:
    """The holder layer's stored tensors, as Keras (tf_keras) would load them into a plain layer.

    Deliberately independent of the splitter: tensors by name (kernel, recurrent_kernel, bias) or by
    position, Keras 1 per-gate arrays concatenated in tf_keras's index order, CuDNN weights converted
    with tf_keras's own formulas.
    """
    if holder is None:
        raise ValueError("the weights' layer was not found")
    weights = list(holder.weights)
    kind = d.kind.value
    read = [_as_float(w.read(), w.dtype) for w in weights]
    names = {w.short_name: a for w, a in zip(weights, read)}
    how = "stored kernel, recurrent kernel, bias"
    if "kernel" in names and "recurrent_kernel" in names:
        arrays = [names["kernel"], names["recurrent_kernel"]] + ([names["bias"]] if "bias" in names else [])
    elif kind in ("LSTM", "ConvLSTM") and len(read) == 12:
        arrays = [np.concatenate([read[j] for j in idx], axis=-1)
                  for idx in ([0, 6, 3, 9], [1, 7, 4, 10], [2, 8, 5, 11])]
        how = "Keras 1 arrays concatenated in tf_keras's order (indices 0,6,3,9 / 1,7,4,10 / 2,8,5,11)"
    elif kind == "GRU" and len(read) == 9:
        arrays = [np.concatenate([read[j] for j in idx], axis=-1)
                  for idx in ([0, 3, 6], [1, 4, 7], [2, 5, 8])]
        how = "Keras 1 arrays concatenated in tf_keras's order (indices 0,3,6 / 1,4,7 / 2,5,8)"
    elif len(read) in (2, 3):
        arrays = read
    else:
        raise ValueError(f"{len(read)} stored arrays in an unrecognised layout")
    gates = {"LSTM": 4, "GRU": 3}.get(kind)
    if gates and len(arrays) == 3 and arrays[2].ndim == 1 and arrays[1].ndim == 2 and \
            arrays[2].shape[0] == 2 * gates * arrays[1].shape[0]:
        arrays = _from_cudnn(arrays, gates, kind)
        how = "CuDNN tensors converted by tf_keras's formulas (kernel.T.reshape(shape, order='F') per gate)"
    return arrays, how


def _from_cudnn(weights: list[np.ndarray], n_gates: int, kind: str) -> list[np.ndarray]:
    """tf_keras `_convert_rnn_weights` (hdf5_format.py), from cuDNN to the plain layer."""
    def transform_kernels(kernels, func):
        return np.hstack([func(k) for k in np.hsplit(kernels, n_gates)])

    kernels = transform_kernels(weights[0], lambda k: k.T.reshape(k.shape, order="F"))
    recurrent = transform_kernels(weights[1], lambda k: k.T)
    if kind == "LSTM":
        biases = np.sum(np.split(weights[2], 2, axis=0), axis=0)
    else:
        biases = np.array(weights[2]).reshape((2, -1))
    return [kernels, recurrent, biases]


# ============================================================================================
# Blocks back to Keras weights (shared with convert)
# ============================================================================================

def fused_weights(f: Mapping[str, Any]) -> list[np.ndarray]:
    """The blocks fused back into the weights of the plain Keras layer that computes this direction,
    through the Keras gate layout. CuDNNLSTM becomes LSTM with bias b + bU; CuDNNGRU becomes
    GRU(reset_after=True) with bias (2, 3H)."""
    kind, blocks = CellKind(f["kind"]), dict(f["blocks"])
    if kind is CellKind.GRU and f.get("reset_after"):
        layout = layouts.KERAS_GRU_RESET_AFTER
    else:
        layout = layouts.KERAS[kind]
        for name in [n for n in blocks if n.startswith("bU")]:  # one bias: Keras adds both sides
            blocks["b" + name[2:]] = blocks["b" + name[2:]] + blocks.pop(name)
    try:
        tensors = layouts.fuse(layout, blocks, layouts.Sizes(f["units"], f["input_dim"]))
    except CorruptModelError as exc:
        raise ValueError(f"the blocks cannot be fused: {exc}") from None
    return [tensors[p.tensor] for p in layout.parts if p.tensor in tensors]


# ============================================================================================
# Parent side: Keras against NumPy
# ============================================================================================

class _Keras:
    """One Keras implementation (Keras 3 or tf_keras), imported on first use."""

    def __init__(self, name: str) -> None:
        self.name = name  # "keras" | "tf_keras"
        self.module: Any = None
        self.tf: Any = None

    @property
    def flavor(self) -> str:
        return "keras3" if self.name == "keras" else "keras2"

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.name) is not None
        except (ImportError, ValueError):
            return False

    def load(self) -> Any:
        if self.module is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            if self.name == "keras":
                os.environ.setdefault("KERAS_BACKEND", "tensorflow")
            import importlib
            import logging
            import warnings
            warnings.filterwarnings("ignore", module="keras")
            warnings.filterwarnings("ignore", module="tf_keras")
            with _quiet_native_stderr():
                try:
                    self.module = importlib.import_module(self.name)
                except ImportError as exc:
                    raise MissingExtraError(f"{MISSING_TF} ({self.name}: {exc})") from None
            if self.name == "keras" and not str(self.module.__version__).startswith("3"):
                self.module = None
                raise MissingExtraError(f"{MISSING_TF} (the installed keras is not Keras 3)")
            logging.getLogger("tensorflow").setLevel(logging.ERROR)
            try:
                import absl.logging
                absl.logging.set_verbosity(absl.logging.ERROR)
            except Exception:  # pragma: no cover - absl is optional
                pass
        return self.module

    @property
    def label(self) -> str:
        module = self.load()
        if self.name == "keras":
            backend = module.backend.backend()
            return f"keras {module.__version__} ({backend})"
        return f"tf_keras {module.__version__}"

    def hard_sigmoid(self, flavor: str):
        """A callable computing the other Keras's hard_sigmoid (when the wanted one is missing)."""
        module = self.load()
        if self.name == "keras":
            ops = module.ops
            if flavor == "keras2":
                return lambda x: ops.clip(0.2 * x + 0.5, 0.0, 1.0)
            return lambda x: ops.relu6(x + 3.0) / 6.0
        import tensorflow as tf
        if flavor == "keras2":
            return lambda x: tf.clip_by_value(0.2 * x + 0.5, 0.0, 1.0)
        return lambda x: tf.nn.relu6(x + 3.0) / 6.0

    def build(self, f: Mapping[str, Any], hard_sigmoid_flavor: str):
        """A fresh plain layer computing this direction, returning sequences and states."""
        K = self.load()
        L = K.layers

        def act(name):
            if name == "hard_sigmoid" and hard_sigmoid_flavor != self.flavor:
                return self.hard_sigmoid(hard_sigmoid_flavor)
            return name
        kind = f["kind"]
        common = dict(activation=act(f["activation"]), use_bias=bool(f["use_bias"]), return_sequences=True,
                      return_state=True, go_backwards=bool(f["go_backwards"]), dtype="float64")
        if kind == "LSTM":
            return L.LSTM(f["units"], recurrent_activation=act(f["recurrent_activation"]), **common)
        if kind == "GRU":
            return L.GRU(f["units"], recurrent_activation=act(f["recurrent_activation"]),
                         reset_after=bool(f["reset_after"]), **common)
        if kind == "SimpleRNN":
            return L.SimpleRNN(f["units"], **common)
        rank = len(f["kernel_size"])
        cls = {1: "ConvLSTM1D", 2: "ConvLSTM2D", 3: "ConvLSTM3D"}[rank]
        strides, padding, dilation = ref.conv_params(f["conv"], rank)
        return getattr(L, cls)(f["units"], tuple(f["kernel_size"]), strides=strides, padding=padding,
                               dilation_rate=dilation, data_format="channels_last",
                               recurrent_activation=act(f["recurrent_activation"]), **common)

    def run(self, layer, weights: Sequence[np.ndarray], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        if not layer.built:
            try:
                layer.build(tuple(x.shape))
            except Exception:  # some versions only build on a call
                layer(x)
        layer.set_weights([np.asarray(w, dtype=np.float64) for w in weights])
        out = layer(x)
        arrays = [np.asarray(self._numpy(t), dtype=np.float64) for t in out]
        return arrays[0], arrays[1:]

    def _numpy(self, tensor):
        if self.name == "keras":
            return self.module.ops.convert_to_numpy(tensor)
        return tensor.numpy() if hasattr(tensor, "numpy") else tensor


@contextmanager
def _quiet_native_stderr():
    """Silence the C++ start-up lines TensorFlow prints on fd 2 while it is imported.

    Python exceptions still propagate; if the import fails, what was printed is appended to the
    error message so nothing is lost.
    """
    import sys
    import tempfile
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException as exc:
            os.dup2(saved, 2)
            sink.seek(0)
            tail = sink.read()[-2000:].decode("utf-8", "replace").strip()
            if tail and isinstance(exc, MissingExtraError):
                exc.message = f"{exc.message}; {' '.join(tail.split())}"
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def require_tensorflow() -> None:
    """Exit 2 early (before reading) when neither Keras 3 nor tf_keras can be imported."""
    if not (_Keras("keras").available() or _Keras("tf_keras").available()):
        raise MissingExtraError(MISSING_TF)
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow" and not _Keras("tensorflow").available():
        raise MissingExtraError(MISSING_TF)


def input_shape(f: Mapping[str, Any], batch: int, steps: int) -> tuple[int, ...]:
    if f["kind"] != "ConvLSTM":
        return (batch, steps, int(f["input_dim"]))
    kernel = f["kernel_size"]
    _, _, dilation = ref.conv_params(f["conv"], len(kernel))
    spatial = tuple(max(5, (k - 1) * d + 1) for k, d in zip(kernel, dilation))
    if f["conv"].get("data_format") == "channels_first":
        return (batch, steps, int(f["input_dim"])) + spatial
    return (batch, steps) + spatial + (int(f["input_dim"]),)


def _max_diff(a: tuple[np.ndarray, list[np.ndarray]], b: tuple[np.ndarray, list[np.ndarray]]) -> float:
    parts = [a[0] - b[0]] + [x - y for x, y in zip(a[1], b[1])]
    if a[0].shape != b[0].shape or any(x.shape != y.shape for x, y in zip(a[1], b[1])):
        raise ValueError(f"output shapes differ: {a[0].shape} vs {b[0].shape}")
    return float(max(np.max(np.abs(p)) if p.size else 0.0 for p in parts))


def check(data: Mapping[str, Any], *, steps: int = 7, batch: int = 3, seed: int = 0,
          tolerance: float = 1e-5) -> dict[str, Any]:
    """Run Keras and the NumPy reference on every collected direction; the `--format json` data."""
    if steps < 1 or batch < 1:
        raise UsageError("--steps and --batch must be at least 1")
    if not tolerance >= 0:
        raise UsageError("--tolerance must be a non-negative number")
    producer = data.get("producer")
    flavor = ref.hard_sigmoid_flavor(producer)
    impls = {"keras": _Keras("keras"), "tf_keras": _Keras("tf_keras")}
    results = []
    for f in data["directions"]:
        results.append(_check_one(f, impls, flavor, steps, batch, seed, tolerance))
    statuses = [r["status"] for r in results]
    overall = "fail" if "fail" in statuses else ("error" if "error" in statuses else "pass")
    return {
        "file": data["file"], "format": data["format"], "keras_version": data.get("keras_version"),
        "producer": PRODUCER_LABEL.get(producer, "unknown Keras"),
        "hard_sigmoid": ref.HARD_SIGMOID[flavor], "steps": steps, "batch": batch, "seed": seed,
        "tolerance": tolerance, "compute_dtype": "float64", "status": overall, "directions": results,
    }


def _pick_keras(f: Mapping[str, Any], impls: dict[str, _Keras], flavor: str) -> tuple[_Keras, list[str]]:
    uses_hard = "hard_sigmoid" in (f.get("activation"), f.get("recurrent_activation"))
    want = "tf_keras" if uses_hard and flavor == "keras2" else "keras"
    other = "keras" if want == "tf_keras" else "tf_keras"
    notes = []
    if impls[want].available():
        return impls[want], notes
    if not impls[other].available():
        raise MissingExtraError(MISSING_TF)
    if uses_hard and impls[other].flavor != flavor:
        notes.append(f"{want} is not installed: the Keras side is {other} with its hard_sigmoid replaced "
                     f"by {ref.HARD_SIGMOID[flavor]}, the definition of the producing version")
    return impls[other], notes


def _check_one(f: Mapping[str, Any], impls: dict[str, _Keras], flavor: str, steps: int, batch: int,
               seed: int, tolerance: float) -> dict[str, Any]:
    uses_hard = "hard_sigmoid" in (f.get("activation"), f.get("recurrent_activation"))
    row: dict[str, Any] = {
        "path": f["path"], "kind": f["kind"], "class": f["class"], "units": f["units"],
        "input_dim": f["input_dim"], "activation": f["activation"],
        "recurrent_activation": f["recurrent_activation"], "go_backwards": bool(f["go_backwards"]),
        "hard_sigmoid": ref.HARD_SIGMOID[flavor] if uses_hard else None, "keras": None, "built_as": None,
        "input_shape": None, "max_abs_keras_numpy": None, "max_abs_file_numpy": None,
        "file_tensors": f.get("file_tensors_note"), "status": "error", "reason": None,
        "corrections": list(f.get("corrections") or []), "notes": list(f.get("notes") or []),
    }
    for name in (f["activation"], f["recurrent_activation"]):
        if name is not None and not ref.known_activation(name):
            row["reason"] = f"activation {name!r} has no NumPy reference"
            return row
    if f["class"] == "PeepholeLSTMCell":
        row["reason"] = "PeepholeLSTMCell has peephole weights the reference does not model"
        return row
    try:
        if f["kind"] == "ConvLSTM" and f["conv"].get("data_format") not in ("channels_last", "channels_first"):
            raise ref.ReferenceUnsupported(f"data_format {f['conv'].get('data_format')!r} is not supported")
        shape = input_shape(f, batch, steps)
    except ref.ReferenceUnsupported as exc:
        row["reason"] = str(exc)
        return row
    row["input_shape"] = list(shape)
    rng = np.random.default_rng([seed, zlib.crc32(f["path"].encode("utf-8"))])
    x = rng.standard_normal(shape)
    try:
        expected = ref.run(f, f["blocks"], x, flavor)
    except ref.ReferenceUnsupported as exc:
        row["reason"] = str(exc)
        return row
    impl, notes = _pick_keras(f, impls, flavor)
    row["notes"].extend(notes)
    row["keras"] = impl.label
    channels_first = f["kind"] == "ConvLSTM" and f["conv"].get("data_format") == "channels_first"
    kx = np.moveaxis(x, 2, -1) if channels_first else x
    if channels_first:
        row["notes"].append("data_format channels_first: the Keras layer runs channels_last on transposed input")
    try:
        layer = impl.build(f, flavor)
    except ref.ReferenceUnsupported as exc:
        row["reason"] = str(exc)
        return row
    except Exception as exc:  # noqa: BLE001 - Keras's own refusal, reported for this direction only
        row["reason"] = f"Keras could not build the layer: {type(exc).__name__}: {_one_line(exc)}"
        return row
    row["built_as"] = type(layer).__name__ + (f"(reset_after={bool(f['reset_after'])})" if f["kind"] == "GRU" else "")
    if f.get("stateful"):
        row["notes"].append("stateful layer: checked from zero states")

    def keras_run(weights):
        seq, states = impl.run(layer, weights, kx)
        if channels_first:
            seq, states = np.moveaxis(seq, -1, 2), [np.moveaxis(s, -1, 1) for s in states]
        return seq, states
    failures = []
    try:
        got = keras_run(fused_weights(f))
        row["max_abs_keras_numpy"] = _max_diff(got, expected)
        if row["max_abs_keras_numpy"] > tolerance:
            failures.append(f"Keras with the split blocks and the NumPy cell differ by "
                            f"{row['max_abs_keras_numpy']:.3g}")
    except (ValueError, TypeError) as exc:
        failures.append(f"Keras refused the split blocks: {_one_line(exc)}")
    if f.get("file_tensors") is not None:
        try:
            got = keras_run(f["file_tensors"])
            row["max_abs_file_numpy"] = _max_diff(got, expected)
            if row["max_abs_file_numpy"] > tolerance:
                failures.append(f"Keras with the file's own tensors and the NumPy cell differ by "
                                f"{row['max_abs_file_numpy']:.3g}: the split blocks do not match the file")
        except (ValueError, TypeError) as exc:
            failures.append(f"Keras refused the file tensors: {_one_line(exc)}")
    row["status"] = "fail" if failures else "pass"
    row["reason"] = "; ".join(failures) or None
    return row


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]
