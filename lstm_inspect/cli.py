"""The command line: parse, call the library (in a guarded child process), render.

Errors are translated to exit codes in one place (`_handle_errors`): 2 bad input or usage,
3 an internal error, 130 Ctrl-C. Data goes to stdout, messages to stderr.
"""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import typer

from . import __version__, api
from .errors import InspectError
from .render import OutputFormat, render_json, render_markdown, render_table

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  help="Inspect saved Keras recurrent models (LSTM, GRU, SimpleRNN, ConvLSTM) "
                       "without TensorFlow.")

_state = {"debug": False}


def stdout_console():
    from rich.console import Console  # imported only when a rich table is printed
    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 120, highlight=False)


def stderr_console():
    from rich.console import Console
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lstm-inspect {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["debug"] = debug or os.environ.get("LSTM_INSPECT_DEBUG") == "1"


def error_line(message: str) -> None:
    """One line on stderr, never interpreted as markup; names from files cannot inject escapes."""
    from .safety import printable
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
    """Run a reading function in a disposable child process (see guard.py)."""
    from .guard import run_guarded
    return run_guarded(fn, *args, label=label, **kwargs)


FORMAT_HELP = "Output format: table (default), json or markdown."


def scaled_timeout(*paths: Path) -> float:
    """The guard's time limit for commands that read every weight byte (copy, hash, scan): the
    default (LSTM_INSPECT_TIMEOUT, else 30 s) plus 1 s per 20 MB of input."""
    from .guard import default_timeout
    size = 0
    for p in paths:
        try:
            files = [f for f in p.iterdir() if f.is_file()] if p.is_dir() else [p]
            size += sum(f.stat().st_size for f in files)
        except OSError:
            pass
    return default_timeout() + size / 20e6


@app.command()
def summary(
    models: List[Path] = typer.Argument(..., help="Model files (.h5, .hdf5, .keras, .weights.h5, "
                                                  ".weights.json, or an unzipped .keras folder)."),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", "-f", help=FORMAT_HELP,
                                     case_sensitive=False),
) -> None:
    """Every layer with exact parameter counts, and per-gate W/U/b blocks of every recurrent layer."""
    results = []
    failed = 0
    for path in models:
        try:
            with _handle_errors():
                results.append(guarded(api.summary, str(path), label=str(path)))
        except typer.Exit as exit_:
            failed = failed or exit_.exit_code
    if results:
        if fmt is OutputFormat.JSON:
            sys.stdout.write(render_json(results, as_list=len(models) > 1))
        elif fmt is OutputFormat.MARKDOWN:
            sys.stdout.write(render_markdown(results))
        else:
            render_table(results, stdout_console())
    if failed:
        raise typer.Exit(failed)


def run() -> None:
    """Console-script entry point."""
    app()


@app.command("split-gates")
def split_gates(
    model: Path = typer.Argument(..., help="Model file."),
    output: Path = typer.Option(..., "--output", "-o", help="Output .npz file."),
    layer: List[str] = typer.Option([], "--layer", "-l",
                                    help="Only directions whose path matches this glob (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Replace OUTPUT if it exists."),
) -> None:
    """Write every recurrent direction's per-gate W/U/b blocks (Keras math layout) to an .npz."""
    from .export import atomic_output
    with _handle_errors():
        with atomic_output(output, force) as tmp:
            result = guarded(api.split_gates, str(model), str(output), tuple(layer), force=True,
                             tmp_path=tmp, progress=sys.stderr.isatty(), label=str(model),
                             output_path=tmp, timeout=scaled_timeout(model))
        stderr_console().print(f"wrote {len(result['keys'])} blocks of {len(result['directions'])} "
                               f"recurrent direction(s) to {output}", markup=False)


@app.command()
def explain(
    model: Path = typer.Argument(..., help="Model file."),
    layer: List[str] = typer.Option([], "--layer", "-l", help="Only directions matching this glob."),
    fmt: str = typer.Option("text", "--format", "-f", help="text or markdown."),
) -> None:
    """Each recurrent cell's equations with this model's sizes, and what units/outputs/states mean."""
    with _handle_errors():
        if fmt not in ("text", "markdown"):
            from .errors import UsageError
            raise UsageError(f"--format must be text or markdown, not {fmt!r}")
        text = guarded(api.explain_text, str(model), tuple(layer), fmt == "markdown", label=str(model))
        sys.stdout.write(text)


# Commands defined in their own modules register themselves on `app` when imported.
from . import commands_ci, commands_port  # noqa: E402,F401
