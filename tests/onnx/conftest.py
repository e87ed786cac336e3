"""ONNX files built at test time: torch 2.13's two exporters on nn.LSTM (2 layers, bidirectional),
nn.GRU and nn.RNN (relu). Built once per session into a temporary folder (about 5 s with torch's import);
each export gets its own folder, since the dynamo exporter writes `<name>.onnx.data` beside the model."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from ..conftest import CORPUS

CORPUS_ONNX = sorted(CORPUS.glob("*.onnx"))
SEQ, BATCH, FEATURES, HIDDEN = 7, 2, 5, 8


def _modules():
    import torch

    torch.manual_seed(0)
    return {
        "lstm": torch.nn.LSTM(FEATURES, HIDDEN, num_layers=2, bidirectional=True),
        "gru": torch.nn.GRU(FEATURES, HIDDEN),
        "rnn": torch.nn.RNN(FEATURES, HIDDEN, nonlinearity="relu"),
    }


@pytest.fixture(scope="session")
def torch_exports(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    """{"<kind>-<ts|dynamo>": (path of the .onnx, the torch module)}."""
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0]

    root = tmp_path_factory.mktemp("torch_onnx")
    x = torch.randn(SEQ, BATCH, FEATURES)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kind, module in _modules().items():
            for exporter in ("ts", "dynamo"):
                folder = root / f"{kind}-{exporter}"
                folder.mkdir()
                path = folder / f"{kind}.onnx"
                torch.onnx.export(Wrapper(module), (x,), str(path), dynamo=exporter == "dynamo",
                                  **({"verbose": False} if exporter == "dynamo" else {}))
                out[f"{kind}-{exporter}"] = (path, module)
    return out
