"""CI commands: snapshot, check, diff (registered on the CLI app).

Exit codes (the contract): 0 every check holds / identical structure, 1 a check failed / the
structure differs, 2 the input could not be read or the arguments are wrong (3 is an lstm-inspect bug).
Models are read in the guarded child; lock files (our own JSON) are parsed and validated here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .render import CheckFormat, DiffFormat
from .cli import _handle_errors, app, guarded, scaled_timeout, stderr_console, stdout_console
from .errors import UsageError

def _parse_limit(text: str) -> int:
    from . import expect  # imported on use: keeps start-up light
    value = expect.parse_number(text)
    if value is None or value < 0 or value != int(value):
        raise UsageError(f"--max-params must be a whole number of parameters (e.g. 2000000, 2e6, 2M), not {text!r}")
    return int(value)


@app.command()
def snapshot(
    model: Path = typer.Argument(..., help="Model file."),
    output: Path = typer.Option(..., "--output", "-o",
                                help="Lock file to write (e.g. model.shapes.json); '-' for stdout."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
) -> None:
    """Write a lock file of the architecture: layers, weight shapes/dtypes/checksums, recurrent directions."""
    from . import lockfile  # imported on use: keeps start-up light
    from .export import atomic_output
    with _handle_errors():
        if str(output) == "-":
            data = guarded(lockfile.snapshot_data, str(model), with_checksums=True, label=str(model),
                           timeout=scaled_timeout(model))
            sys.stdout.write(lockfile.dumps(data))
            return
        with atomic_output(output, force) as tmp:
            data = guarded(lockfile.snapshot_data, str(model), with_checksums=True, label=str(model),
                           timeout=scaled_timeout(model))
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(lockfile.dumps(data))
                fh.flush()
                os.fsync(fh.fileno())
        tensors = sum(_count_weights(layer) for layer in data["layers"])
        stderr_console().print(f"wrote snapshot of {len(data['layers'])} layer(s), {len(data['recurrent'])} "
                               f"recurrent direction(s) and {tensors} weight checksum(s) to {output}",
                               markup=False, highlight=False)


def _count_weights(layer: dict) -> int:
    return len(layer["weights"]) + sum(_count_weights(c) for c in layer.get("layers", []))


@app.command()
def check(
    model: Path = typer.Argument(..., help="Model file."),
    against: Optional[Path] = typer.Option(None, "--against", "-a",
                                           help="Lock file written by `snapshot`: every difference fails."),
    expect_: List[str] = typer.Option([], "--expect", "-e",
                                      help="Assertion such as lstm.units=128, bidi/forward.kind=GRU, "
                                           "total_params<=2e6, recurrent.count=2 (repeatable)."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Fail above this many parameters."),
    weights: bool = typer.Option(False, "--weights",
                                 help="With --against: also compare each weight tensor's sha256."),
    finite: bool = typer.Option(False, "--finite", help="Fail on NaN or Inf in any weight (names tensor and gate)."),
    fmt: CheckFormat = typer.Option(CheckFormat.TEXT, "--format", "-f", case_sensitive=False,
                                    help="text (default), json, junit or github."),
) -> None:
    """Check a model against a lock file and/or assertions. Exit 0 all hold, 1 a check failed, 2 bad input."""
    from . import ci_report, expect, lockfile  # imported on use: keeps start-up light
    with _handle_errors():
        if against is None and not expect_ and max_params is None and not finite:
            raise UsageError("nothing to check: give --against, --expect, --max-params or --finite")
        if weights and against is None:
            raise UsageError("--weights compares checksums with a lock file: give --against too")
        expectations = [expect.parse(e) for e in expect_]
        limit = _parse_limit(max_params) if max_params is not None else None
        lock = lockfile.load_lock(against) if against is not None else None
        data = guarded(lockfile.snapshot_data, str(model), with_checksums=weights, finite=finite,
                       label=str(model), timeout=scaled_timeout(model))
        checks = []
        if lock is not None:
            checks.extend(lockfile.compare(lock, data, weights=weights).checks)
        checks.extend(expect.evaluate(e, data) for e in expectations)
        if limit is not None:
            checks.append(lockfile.max_params_check(data, limit))
        if finite:
            checks.append(lockfile.finite_check(data))
        report = lockfile.CheckReport(str(model), tuple(checks), str(against) if against is not None else None)
        if fmt is CheckFormat.JSON:
            sys.stdout.write(ci_report.render_json(report))
        elif fmt is CheckFormat.JUNIT:
            sys.stdout.write(ci_report.render_junit(report))
        elif fmt is CheckFormat.GITHUB:
            sys.stdout.write(ci_report.render_github(report))
        else:
            ci_report.render_text(report, stdout_console())
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def diff(
    a: Path = typer.Argument(..., help="First model (any dialect)."),
    b: Path = typer.Argument(..., help="Second model (any dialect)."),
    fmt: DiffFormat = typer.Option(DiffFormat.TABLE, "--format", "-f", case_sensitive=False,
                                   help="table (default), json or markdown."),
) -> None:
    """Structural differences between two models, and per-gate relative weight change ‖B−A‖/‖A‖.

    Exit 0 when the structure is identical (weight values may differ), 1 when it differs, 2 bad input.
    """
    from . import ci_report, lockfile  # imported on use: keeps start-up light
    with _handle_errors():
        data = guarded(lockfile.diff_data, str(a), str(b), label=f"{a}, {b}", timeout=scaled_timeout(a, b))
        comparison = lockfile.compare(data["a"], data["b"], semantic=True)
        result = lockfile.DiffReport(str(a), str(b), data["a"]["source"]["format"], data["b"]["source"]["format"],
                                     comparison, tuple(data["changes"]))
        if fmt is DiffFormat.JSON:
            sys.stdout.write(ci_report.render_diff_json(result))
        elif fmt is DiffFormat.MARKDOWN:
            sys.stdout.write(ci_report.render_diff_markdown(result))
        else:
            ci_report.render_diff_table(result, stdout_console())
        if not result.identical:
            raise typer.Exit(1)
