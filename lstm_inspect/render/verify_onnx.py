"""The ONNX `verify` report as a table: one row per direction, onnxruntime against NumPy and the verdict."""
from __future__ import annotations

from typing import Any, Mapping

from lstm_inspect.render.verify import fmt_diff


def render_table(report: Mapping[str, Any], console) -> None:
    from rich import box
    from rich.table import Table

    console.print(f"{report['file']} · {report['format']} · written by {report['producer']}",
                  markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col, justify in (("direction", "left"), ("kind", "left"), ("class", "left"),
                         ("max |file − numpy|", "right"), ("result", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in report["directions"]:
        table.add_row(r["path"], r["kind"], r["class"], fmt_diff(r["max_abs_file_numpy"]),
                      r["status"].upper() if r["status"] != "pass" else "pass")
    console.print(table)
    shapes = sorted({tuple(r["input_shape"]) for r in report["directions"] if r.get("input_shape")})
    lines = [
        f"runtime: {report['runtime']}",
        f"input {', '.join(str(s) for s in shapes) or '-'} (batch, steps, input), seeded normal (seed "
        f"{report['seed']}), zero initial states;",
        f"every step's output and the final states compared; tolerance {report['tolerance']:g}",
        "file − numpy: onnxruntime running the node itself (its attributes, its own W/R/B/P)",
        "              against the NumPy cell built from the split blocks",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)
    for r in report["directions"]:
        for line in ([r["reason"]] if r.get("reason") else []) + list(r.get("notes") or []):
            console.print(f"  {r['path']}: {line}", markup=False, highlight=False)
