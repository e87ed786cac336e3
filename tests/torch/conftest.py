"""Session fixtures: every recurrent module kind saved in every layout torch writes, built once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from . import builders

# layout → how it is saved, and the TorchFile.kind the reader must report
LAYOUTS = {
    "zip": "torch-zip", "zip-proto4": "torch-zip", "legacy": "torch-legacy", "legacy-proto1": "torch-legacy",
    "safetensors": "safetensors", "torchscript": "torchscript", "whole-zip": "torch-zip",
    "whole-legacy": "torch-legacy", "whole-legacy-proto1": "torch-legacy",
}
MODULES = tuple(builders.rnn_modules())


@dataclass(frozen=True)
class Saved:
    path: Path
    module: nn.Module
    layout: str


def save_layout(module: nn.Module, layout: str, path: Path) -> Path:
    sd = module.state_dict()
    if layout == "zip":
        return builders.save(sd, path)
    if layout == "zip-proto4":
        return builders.save(sd, path, protocol=4)
    if layout == "legacy":
        return builders.save(sd, path, legacy=True)
    if layout == "legacy-proto1":
        return builders.save(sd, path, legacy=True, protocol=1)
    if layout == "safetensors":
        return builders.save_safetensors(sd, path, metadata={"format": "pt", "source": "tests"})
    if layout == "torchscript":
        return builders.save_script(module, path)
    if layout == "whole-zip":
        return builders.save(module, path)
    if layout == "whole-legacy":
        return builders.save(module, path, legacy=True)
    if layout == "whole-legacy-proto1":
        return builders.save(module, path, legacy=True, protocol=1)
    raise ValueError(layout)


@pytest.fixture(scope="session")
def torch_zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Saved]:
    folder = tmp_path_factory.mktemp("torch_zoo")
    modules = builders.rnn_modules()
    out = {}
    for name, module in modules.items():
        for layout in LAYOUTS:
            suffix = ".safetensors" if layout == "safetensors" else ".pt"
            path = save_layout(module, layout, folder / f"{name}-{layout}{suffix}")
            out[(name, layout)] = Saved(path, module, layout)
    return out


@pytest.fixture(scope="session")
def small_legacy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small legacy file (an LSTMCell's state dict) for every-offset truncation."""
    torch.manual_seed(1)
    return builders.save(nn.LSTMCell(2, 3).state_dict(), tmp_path_factory.mktemp("small") / "cell.pt", legacy=True)


@pytest.fixture(scope="session")
def small_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(2)
    return builders.save(nn.GRUCell(2, 3).state_dict(), tmp_path_factory.mktemp("small") / "cell.pt")
