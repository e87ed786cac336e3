"""The TFLite `verify` report as a table: one row per direction, the interpreter against NumPy, in absolute
terms and in quantization steps, and the verdict; below it, per direction, what was compared."""
from __future__ import annotations

from typing import Any, Mapping

from lstm_inspect.render.verify import fmt_diff


def render_table(report: Mapping[str, Any], console) -> None:
    from rich import box
    from rich.table import Table

    console.print(f"{report['file']} · {report['format']} · written by {report['producer']}",
                  markup=False, highlight=False)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col, justify in (("direction", "left"), ("kind", "left"), ("operator", "left"),
                         ("max |file − numpy|", "right"), ("steps", "right"), ("tolerance", "right"),
                         ("result", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in report["directions"]:
        operator = f"{r['operator']} (op {r['op_index']})" + ("" if r["fused"] else ", not fused")
        steps = "-" if r.get("steps_off") is None else f"{r['steps_off']:.1f}"
        tolerance = "-" if r.get("tolerance") is None else f"{r['tolerance']:.3g}"
        table.add_row(r["path"], r["kind"], operator, fmt_diff(r["max_abs_file_numpy"]),
                      steps, tolerance, r["status"].upper() if r["status"] != "pass" else "pass")
    console.print(table)
    inputs = ", ".join(f"{i['name']} {tuple(i['shape'])} {i['dtype']}" for i in report.get("inputs", [])) or "-"
    lines = [
        f"runtime: {report.get('runtime') or '-'}",
        f"model input {inputs}: seeded normal (seed {report['seed']}), quantized for integer inputs; "
        "the recurrent states start at zero",
        "file − numpy: what the operator (or loop, or unrolled step) produced in the interpreter, against the "
        "NumPy cell built from the split blocks and run on the input that operator received",
    ]
    sources = sorted({r["tolerance_from"] for r in report["directions"] if r.get("tolerance_from")})
    lines += [f"tolerance: {s}" for s in sources]
    for line in lines:
        console.print(line, markup=False, highlight=False)
    for r in report["directions"]:
        compared = [f"compared {r['compared']}"] if r.get("compared") else []
        for line in compared + ([r["reason"]] if r.get("reason") else []) + list(r.get("notes") or []):
            console.print(f"  {r['path']}: {line}", markup=False, highlight=False)
