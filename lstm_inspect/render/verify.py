"""The `verify` report as a table: one row per direction, the two differences and the verdict."""
from __future__ import annotations

from typing import Any, Mapping


def fmt_diff(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def render_table(report: Mapping[str, Any], console) -> None:
    from rich import box
    from rich.table import Table

    head = (f"{report['file']} · {report['format']} · written by {report['producer']}"
            + (f" {report['keras_version']}" if report.get("keras_version") else ""))
    console.print(head, markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    tensorflow = report.get("framework") == "tensorflow"
    columns = (("TF cell or Keras layer", "max |blocks − numpy|") if tensorflow
               else ("Keras layer", "max |keras − numpy|"))
    for col, justify in (("direction", "left"), ("kind", "left"), ("class", "left"), (columns[0], "left"),
                         (columns[1], "right"), ("max |file − numpy|", "right"),
                         ("result", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in report["directions"]:
        keras = r.get("built_as") or "-"
        if r.get("keras") and r["keras"].startswith("tf_keras"):
            keras = f"tf_keras {keras}"
        table.add_row(r["path"], r["kind"], r["class"], keras, fmt_diff(r["max_abs_keras_numpy"]),
                      fmt_diff(r["max_abs_file_numpy"]), r["status"].upper() if r["status"] != "pass" else "pass")
    console.print(table)
    used = sorted({r["keras"] for r in report["directions"] if r.get("keras")})
    if used:
        console.print(f"{'Runtime' if tensorflow else 'Keras side'}: {', '.join(used)}", markup=False,
                      highlight=False)
    shapes = sorted({tuple(r["input_shape"]) for r in report["directions"] if r.get("input_shape")})
    lines = [
        f"input {', '.join(str(s) for s in shapes) or '-'}, seeded normal (seed {report['seed']}); every step's "
        f"output and the final states compared in float64; tolerance {report['tolerance']:g}",
        "keras − numpy: Keras given the split blocks fused back, against the NumPy cell built from the blocks",
        "file − numpy:  Keras given the file's own tensors (as tf_keras loads them), against the same NumPy cell",
    ]
    if report.get("legend"):
        lines = lines[:1] + list(report["legend"])
    for line in lines:
        console.print(line, markup=False, highlight=False)
    if any(r.get("hard_sigmoid") for r in report["directions"]):
        console.print(f"hard_sigmoid: {report['hard_sigmoid']}, the definition of the producing version",
                      markup=False, highlight=False)
    for r in report["directions"]:
        for line in ([r["reason"]] if r.get("reason") else []) + list(r.get("notes") or []):
            console.print(f"  {r['path']}: {line}", markup=False, highlight=False)
