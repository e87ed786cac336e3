"""The command line: parse, call the library (reading in a guarded child process), render.

Every command body is those three steps; the work lives in `lstm_inspect.commands` and the output
in `lstm_inspect.render`, and nothing imports this module. Errors become exit codes in one place
(`_handle_errors`): 1 a check or verification failed, 2 bad input or usage, 3 an internal error,
130 Ctrl-C. Data goes to stdout, messages to stderr.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Iterator, List, Optional

import typer

from lstm_inspect import __version__, api
from lstm_inspect.errors import InspectError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Inspect saved Keras recurrent models (LSTM, GRU, SimpleRNN, ConvLSTM) "
                       "without TensorFlow.")

_state = {"debug": False}


class OutputFormat(str, Enum):
    TABLE = "table"
    JSON = "json"
    MARKDOWN = "markdown"


class CheckFormat(str, Enum):
    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"
    GITHUB = "github"


class VerifyFormat(str, Enum):
    TABLE = "table"
    JSON = "json"


class Target(str, Enum):
    PYTORCH = "pytorch"
    ONNX = "onnx"


class ProbeInput(str, Enum):
    NORMAL = "normal"
    ZEROS = "zeros"


class PlotKind(str, Enum):
    HEATMAP = "heatmap"
    HIST = "hist"
    SPECTRUM = "spectrum"
    ALL = "all"


# --- options shared by several commands ----------------------------------------------------------

ModelArg = Annotated[Path, typer.Argument(help="Model file.")]
LayerOpt = Annotated[List[str], typer.Option("--layer", "-l",
                                             help="Only directions whose path matches this glob (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it exists.")]
ForgetBiasOpt = Annotated[Optional[float], typer.Option(
    "--forget-bias", help="The run-time forget bias of TF1 LSTM cells (not stored in checkpoints; "
                          "assumed 1.0 for BasicLSTMCell/LSTMCell, 0 for cuDNN-compatible cells).")]


def stdout_console():
    from rich.console import Console  # imported only when a rich table is printed
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 120, highlight=False)


def stderr_console():
    from rich.console import Console
    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """A message for the user on stderr (never interpreted as rich markup)."""
    stderr_console().print(message, markup=False, highlight=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lstm-inspect {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("LSTM_INSPECT_DEBUG") == "1"


def error_line(message: str) -> None:
    """One line on stderr, never interpreted as markup; names from files cannot inject escapes."""
    from lstm_inspect.safety.text import printable
    print(f"lstm-inspect: {printable(str(message), max_chars=2000)}", file=sys.stderr)


@contextmanager
def _handle_errors() -> Iterator[None]:
    try:
        yield
    except typer.Exit:
        raise
    except InspectError as err:
        if _state["debug"]:
            traceback.print_exc()
            tb = getattr(err, "debug_traceback", None)
            if tb:
                print(tb, file=sys.stderr)
        error_line(str(err))
        raise typer.Exit(err.exit_code)
    except KeyboardInterrupt:
        error_line("interrupted")
        raise typer.Exit(130)
    except Exception as err:  # an lstm-inspect bug: say so, keep the traceback behind --debug
        if _state["debug"]:
            traceback.print_exc()
        error_line(f"internal error: {type(err).__name__}: {err} "
                   "(please report it; run with --debug for the traceback)")
        raise typer.Exit(3)


def guarded(fn, *args, label: str, **kwargs):
    """Run a reading function in a disposable child process (see safety/guard.py)."""
    from lstm_inspect.safety.guard import run_guarded
    return run_guarded(fn, *args, label=label, **kwargs)


def scaled_timeout(*paths: Path, seconds_per_20mb: float = 1.0) -> float:
    """The guard's time limit for commands that read every weight byte (copy, hash, scan): the
    default (LSTM_INSPECT_TIMEOUT, else 30 s) plus 1 s per 20 MB of input (more for commands
    that compute on every weight: stats, plot)."""
    from lstm_inspect.safety.guard import default_timeout
    size = 0
    for p in paths:
        try:
            if p.is_dir():  # a SavedModel keeps its weights one level down, in variables/
                files = [f for d in (p, p / "variables") if d.is_dir() for f in d.iterdir() if f.is_file()]
            else:  # a TF checkpoint prefix names no file: its .index and .data-* shards
                files = [p] if p.exists() else list(p.parent.glob(p.name + ".*"))
            size += sum(f.stat().st_size for f in files)
        except OSError:
            pass
    return default_timeout() + seconds_per_20mb * size / 20e6


def run() -> None:
    """Console-script entry point."""
    app()


# --- summary, split-gates, explain -----------------------------------------------------------------

@app.command()
def summary(
    models: Annotated[List[Path], typer.Argument(help="Model files (.h5, .hdf5, .keras, .weights.h5, "
                                                      ".weights.json, or an unzipped .keras folder; a "
                                                      "TensorFlow checkpoint prefix, .index or folder; a "
                                                      "SavedModel folder).")],
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", case_sensitive=False,
                                              help="Output format: table (default), json or markdown.")
                   ] = OutputFormat.TABLE,
    forget_bias: ForgetBiasOpt = None,
) -> None:
    """Every layer with exact parameter counts, and per-gate W/U/b blocks of every recurrent layer."""
    from lstm_inspect.render import summary as render
    results = []
    failed = 0
    for path in models:
        try:
            with _handle_errors():
                results.append(guarded(api.summary, str(path), forget_bias, label=str(path)))
        except typer.Exit as exit_:
            failed = failed or exit_.exit_code
    if results:
        if fmt is OutputFormat.JSON:
            render.write_json(results, sys.stdout, as_list=len(models) > 1)
        elif fmt is OutputFormat.MARKDOWN:
            sys.stdout.write(render.render_markdown(results))
        else:
            render.render_table(results, stdout_console())
    if failed:
        raise typer.Exit(failed)


@app.command("split-gates")
def split_gates(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .npz file.")],
    layer: LayerOpt = [],  # noqa: B006 - typer copies defaults
    force: ForceOpt = False,
    no_source_hash: Annotated[bool, typer.Option(
        "--no-source-hash", help="Do not record the source file's sha256 in __meta__ (saves ~1 s per GB).")
    ] = False,
    forget_bias: ForgetBiasOpt = None,
) -> None:
    """Write every recurrent direction's per-gate W/U/b blocks (Keras math layout) to an .npz."""
    from lstm_inspect.writers.atomic import atomic_output
    with _handle_errors():
        with atomic_output(output, force) as tmp:
            result = guarded(api.split_gates, str(model), str(output), tuple(layer), force=True,
                             tmp_path=tmp, progress=sys.stderr.isatty(), source_hash=not no_source_hash,
                             forget_bias=forget_bias, label=str(model), output_path=tmp,
                             timeout=scaled_timeout(model))
        say(f"wrote {len(result['keys'])} blocks of {len(result['directions'])} "
            f"recurrent direction(s) to {output}")


@app.command()
def explain(
    model: ModelArg,
    layer: Annotated[List[str], typer.Option("--layer", "-l", help="Only directions matching this glob.")
                     ] = [],  # noqa: B006
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or markdown.")] = "text",
    forget_bias: ForgetBiasOpt = None,
) -> None:
    """Each recurrent cell's equations with this model's sizes, and what units/outputs/states mean."""
    with _handle_errors():
        if fmt not in ("text", "markdown"):
            raise UsageError(f"--format must be text or markdown, not {fmt!r}")
        text = guarded(api.explain_text, str(model), tuple(layer), fmt == "markdown", forget_bias, label=str(model))
        sys.stdout.write(text)


# --- verify and convert ------------------------------------------------------------------------

@app.command()
def verify(
    model: ModelArg,
    layer: LayerOpt = [],  # noqa: B006
    steps: Annotated[int, typer.Option("--steps", help="Time steps of the random input.", min=1, max=10_000)] = 7,
    batch: Annotated[int, typer.Option("--batch", help="Batch size of the random input.", min=1, max=10_000)] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random input.", min=0)] = 0,
    tolerance: Annotated[Optional[float], typer.Option(
        "--tolerance", min=0.0, help="Largest allowed absolute difference (default 1e-5; 1e-4 for ONNX models, "
                                     "which onnxruntime computes in float32; for a quantized .tflite model, a "
                                     "number of its quantization steps).")] = None,
    fmt: Annotated[VerifyFormat, typer.Option("--format", "-f", help="table (default) or json.",
                                              case_sensitive=False)] = VerifyFormat.TABLE,
    forget_bias: ForgetBiasOpt = None,
) -> None:
    """Run each recurrent direction in Keras and in a NumPy cell built from the split blocks; compare.

    Needs TensorFlow (pip install 'lstm-inspect[tf]'); an ONNX model runs in onnxruntime instead
    (pip install 'lstm-inspect[onnx]'); a .tflite model in TensorFlow's own tf.lite.Interpreter (each
    recurrent operator's real input and output against the NumPy cell). Exit 0 when every direction is
    within the tolerance, 1 when one is not, 2 on bad input.
    """
    from lstm_inspect.commands import verify as verify_mod

    with _handle_errors():
        # Read in the guarded child first: the frameworks start threads, and the guard forks.
        data = guarded(verify_mod.collect, str(model), tuple(layer), True, forget_bias, label=str(model),
                       timeout=scaled_timeout(model))
        runner = verify_mod.runner_for(data["framework"])
        runner.require()
        tolerance = runner.tolerance if tolerance is None else tolerance
        report = runner.check(data, steps=steps, batch=batch, seed=seed, tolerance=tolerance)
    if fmt is VerifyFormat.JSON:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        runner.render_table(report, stdout_console())
    rows = report["directions"]
    failed = [r for r in rows if r["status"] == "fail"]
    errors = [r for r in rows if r["status"] == "error"]
    limit = f"{tolerance:g}" if tolerance is not None else "the tolerance of each"
    if failed:
        say(f"verify FAILED for {', '.join(r['path'] for r in failed)} (tolerance {limit})")
        raise typer.Exit(1)
    if errors:
        say(f"verify could not check {', '.join(r['path'] for r in errors)}: {errors[0]['reason']}")
        raise typer.Exit(2)
    say(f"verify: {len(rows)} recurrent direction(s) within {limit}")


@app.command()
def convert(
    model: ModelArg,
    to: Annotated[Target, typer.Option("--to", case_sensitive=False,
                                       help="pytorch (a .safetensors file) or onnx (a folder of .onnx "
                                            "models, one per recurrent layer).")],
    output: Annotated[Path, typer.Option("--output", "-o",
                                         help="Output .safetensors file (pytorch) or folder (onnx).")],
    layer: Annotated[List[str], typer.Option("--layer", "-l",
                                             help="Only layers whose path matches this glob (repeatable).")
                     ] = [],  # noqa: B006
    force: ForceOpt = False,
    forget_bias: ForgetBiasOpt = None,
) -> None:
    """Write recurrent weights for torch.nn.LSTM/GRU/RNN (safetensors) or as ONNX LSTM/GRU/RNN models."""
    from lstm_inspect.commands import convert as convert_mod
    from lstm_inspect.commands import verify as verify_mod

    with _handle_errors():
        convert_mod.require(to.value)
        if output.exists() and not force:
            raise UsageError(f"{output} already exists (use --force to replace it)")
        data = guarded(verify_mod.collect, str(model), tuple(layer), False, forget_bias, label=str(model),
                       timeout=scaled_timeout(model))
        write = convert_mod.write_pytorch if to is Target.PYTORCH else convert_mod.write_onnx
        result = write(data, output, force)
    for line in result["lines"]:
        say(line)


# --- snapshot, check, diff (CI) ----------------------------------------------------------------

def _parse_limit(text: str) -> int:
    from lstm_inspect.commands import expect
    value = expect.parse_number(text)
    if value is None or value < 0 or value != int(value):
        raise UsageError(f"--max-params must be a whole number of parameters (e.g. 2000000, 2e6, 2M), not {text!r}")
    return int(value)


@app.command()
def snapshot(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o",
                                         help="Lock file to write (e.g. model.shapes.json); '-' for stdout.")],
    force: ForceOpt = False,
) -> None:
    """Write a lock file of the architecture: layers, weight shapes/dtypes/checksums, recurrent directions."""
    from lstm_inspect.commands import lockfile
    from lstm_inspect.writers.atomic import atomic_output
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
        tensors = sum(lockfile.count_weights(layer) for layer in data["layers"])
        say(f"wrote snapshot of {len(data['layers'])} layer(s), {len(data['recurrent'])} "
            f"recurrent direction(s) and {tensors} weight checksum(s) to {output}")


@app.command()
def check(
    model: ModelArg,
    against: Annotated[Optional[Path], typer.Option("--against", "-a",
                                                    help="Lock file written by `snapshot`: every difference fails.")
                       ] = None,
    expect_: Annotated[List[str], typer.Option("--expect", "-e",
                                               help="Assertion such as lstm.units=128, bidi/forward.kind=GRU, "
                                                    "total_params<=2e6, recurrent.count=2 (repeatable).")
                       ] = [],  # noqa: B006
    max_params: Annotated[Optional[str], typer.Option("--max-params", help="Fail above this many parameters.")
                          ] = None,
    weights: Annotated[bool, typer.Option("--weights",
                                          help="With --against: also compare each weight tensor's sha256.")
                       ] = False,
    finite: Annotated[bool, typer.Option("--finite",
                                         help="Fail on NaN or Inf in any weight (names tensor and gate).")
                      ] = False,
    fmt: Annotated[CheckFormat, typer.Option("--format", "-f", case_sensitive=False,
                                             help="text (default), json, junit or github.")] = CheckFormat.TEXT,
) -> None:
    """Check a model against a lock file and/or assertions. Exit 0 all hold, 1 a check failed, 2 bad input."""
    from lstm_inspect.commands import expect, lockfile
    from lstm_inspect.render import ci as render
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
        report = lockfile.check_report(str(model), data, lock, str(against) if against is not None else None,
                                       expectations=expectations, limit=limit, weights=weights, finite=finite)
        if fmt is CheckFormat.JSON:
            sys.stdout.write(render.render_json(report))
        elif fmt is CheckFormat.JUNIT:
            sys.stdout.write(render.render_junit(report))
        elif fmt is CheckFormat.GITHUB:
            sys.stdout.write(render.render_github(report))
        else:
            render.render_text(report, stdout_console())
        if not report.ok:
            raise typer.Exit(1)


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="First model (any dialect).")],
    b: Annotated[Path, typer.Argument(help="Second model (any dialect).")],
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", case_sensitive=False,
                                              help="table (default), json or markdown.")] = OutputFormat.TABLE,
    stats: Annotated[bool, typer.Option("--stats", help="Also the statistics of `stats` for A and B side by "
                                                        "side: which gate's bias, norm and spectral norm moved.")
                     ] = False,
) -> None:
    """Structural differences between two models, and per-gate relative weight change ‖B−A‖/‖A‖.

    Exit 0 when the structure is identical (weight values may differ), 1 when it differs, 2 bad input.
    """
    from lstm_inspect.commands import lockfile
    from lstm_inspect.render import ci as render
    with _handle_errors():
        timeout = scaled_timeout(a, b, seconds_per_20mb=STATS_SECONDS_PER_20MB if stats else 1.0)
        data = guarded(lockfile.diff_data, str(a), str(b), stats, label=f"{a}, {b}", timeout=timeout)
        result = lockfile.diff_report(str(a), str(b), data)
        if fmt is OutputFormat.JSON:
            sys.stdout.write(render.render_diff_json(result))
        elif fmt is OutputFormat.MARKDOWN:
            sys.stdout.write(render.render_diff_markdown(result))
        else:
            render.render_diff_table(result, stdout_console())
        if not result.identical:
            raise typer.Exit(1)


# --- stats and plot ----------------------------------------------------------------------------

# The guard's time limit (a hang stops there): stats computes on every weight (Gram matrices, the
# probe; ~70 CPU s for the 1 GB model), plot also full singular-value spectra (~240 CPU s).
STATS_SECONDS_PER_20MB = 10.0
PLOT_SECONDS_PER_20MB = 25.0


@app.command()
def stats(
    models: Annotated[List[Path], typer.Argument(help="Model files.")],
    layer: LayerOpt = [],  # noqa: B006
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", case_sensitive=False,
                                              help="table (default), json or markdown.")] = OutputFormat.TABLE,
    samples: Annotated[int, typer.Option("--samples", help="Probe sequences fed to each cell.",
                                         min=1, max=4096)] = 32,
    steps: Annotated[int, typer.Option("--steps", help="Time steps of each probe sequence.", min=1, max=1000)] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the probe's standard-normal inputs.", min=0)] = 0,
    probe: Annotated[ProbeInput, typer.Option("--probe", case_sensitive=False,
                                              help="Probe input: normal (seeded standard-normal, default) "
                                                   "or zeros.")] = ProbeInput.NORMAL,
) -> None:
    """Per-gate statistics: block moments, spectral norms of U, effective forget bias, saturation, dead units."""
    from lstm_inspect.commands import stats as stats_mod
    from lstm_inspect.render import stats as render
    spec = stats_mod.Probe(stats_mod.ProbeKind(probe.value), samples=samples, steps=steps, seed=seed)
    results = []
    failed = 0
    for path in models:
        try:
            with _handle_errors():
                results.append(guarded(stats_mod.stats_data, str(path), tuple(layer), spec, label=str(path),
                                       timeout=scaled_timeout(path, seconds_per_20mb=STATS_SECONDS_PER_20MB)))
        except typer.Exit as exit_:
            failed = failed or exit_.exit_code
    if results:
        if fmt is OutputFormat.JSON:
            sys.stdout.write(render.render_json(results, as_list=len(models) > 1))
        elif fmt is OutputFormat.MARKDOWN:
            sys.stdout.write(render.render_markdown(results))
        else:
            render.render_table(results, stdout_console())
    if failed:
        raise typer.Exit(failed)


@app.command()
def plot(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder (created; holds PNGs and index.md).")],
    layer: LayerOpt = [],  # noqa: B006
    kind: Annotated[PlotKind, typer.Option("--kind", case_sensitive=False,
                                           help="heatmap, hist, spectrum or all (default).")] = PlotKind.ALL,
    force: Annotated[bool, typer.Option("--force", help="Replace OUTPUT if it holds an earlier plot.")] = False,
) -> None:
    """PNG pictures per direction: heat maps of each gate's W and U, histograms, U's singular values.

    Needs matplotlib (pip install 'lstm-inspect[plot]').
    """
    from lstm_inspect.commands import plot as plot_mod
    with _handle_errors():
        plot_mod.require_matplotlib()
        kinds = plot_mod.KINDS if kind is PlotKind.ALL else (kind.value,)
        data = guarded(plot_mod.collect, str(model), tuple(layer), kinds, label=str(model),
                       timeout=scaled_timeout(model, seconds_per_20mb=PLOT_SECONDS_PER_20MB))
        written = plot_mod.write(data, output, force)
    say(f"wrote {len(written)} picture(s) of {len(data['directions'])} recurrent direction(s) "
        f"and index.md to {output}")
