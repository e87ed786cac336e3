"""The ONNX reader of `formats.open_model`: the model file (and its external data) into a neutral `Model`.

Reading parses the graph (`proto`), finds the recurrent nodes and folds their constant inputs (`fold`,
`recurrent`), and groups the stored tensors into layers (`layers`). Tensor values stay in the file until a
command reads them; only the weights of a recurrent node that an exporter built with Slice/Concat/...
(silero-vad, PyTorch without constant folding) are computed while reading.
"""
from __future__ import annotations

from pathlib import Path

from ...model import Framework
from ...safety import Limits
from .fold import ConstantFolder
from .layers import build_layers
from .proto import OnnxModel, read_onnx
from .recurrent import find_recurrent

FORMAT = "onnx"


def read_model(path: Path, limits: Limits, closers: list) -> dict:
    """The `Model` fields of the ONNX model at `path` (see `formats.Reader`)."""
    model = read_onnx(path, limits)
    folder = ConstantFolder(model, limits)
    scan = find_recurrent(model, limits, folder)
    built = build_layers(model, scan, folder)
    return {"framework": Framework.ONNX, "format": FORMAT, "layers": built.layers, "name": model.graph.name or None,
            "has_config": True, "producer": producer(model), "notes": built.notes}


def producer(model: OnnxModel) -> str | None:
    """"<producer_name> <producer_version>" as the file states them (None when it names no producer)."""
    text = " ".join(part for part in (model.producer_name.strip(), model.producer_version.strip()) if part)
    return text or None
