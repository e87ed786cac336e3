"""Every recurrent module kind, in every layout torch writes: names, order and values as torch's
own loaders give them (torch.load(weights_only=True), torch.jit.load, safetensors), bit for bit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lstm_inspect.formats.torch.containers import read_torch
from lstm_inspect.formats.torch.state import find_model_state

from . import truth
from .conftest import LAYOUTS, MODULES, Saved, save_layout


def _truth(saved: Saved) -> dict[str, torch.Tensor]:
    layout, path = saved.layout, saved.path
    if layout == "safetensors":
        return truth.safetensors_state_dict(path)
    if layout == "torchscript":
        return truth.script_state_dict(path)
    if layout.startswith("whole"):
        with pytest.raises(Exception, match="weights_only|Unsupported global|not an allowed global"):
            truth.load_weights_only(path)  # torch's safe loader cannot read a pickled module at all
        return dict(truth.load_trusted(path).state_dict())
    if layout in ("zip-proto4", "legacy-proto1"):  # torch's safe loader lacks FRAME and text LONG
        return dict(truth.load_trusted(path))
    return dict(truth.load_weights_only(path))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", MODULES)
def test_state_dict_equals_torch(torch_zoo, name: str, layout: str) -> None:
    saved = torch_zoo[(name, layout)]
    expected = _truth(saved)
    with read_torch(saved.path) as tf:
        assert tf.kind == LAYOUTS[layout]
        state = find_model_state(tf)
        if layout == "safetensors":  # its header is sorted its own way; names and values must match
            assert sorted(state.state_dict) == sorted(expected)
        else:
            assert list(state.state_dict) == list(expected)
        for key, tensor in expected.items():
            truth.assert_same_tensor(state.state_dict[key], tensor, where=key)
        assert state.found_at == "" and state.stripped_prefix == "" and state.optimizer_elements == 0


@pytest.mark.parametrize("name", MODULES)
def test_names_are_those_of_state_dict(torch_zoo, name: str) -> None:
    """The order torch.load gives is the module's own state_dict() order (independent check)."""
    saved = torch_zoo[(name, "whole-zip")]
    own = list(saved.module.state_dict())
    for layout in ("zip", "legacy", "whole-zip", "whole-legacy", "whole-legacy-proto1"):
        with read_torch(torch_zoo[(name, layout)].path) as tf:
            assert list(find_model_state(tf).state_dict) == own, layout


@pytest.mark.parametrize("name", ["lstm_2layer_bi", "rnn_relu", "encoder", "stack"])
def test_whole_module_records_module_attributes(torch_zoo, name: str) -> None:
    module = torch_zoo[(name, "whole-zip")].module
    for layout in ("whole-zip", "whole-legacy", "torchscript"):
        with read_torch(torch_zoo[(name, layout)].path) as tf:
            state = find_model_state(tf)
        assert state.source == ("torchscript" if layout == "torchscript" else "module")
        by_path = {m.path: m for m in state.modules}
        for prefix, sub in module.named_modules():
            record = by_path[prefix]
            assert record.class_name.endswith(type(sub).__name__), (layout, prefix)
            if isinstance(sub, torch.nn.RNNBase):
                for attr in ("mode", "hidden_size", "num_layers", "bidirectional", "proj_size", "bias"):
                    assert record.attributes[attr] == getattr(sub, attr), (layout, prefix, attr)
            if isinstance(sub, torch.nn.RNN):
                assert record.attributes["nonlinearity"] == sub.nonlinearity


@pytest.mark.parametrize("layout", ["zip", "legacy", "safetensors", "torchscript"])
def test_extent_points_at_the_bytes(torch_zoo, layout: str) -> None:
    """A contiguous tensor's extent is where its little-endian bytes lie in the file."""
    saved = torch_zoo[("encoder", layout)]
    data = saved.path.read_bytes()
    with read_torch(saved.path) as tf:
        refs = tf.tensors()
        assert refs
        for _path, ref in refs:
            path, offset = ref.extent
            assert path == str(saved.path)
            assert data[offset:offset + ref.nbytes] == ref.read().tobytes()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["zip", "legacy", "safetensors", "whole-zip"])
def test_reduced_precision_models(tmp_path: Path, dtype: torch.dtype, layout: str) -> None:
    """Models cast with .half() / .bfloat16() / .double(): dtype names and exact values."""
    torch.manual_seed(9)
    module = torch.nn.GRU(5, 6, num_layers=2, bidirectional=True).to(dtype)
    suffix = ".safetensors" if layout == "safetensors" else ".pt"
    saved = Saved(save_layout(module, layout, tmp_path / f"m{suffix}"), module, layout)
    expected = _truth(saved)
    with read_torch(saved.path) as tf:
        state = find_model_state(tf)
        assert sorted(state.state_dict) == sorted(expected)
        for key, tensor in expected.items():
            assert tensor.dtype == dtype
            truth.assert_same_tensor(state.state_dict[key], tensor, where=key)
