"""verify and convert commands (registered on the CLI app).

Both read the file in the guarded child (`verify.collect`, plain dicts and arrays back); the parent
then runs Keras (verify, TensorFlow imported lazily) or writes the outputs (convert).
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import List

import typer

from .cli import _handle_errors, app, guarded, scaled_timeout, stderr_console, stdout_console
from .errors import UsageError


class VerifyFormat(str, Enum):
    TABLE = "table"
    JSON = "json"


class Target(str, Enum):
    PYTORCH = "pytorch"
    ONNX = "onnx"


@app.command()
def verify(
    model: Path = typer.Argument(..., help="Model file."),
    layer: List[str] = typer.Option([], "--layer", "-l",
                                    help="Only directions whose path matches this glob (repeatable)."),
    steps: int = typer.Option(7, "--steps", help="Time steps of the random input.", min=1, max=10_000),
    batch: int = typer.Option(3, "--batch", help="Batch size of the random input.", min=1, max=10_000),
    seed: int = typer.Option(0, "--seed", help="Seed of the random input.", min=0),
    tolerance: float = typer.Option(1e-5, "--tolerance", help="Largest allowed absolute difference.", min=0.0),
    fmt: VerifyFormat = typer.Option(VerifyFormat.TABLE, "--format", "-f", help="table (default) or json.",
                                     case_sensitive=False),
) -> None:
    """Run each recurrent direction in Keras and in a NumPy cell built from the split blocks; compare.

    Needs TensorFlow (pip install 'lstm-inspect[tf]'). Exit 0 when every direction is within the
    tolerance, 1 when one is not, 2 on bad input.
    """
    from . import verify as verify_mod

    with _handle_errors():
        verify_mod.require_tensorflow()
        # Read in the guarded child first: TensorFlow starts threads, and the guard forks.
        data = guarded(verify_mod.collect, str(model), tuple(layer), label=str(model),
                       timeout=scaled_timeout(model))
        report = verify_mod.check(data, steps=steps, batch=batch, seed=seed, tolerance=tolerance)
    if fmt is VerifyFormat.JSON:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        verify_mod.render_table(report, stdout_console())
    rows = report["directions"]
    failed = [r for r in rows if r["status"] == "fail"]
    errors = [r for r in rows if r["status"] == "error"]
    console = stderr_console()
    if failed:
        console.print(f"verify FAILED for {', '.join(r['path'] for r in failed)} "
                      f"(tolerance {tolerance:g})", markup=False, highlight=False)
        raise typer.Exit(1)
    if errors:
        console.print(f"verify could not check {', '.join(r['path'] for r in errors)}: "
                      f"{errors[0]['reason']}", markup=False, highlight=False)
        raise typer.Exit(2)
    console.print(f"verify: {len(rows)} recurrent direction(s) within {tolerance:g}", markup=False,
                  highlight=False)


@app.command()
def convert(
    model: Path = typer.Argument(..., help="Model file."),
    to: Target = typer.Option(..., "--to", help="pytorch (a .safetensors file) or onnx (a folder of .onnx "
                                                "models, one per recurrent layer).", case_sensitive=False),
    output: Path = typer.Option(..., "--output", "-o", help="Output .safetensors file (pytorch) or folder (onnx)."),
    layer: List[str] = typer.Option([], "--layer", "-l",
                                    help="Only layers whose path matches this glob (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
) -> None:
    """Write recurrent weights for torch.nn.LSTM/GRU/RNN (safetensors) or as ONNX LSTM/GRU/RNN models."""
    from . import convert as convert_mod
    from . import verify as verify_mod

    with _handle_errors():
        convert_mod.require(to.value)
        if output.exists() and not force:
            raise UsageError(f"{output} already exists (use --force to replace it)")
        data = guarded(verify_mod.collect, str(model), tuple(layer), False, label=str(model),
                       timeout=scaled_timeout(model))
        if to is Target.PYTORCH:
            result = convert_mod.write_pytorch(data, output, force)
        else:
            result = convert_mod.write_onnx(data, output, force)
    console = stderr_console()
    for line in result["lines"]:
        console.print(line, markup=False, highlight=False)
