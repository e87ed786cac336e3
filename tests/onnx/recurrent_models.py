"""Hand-built ONNX models with one LSTM/GRU/RNN node, and the truth about their gates computed here from
the arrays written (the ONNX definition: W[d] rows in gate order LSTM i, o, f, c / GRU z, r, h; B[d] =
[Wb; Rb]; P[d] = i, o, f), independently of lstm-inspect's gate layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .helpers import model, out

ONNX_GATES = {"LSTM": ("i", "o", "f", "c"), "GRU": ("z", "r", "h"), "RNN": ("",)}
ROLES = ("W", "R", "B", "P")
SEQ, BATCH = 5, 2


def arrays(op: str, hidden: int, inputs: int, dirs: int, seed: int = 0) -> dict[str, np.ndarray]:
    gates = len(ONNX_GATES[op])
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((dirs, gates * hidden, inputs)).astype(np.float32),
            "R": rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32),
            "B": rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32),
            "P": rng.standard_normal((dirs, 3 * hidden)).astype(np.float32)}


def node_inputs(roles: str) -> list[str]:
    names = ["X", "W", "R", "B" if "B" in roles else "", "", "", "", "P" if "P" in roles else ""]
    while not names[-1]:
        names.pop()
    return names


def recurrent_model(op: str, hidden: int = 3, inputs: int = 4, dirs: int = 1, roles: str = "WRB",
                    dtype=np.float32, seed: int = 0, name: str = "rnn", **attrs) -> tuple[onnx.ModelProto, dict]:
    """One node named `name` reading X (SEQ, BATCH, inputs) (batch first with layout=1); returns the model
    and the float32 arrays of its weights."""
    values = {k: v for k, v in arrays(op, hidden, inputs, dirs, seed).items() if k in roles}
    inits = [numpy_helper.from_array(v.astype(dtype), k) for k, v in values.items()]
    node = helper.make_node(op, node_inputs(roles), ["Y"], name=name, hidden_size=hidden, **attrs)
    shape = [BATCH, SEQ, inputs] if attrs.get("layout") == 1 else [SEQ, BATCH, inputs]
    made = model([node], inits, [out("X", shape=shape)], [out("Y")])
    return made, {k: v.astype(dtype).astype(np.float32) for k, v in values.items()}


def expected_blocks(op: str, values: dict[str, np.ndarray], hidden: int, direction: int) -> dict[str, np.ndarray]:
    """The canonical blocks (x @ W layout) of one direction, from the ONNX definition."""
    H = hidden
    out_: dict[str, np.ndarray] = {}
    gates = ONNX_GATES[op]
    n = len(gates)
    for k, gate in enumerate(gates):
        suffix = f"_{gate}" if gate else ""
        out_[f"W{suffix}"] = values["W"][direction, k * H:(k + 1) * H].T
        out_[f"U{suffix}"] = values["R"][direction, k * H:(k + 1) * H].T
        if "B" in values:
            out_[f"b{suffix}"] = values["B"][direction, k * H:(k + 1) * H]
            out_[f"bU{suffix}"] = values["B"][direction, (n + k) * H:(n + k + 1) * H]
    if "P" in values:
        for k, gate in enumerate(("i", "o", "f")):
            out_[f"p_{gate}"] = values["P"][direction, k * H:(k + 1) * H]
    return out_


def save_model(m: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(m.SerializeToString())
    return path
