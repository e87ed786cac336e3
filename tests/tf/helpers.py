"""Shared helpers of the TensorFlow model tests: the CLI in-process, TF's truth of the zoo, and a NumPy
forward pass of a chain of directions (the same reference `verify` uses)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from lstm_inspect import reference as ref
from lstm_inspect.cells import directions
from lstm_inspect.formats import open_model

RUNNER = CliRunner()
TF1_CASES = ("tf1_cells", "tf1_more", "tf1_handmade", "tf1_v0")


def cli(*args: str, code: int = 0) -> str:
    from lstm_inspect.cli import app

    result = RUNNER.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (args, result.exit_code, result.output, result.exception)
    return result.stdout


def summary_json(path) -> dict:
    return json.loads(cli("summary", "--format", "json", path))


def case_path(tfzoo, case: str) -> Path:
    truth = tfzoo.case(case)
    return tfzoo.path(truth.get("prefix") or truth["file"])


def spec(d, forget_bias=None) -> dict:
    """What the NumPy reference needs of a direction (as verify collects it)."""
    return {"kind": d.kind.value, "units": d.units, "activation": d.activation,
            "recurrent_activation": d.recurrent_activation, "reset_after": d.reset_after,
            "forget_bias": d.forget_bias if forget_bias is None else forget_bias,
            "cell_clip": d.cell_clip, "proj_clip": d.proj_clip}


def blocks_of(d) -> dict[str, np.ndarray]:
    return {b.name: b.read() for b in d.blocks}


def numpy_run(d, x: np.ndarray, forget_bias=None, reverse: bool = False) -> np.ndarray:
    """The output sequence of one direction, in input order (a bw cell reads x reversed, and TF
    reverses its outputs back)."""
    xs = x[:, ::-1] if reverse else x
    seq, _ = ref.run(spec(d, forget_bias), blocks_of(d), xs, "keras3")
    return seq[:, ::-1] if reverse else seq


def chain_output(dirs: dict, run: dict, forget_bias_shift: float = 0.0) -> np.ndarray:
    """TF's output of a recorded run, recomputed with NumPy from the split blocks of its cells."""
    x = np.load(run["_x"]).astype(np.float64)

    def fb(d):
        if run.get("forget_bias") is None or d.kind.value != "LSTM":
            return None
        return run["forget_bias"] + forget_bias_shift

    if run.get("stack_bidi"):
        out = x
        for fw, bw in run["stack_bidi"]:
            a = numpy_run(dirs[fw], out, fb(dirs[fw]))
            b = numpy_run(dirs[bw], out, fb(dirs[bw]), reverse=True)
            out = np.concatenate([a, b], axis=-1)
        return out
    out = x
    for path in run["chain"]:
        out = numpy_run(dirs[path], out, fb(dirs[path]), reverse=run.get("reverse", False))
    return out


def runs_of(tfzoo, case: str) -> list[dict]:
    items = []
    for run in tfzoo.case(case).get("runs", []):
        items.append(dict(run, _x=str(tfzoo.path(run["x"])), _y=str(tfzoo.path(run["y"]))))
    return items


def directions_of(path) -> dict:
    with open_model(path) as model:
        return {d.path: d for d in directions(model)}, model
