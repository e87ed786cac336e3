"""Builders of PyTorch files for the reader's tests (torch is imported here: tests only).

Three kinds of files:
- saved by torch itself (`torch.save` zip and legacy, `torch.jit.script(...).save`,
  `safetensors.torch.save_file`) from the modules below, with the truth taken from torch's loaders;
- written by `TorchPickler` (Python's own pickler with torch's persistent ids) into a legacy stream
  or a zip `data.pkl`, for layouts torch 2.13 no longer writes (legacy storage views, 2017-era
  module pickles) and for hostile pickles;
- assembled opcode by opcode (`op_*`), for bombs that no pickler would write.

The module classes live here, in a real file, so that TorchScript can read their source and a
whole-module pickle names them `tests.torch.builders.<Class>`.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
CANARY = "CANARY"


# ----------------------------------------------------------------------------------------------
# Modules


class Encoder(nn.Module):
    """Embedding → 2-layer bidirectional LSTM → batch norm → linear head, plus buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.rnn = nn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.norm = nn.BatchNorm1d(12)
        self.head = nn.Linear(12, 3)
        self.register_buffer("scale", torch.linspace(0, 1, 3))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        return self.head(self.norm(out[:, -1])) * self.scale


class Stack(nn.Module):
    """Nested modules: a GRU encoder inside a Sequential-like container, a ReLU RNN, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleDict({"gru": nn.GRU(4, 5, num_layers=2, bidirectional=True)})
        self.decoder = nn.RNN(10, 3, nonlinearity="relu")
        self.head = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.encoder["gru"](x)
        y, _ = self.decoder(h)
        return self.head(y)


class Cells(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(4, 5)
        self.gru = nn.GRUCell(5, 6)
        self.rnn = nn.RNNCell(6, 3, nonlinearity="relu", bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x)
        return self.rnn(self.gru(h))


def rnn_modules() -> dict[str, nn.Module]:
    """Every recurrent module kind the issue names, seeded."""
    torch.manual_seed(0)
    return {
        "lstm_2layer_bi": nn.LSTM(5, 8, num_layers=2, bidirectional=True),
        "lstm_proj": nn.LSTM(5, 8, num_layers=2, proj_size=3),
        "lstm_proj_bi": nn.LSTM(5, 8, proj_size=3, bidirectional=True),
        "lstm_nobias": nn.LSTM(5, 8, bias=False),
        "gru_2layer_bi": nn.GRU(5, 6, num_layers=2, bidirectional=True),
        "rnn_tanh": nn.RNN(5, 6),
        "rnn_relu": nn.RNN(5, 6, num_layers=2, nonlinearity="relu"),
        "lstm_cell": nn.LSTMCell(5, 7),
        "gru_cell": nn.GRUCell(5, 7),
        "rnn_cell": nn.RNNCell(5, 7, nonlinearity="relu"),
        "encoder": Encoder(),
        "stack": Stack(),
        "cells": Cells(),
    }


def trained_optimizer(module: nn.Module) -> torch.optim.Optimizer:
    """Adam after one step, so its state holds exp_avg / exp_avg_sq tensors per parameter."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loss = sum((p.float() ** 2).sum() for p in module.parameters())
    loss.backward()
    opt.step()
    opt.zero_grad()
    return opt


def checkpoint(module: nn.Module) -> dict:
    opt = trained_optimizer(module)
    return {"epoch": 7, "model_state_dict": module.state_dict(), "optimizer_state_dict": opt.state_dict(),
            "loss": 0.25}


def lightning_checkpoint(module: nn.Module) -> dict:
    """The keys Lightning's `dump_checkpoint` writes, with the model as a LightningModule attribute."""
    opt = trained_optimizer(module)
    state = collections.OrderedDict((f"model.{k}", v) for k, v in module.state_dict().items())
    return {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.125),
                                                                "best_model_path": "/ckpt/best.ckpt"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [{"step_size": 10, "gamma": 0.5, "base_lrs": [1e-3], "last_epoch": 3}],
        "hparams_name": "kwargs", "hyper_parameters": {"hidden": 8, "layers": 2, "lr": 1e-3},
    }


# ----------------------------------------------------------------------------------------------
# Saving with torch


def save(obj: Any, path: Path, *, legacy: bool = False, protocol: int = 2) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)
    return path


def save_script(module: nn.Module, path: Path, *, trace_input: torch.Tensor | None = None) -> Path:
    scripted = torch.jit.trace(module, trace_input) if trace_input is not None else torch.jit.script(module)
    scripted.save(str(path))
    return path


def save_safetensors(state_dict: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=metadata)
    return path


# ----------------------------------------------------------------------------------------------
# Writing pickles with torch's persistent ids


class StorageId:
    """Stands for a storage in a hand-written pickle; `TorchPickler` writes it as a persistent id."""

    def __init__(self, pid: tuple) -> None:
        self.pid = pid


class Reduce:
    """An object that pickles as `func(*args)` (plus a BUILD of `state` when given)."""

    def __init__(self, func: Any, args: tuple, state: Any = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        return obj.pid if isinstance(obj, StorageId) else None


def dumps(obj: Any, protocol: int = 2) -> bytes:
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def tensor_v2(pid: tuple, offset: int, size: tuple, stride: tuple) -> Reduce:
    return Reduce(torch._utils._rebuild_tensor_v2,
                  (StorageId(pid), offset, size, stride, False, collections.OrderedDict()))


def legacy_stream(main: bytes, storages: list[tuple[str, bytes, int]], *, keys: list | None = None,
                  protocol: int = 2) -> bytes:
    """A pre-1.6 file: magic, protocol version, sys_info, the object's pickle (`main`), the storage
    keys, then each storage as an int64 element count and its bytes. storages: (key, raw, itemsize)."""
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    out = pickle.dumps(LEGACY_MAGIC, protocol) + pickle.dumps(1001, protocol) + pickle.dumps(sys_info, protocol)
    out += main + pickle.dumps([k for k, _, _ in storages] if keys is None else keys, protocol)
    for _key, raw, itemsize in storages:
        out += struct.pack("<q", len(raw) // itemsize) + raw
    return out


def replace_members(source: Path, target: Path, replacements: dict[str, bytes]) -> Path:
    """A copy of a torch zip with some members' bytes replaced (stored, as torch writes them)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            suffix = info.filename.split("/", 1)[1]
            zout.writestr(info.filename, replacements.get(suffix, zin.read(info.filename)))
    return target


def zip_with_pickle(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None,
                    archive: str = "archive") -> Path:
    """A torch zip around a hand-written data.pkl."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", data_pkl)
        zf.writestr(f"{archive}/byteorder", b"little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"{archive}/data/{key}", raw)
        zf.writestr(f"{archive}/version", b"3\n")
    return path


# ----------------------------------------------------------------------------------------------
# A 2017-era legacy whole-module pickle (torch 0.3 under Python 2), written opcode by opcode:
# byte strings (SHORT_BINSTRING), `__builtin__` / `copy_reg` names, the class recorded through a
# ('module', class, source file, source) persistent id, an OrderedDict REDUCEd from [key, value]
# pairs, `_rebuild_tensor` (v1), and Parameter(data) REDUCE + BUILD (requires_grad, volatile, hooks).


def op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(text: str) -> bytes:
    raw = text.encode()
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw


def op_int(n: int) -> bytes:
    return b"K" + bytes([n]) if 0 <= n < 256 else b"J" + struct.pack("<i", n)


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def py2_module_pickle(class_module: str, class_name: str, params: dict[str, tuple[str, np.ndarray]],
                      attributes: dict[str, Any], backend: bool) -> bytes:
    """params: name → (storage key, float32 array). Returns the main pickle (protocol 2). `backend`
    adds torch 0.3's `_backend` (a THNNFunctionBackend object, a class torch 2.13 no longer has)."""
    out = b"\x80\x02"
    out += op_tuple(op_str("module"), op_global(class_module, class_name), op_str("/home/user/model.py"),
                    op_str(f"class {class_name}(nn.Module): ...")) + b"Q"
    out += b")\x81"  # NEWOBJ (no arguments): the module
    out += b"}(" + op_str("_parameters") + op_global("collections", "OrderedDict") + b"](" + b"".join(
        b"]" + b"(" + op_str(name) + _py2_parameter(key, array) + b"e" for name, (key, array) in params.items()
    ) + b"e" + b"\x85R"
    out += op_str("_buffers") + op_global("collections", "OrderedDict") + b")R"
    out += op_str("_modules") + op_global("collections", "OrderedDict") + b")R"
    if backend:
        out += op_str("_backend") + op_global("torch.nn.backends.thnn", "THNNFunctionBackend") + b")\x81}b"
    for key, value in attributes.items():
        out += op_str(key) + (op_str(value) if isinstance(value, str) else b"\x88" if value is True
                              else b"\x89" if value is False else op_int(value))
    out += b"ub."  # SETITEMS, BUILD, STOP
    return out


def _py2_parameter(key: str, array: np.ndarray) -> bytes:
    storage = op_tuple(op_str("storage"), op_global("torch.cuda", "FloatStorage"), op_str(key), op_str("cuda:0"),
                       op_int(array.size), b"N") + b"Q"
    size = op_tuple(*(op_int(n) for n in array.shape))
    stride = op_tuple(*(op_int(s // 4) for s in array.strides))
    tensor = op_global("torch._utils", "_rebuild_tensor") + op_tuple(storage, op_int(0), size, stride) + b"R"
    return (op_global("torch.nn.parameter", "Parameter") + b"(" + tensor + b"tR"
            + op_tuple(b"\x88", b"\x89", op_global("collections", "OrderedDict") + b")R") + b"b")


def py2_module_file(path: Path, class_module: str, class_name: str, params: dict[str, np.ndarray],
                    attributes: dict[str, Any], backend: bool = True) -> Path:
    keyed = {name: (str(140000000 + 16 * i), np.ascontiguousarray(a, np.float32))
             for i, (name, a) in enumerate(params.items())}
    main = py2_module_pickle(class_module, class_name, keyed, attributes, backend)
    storages = [(key, array.tobytes(), 4) for key, array in keyed.values()]
    path.write_bytes(legacy_stream(main, storages))
    return path


# ----------------------------------------------------------------------------------------------
# Hostile pickles


def touch_canary(folder: str) -> None:
    """A harmless function that a careless unpickler would call: it leaves a file behind."""
    Path(folder, CANARY).write_text("called")


def storage_pid(key: str, numel: int, legacy: bool) -> tuple:
    """torch's persistent id of a float32 storage: the legacy one adds the view (None)."""
    return ("storage", torch.FloatStorage, key, "cpu", numel) + ((None,) if legacy else ())


def evil_payloads(folder: Path, legacy: bool = False) -> dict[str, tuple[Any, str]]:
    """name → (an object that pickles into a hostile pickle, the global the refusal must name)."""
    canary = str(folder / CANARY)
    tensor = (torch._utils._rebuild_tensor_v2,
              (StorageId(storage_pid("0", 4, legacy)), 0, (4,), (1,), False, collections.OrderedDict()))
    return {
        "os-system": (Reduce(os.system, (f"touch {canary}",)), "posix.system"),
        "builtins-exec": (Reduce(exec, (f"open({canary!r}, 'w')",)), "builtins.exec"),
        "builtins-eval": (Reduce(eval, (f"open({canary!r}, 'w')",)), "builtins.eval"),
        "subprocess-popen": (Reduce(__import__("subprocess").Popen, (["touch", canary],)), "subprocess.Popen"),
        "importlib": (Reduce(__import__("importlib").import_module, ("os",)), "importlib.import_module"),
        "arbitrary-callable": (Reduce(touch_canary, (str(folder),)), "tests.torch.builders.touch_canary"),
        "builtins-getattr": (Reduce(getattr, (collections.OrderedDict, "fromkeys")), "builtins.getattr"),
        "build-dangerous-state": (Reduce(collections.OrderedDict, (),
                                         {"_metadata": Reduce(os.system, (f"touch {canary}",))}), "posix.system"),
        "build-dunder-state": (Reduce(collections.OrderedDict, (), {"__setstate__": touch_canary}),
                               "collections.OrderedDict"),
        "build-tensor-dunder-state": (Reduce(*tensor, {"__reduce_ex__": touch_canary}),
                                      "torch._utils._rebuild_tensor_v2"),
    }


EVIL_CONTAINERS = ("zip", "legacy", "zip-nested", "legacy-nested")


def evil_file(folder: Path, container: str, name: str, protocol: int) -> tuple[Path, str]:
    """A .pt whose pickle holds payload `name`: as the whole object, or inside a real state dict."""
    legacy = container.startswith("legacy")
    payload, refused = evil_payloads(folder, legacy)[name]
    if container.endswith("nested"):
        weight = tensor_v2(storage_pid("0", 4, legacy), 0, (4,), (1,))
        payload = collections.OrderedDict([("weight", weight), ("evil", payload), ("bias", weight)])
    pickled = dumps(payload, protocol)
    path = folder / f"{name}-{container}-p{protocol}.pt"
    if not legacy:
        zip_with_pickle(path, pickled, {"0": np.arange(4, dtype=np.float32).tobytes()})
    else:
        path.write_bytes(legacy_stream(pickled, [("0", np.arange(4, dtype=np.float32).tobytes(), 4)]))
    return path, refused
