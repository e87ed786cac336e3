"""Finding the model's state dict in checkpoints: where, under which names, and what else the file
holds (optimizer state counted, other tensors listed), checked against torch.load of the same file."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from lstm_inspect.formats.torch.containers import read_torch
from lstm_inspect.formats.torch.state import find_model_state

from . import builders, truth


def _optimizer_elements(opt_state: dict) -> tuple[int, int]:
    tensors = [t for _path, t in truth.flatten(opt_state)]
    return sum(t.numel() for t in tensors), len(tensors)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_training_checkpoint(tmp_path: Path, legacy: bool) -> None:
    module = builders.Encoder()
    path = builders.save(builders.checkpoint(module), tmp_path / "ckpt.pt", legacy=legacy)
    loaded = truth.load_weights_only(path)
    with read_torch(path) as tf:
        state = find_model_state(tf)
        for key, tensor in loaded["model_state_dict"].items():
            truth.assert_same_tensor(state.state_dict[key], tensor, where=key)
    assert state.source == "state-dict" and state.found_at == "model_state_dict"
    assert list(state.state_dict) == list(module.state_dict())
    elements, count = _optimizer_elements(loaded["optimizer_state_dict"])
    assert count > 2 * len(list(module.parameters()))  # exp_avg, exp_avg_sq and step per parameter
    assert (state.optimizer_elements, state.optimizer_tensors) == (elements, count)
    assert state.other_tensors == ()


def test_lightning_checkpoint(tmp_path: Path) -> None:
    module = builders.Stack()
    path = builders.save(builders.lightning_checkpoint(module), tmp_path / "epoch=3.ckpt")
    loaded = truth.load_weights_only(path)
    with read_torch(path) as tf:
        assert tf.metadata["lightning_version"] == "2.4.0"
        state = find_model_state(tf)
        for key, tensor in loaded["state_dict"].items():
            truth.assert_same_tensor(state.state_dict[key], tensor, where=key)
        (other,) = state.other_tensors
        truth.assert_same_tensor(other[1], torch.tensor(0.125))
    assert state.found_at == "state_dict"
    assert list(state.state_dict) == [f"model.{k}" for k in module.state_dict()]
    elements, count = _optimizer_elements(loaded["optimizer_states"])
    assert (state.optimizer_elements, state.optimizer_tensors) == (elements, count)
    assert other[0] == "callbacks.ModelCheckpoint{'monitor': 'val_loss'}.best_model_score"


@pytest.mark.parametrize("wrap", ["dataparallel", "dataparallel-checkpoint", "compiled"])
def test_wrapper_prefixes_are_stripped(tmp_path: Path, wrap: str) -> None:
    module = builders.Stack()
    if wrap == "compiled":
        obj = collections.OrderedDict((f"_orig_mod.{k}", v) for k, v in module.state_dict().items())
    else:
        obj = torch.nn.DataParallel(module).state_dict()
        assert all(k.startswith("module.") for k in obj)
        if wrap == "dataparallel-checkpoint":
            obj = {"state_dict": obj, "epoch": 1}
    path = builders.save(obj, tmp_path / "wrapped.pt")
    with read_torch(path) as tf:
        state = find_model_state(tf)
    assert list(state.state_dict) == list(module.state_dict())
    assert state.stripped_prefix == ("_orig_mod." if wrap == "compiled" else "module.")
    assert any("prefix" in note for note in state.notes)


def test_nested_and_ema_copies(tmp_path: Path) -> None:
    module = builders.Cells()
    ema = {k: v * 0.5 for k, v in module.state_dict().items()}
    path = builders.save({"model": {"state_dict": module.state_dict(), "arch": "cells"}, "ema": ema,
                          "meta": {"step": torch.tensor(9)}}, tmp_path / "nested.pt")
    with read_torch(path) as tf:
        state = find_model_state(tf)
    assert state.found_at == "model.state_dict"
    assert list(state.state_dict) == list(module.state_dict())
    assert [p for p, _ in state.other_tensors] == [f"ema.{k}" for k in ema] + ["meta.step"]
    assert any("ema" in note for note in state.notes)


def test_unnamed_candidates_take_the_largest(tmp_path: Path) -> None:
    small, large = builders.rnn_modules()["rnn_cell"], builders.Encoder()
    path = builders.save([small.state_dict(), large.state_dict()], tmp_path / "ensemble.pt")
    with read_torch(path) as tf:
        state = find_model_state(tf)
    assert state.found_at == "1" and list(state.state_dict) == list(large.state_dict())
    assert any("largest" in note for note in state.notes)


def test_whole_module_inside_a_checkpoint(tmp_path: Path) -> None:
    module = builders.Encoder()
    path = builders.save({"epoch": 2, "model": module, "optimizer": builders.trained_optimizer(module).state_dict()},
                         tmp_path / "ckpt_module.pt", legacy=True)
    loaded = truth.load_trusted(path)
    with read_torch(path) as tf:
        state = find_model_state(tf)
        expected = loaded["model"].state_dict()
        for key, tensor in expected.items():
            truth.assert_same_tensor(state.state_dict[key], tensor, where=key)
    assert state.source == "module" and state.found_at == "model"
    assert list(state.state_dict) == list(expected)
    assert "scratch" not in state.state_dict  # a non-persistent buffer, as state_dict() leaves it out
    assert [p for p, _ in state.other_tensors] == ["model._buffers.scratch"]
    assert state.optimizer_elements == _optimizer_elements(loaded["optimizer"])[0]


def test_no_state_dict(tmp_path: Path) -> None:
    path = builders.save(torch.arange(4.0), tmp_path / "tensor.pt")
    with read_torch(path) as tf:
        state = find_model_state(tf)
    assert state.source == "none" and not state.state_dict and [p for p, _ in state.other_tensors] == [""]
    assert state.notes and "no state dict" in state.notes[-1]
