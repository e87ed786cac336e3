"""The library API: what the CLI calls, usable from Python without the CLI.

    >>> from lstm_inspect import api
    >>> data = api.summary("model.h5")          # the JSON contract of `summary --format json`
    >>> with api.open_model("model.h5") as m:   # the neutral model, lazy weights
    ...     for d in api.directions(m): print(d.path, d.block("W_f").read().shape)
"""
from __future__ import annotations

import os
from typing import Any

from lstm_inspect.cells import Direction, directions, select, with_forget_bias
from lstm_inspect.commands.summary import summarize
from lstm_inspect.formats import open_model
from lstm_inspect.model import Model

__all__ = ["open_model", "directions", "summary", "Model", "Direction"]


def summary(path: str | os.PathLike, forget_bias: float | None = None) -> dict[str, Any]:
    """Summary data of one file (reads metadata only, never weight values). `forget_bias`: the
    run-time forget bias of TF1 LSTM cells, when the user knows it (not stored in checkpoints)."""
    with open_model(path) as model:
        if forget_bias is None:
            return summarize(model)
        return summarize(model, with_forget_bias(directions(model), forget_bias))


def explain_text(path: str | os.PathLike, patterns: tuple[str, ...] = (), markdown: bool = False,
                 forget_bias: float | None = None) -> str:
    """The `explain` output for the selected directions, as text or Markdown."""
    from lstm_inspect.commands.explain import explain
    from lstm_inspect.render.explain import render_markdown, render_text
    with open_model(path) as model:
        items = [explain(d) for d in with_forget_bias(select(directions(model), patterns), forget_bias)]
    if not items:
        return "no recurrent layers\n"
    return render_markdown(items) if markdown else render_text(items)


def split_gates(path: str | os.PathLike, out: str | os.PathLike, patterns: tuple[str, ...] = (),
                force: bool = False, tmp_path: str | None = None, progress: bool = False,
                source_hash: bool = True, forget_bias: float | None = None) -> dict[str, Any]:
    """Write per-gate blocks to an .npz (see commands.split.split_gates); returns what was written."""
    from lstm_inspect.commands.split import split_gates as _split
    result = _split(path, out, patterns, force=force, tmp_path=tmp_path,
                    progress=_progress_bar() if progress else None, source_hash=source_hash,
                    forget_bias=forget_bias)
    return {"output": result.output, "keys": list(result.keys), "directions": list(result.directions),
            "bytes": result.bytes_written}


def _progress_bar():
    """A rich progress bar on stderr, shown only for large outputs (over 64 MiB)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if total < (64 << 20):
            return
        if "bar" not in state:
            bar = Progress("split-gates", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                           transient=True)
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task("", total=total)
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state["bar"].stop()
    return update
