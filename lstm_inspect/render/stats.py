"""The `stats` data (lstm_inspect.commands.stats) as a rich table, GitHub-flavoured Markdown or JSON."""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from rich.console import Console

from lstm_inspect.cells import GATE_MEANING
from lstm_inspect.render.summary import _md_table, fmt_block
from lstm_inspect.safety.text import printable

BLOCK_COLUMNS = ["Block", "Shape", "Mean", "Std", "Min", "Max", "‖·‖F", "Zeros", "NaN", "Inf", "σ₁"]
GATE_COLUMNS = ["Gate", "Saturated", "Dead units", "Stuck low / high"]


def num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


def percent(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0%"
    return f"{100 * value:.3g}%"


def header_line(s: dict) -> str:
    p = s["probe"]
    what = "zero inputs" if p["kind"] == "zeros" else f"standard-normal inputs (seed {p['seed']})"
    return (f"{s['format']} · {s['framework']} · probe: {p['samples']} sequences of {p['steps']} steps of "
            f"{what} from zero states, saturated = within {p['margin']:g} of the activation's bounds")


def direction_title(d: dict) -> str:
    acts = d["activation"] + (f" / {d['recurrent_activation']}" if d["recurrent_activation"] else "")
    return (f"{printable(d['path'])} — {d['kind']} ({printable(d['class'])}), units {d['units']}, "
            f"input {d['input_dim']}, {printable(acts)}")


def block_rows(d: dict) -> Iterable[list[str]]:
    spectral = d["spectral_norm"]
    for name, b in d["blocks"].items():
        yield [name, fmt_block(b["shape"]), num(b["mean"]), num(b["std"]), num(b["min"]), num(b["max"]),
               num(b["norm"]), percent(b["zero_fraction"]), str(b["nan"]), str(b["inf"]),
               _spectral_cell(d, name) if name in spectral else ""]
    if "U" in spectral and "U" not in d["blocks"]:
        shapes = [d["blocks"][n]["shape"] for n in spectral if n != "U"]
        rows = math.prod(shapes[0][:-1]) if shapes else 0
        whole = [rows, sum(s[-1] for s in shapes)]
        yield ["U (whole)", fmt_block(whole)] + [""] * 8 + [_spectral_cell(d, "U")]


def _spectral_cell(d: dict, name: str) -> str:
    value = d["spectral_norm"][name]
    if value is None:
        return "n/a (non-finite)"
    method = d["spectral_method"][name]
    if method["method"] == "svd":
        return num(value, 6)
    mark = "" if method.get("converged", True) else " (not converged)"
    return f"{num(value, 6)}*{mark}"


def gate_rows(d: dict) -> Iterable[list[str]]:
    saturation, dead = d["saturation"] or {}, d["dead_units"] or {}
    for g, value in saturation.items():
        label = f"{g} ({GATE_MEANING[g]})" if g in GATE_MEANING and d["gates"] else f"{g} (state)"
        info = dead.get(g)
        if info is None:
            yield [label, "- (unbounded activation)", "-", "-"]
            continue
        shown = info["units"][:8]
        units = str(info["count"])
        if shown:
            units += f" ({', '.join(map(str, shown))}{', …' if info['count'] > len(shown) else ''})"
        yield [label, percent(value), units, f"{info['stuck_low']} / {info['stuck_high']}"]


def forget_lines(d: dict) -> list[str]:
    f = d["forget_bias"]
    if f is None:
        return []
    gate = f["gate"]
    name = "forget gate f" if gate == "f" else "update gate z (keeps the state, like a forget gate)"
    terms = [(f"b_{gate}", f["stored_mean"]), (f"bU_{gate}", f["second_bias_mean"]),
             ("forget_bias", f.get("runtime") or None)]
    terms = [(t, v) for t, v in terms if v is not None]
    if not terms:
        line = f"{name}: no bias (effective bias {num(f['mean'])})"
    else:
        parts = f" = {' + '.join(num(v) for _, v in terms)}" if len(terms) > 1 else ""
        line = (f"{name}: effective bias {' + '.join(t for t, _ in terms)}, mean {num(f['mean'])}{parts}, "
                f"range [{num(f['min'])}, {num(f['max'])}]")
    lines = [line]
    if f["open_fraction"] is not None:
        lines.append(f"at zero input, {gate} = {f['activation']}(bias) starts above 0.5 for "
                     f"{percent(f['open_fraction']['0.5'])} of the units, above 0.9 for "
                     f"{percent(f['open_fraction']['0.9'])}")
    if f.get("nonfinite"):
        lines.append(f"{f['nonfinite']} unit(s) have a non-finite effective bias")
    return lines


def spectral_footnote(s: dict) -> str | None:
    if not any(m["method"] != "svd" for d in s["directions"] for m in d["spectral_method"].values()):
        return None
    return (f"* iterative: Lanczos on the Gram matrix, relative tolerance {s['spectral']['rtol']:g} "
            f"(exact SVD up to {s['spectral']['exact_max_elements']:,} elements)")


def direction_notes(d: dict) -> list[str]:
    return ([d["probe_note"]] if d["probe_note"] else []) + list(d["notes"])


# --- table -------------------------------------------------------------------------------------

def render_table(results: list[dict], console: "Console") -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    style_box = box.ASCII if not console.is_terminal else box.SIMPLE_HEAVY
    for i, s in enumerate(results):
        if i:
            console.print()
        console.print(Text(printable(s["file"]), style="bold"), Text(" " + header_line(s)), soft_wrap=True)
        if not s["directions"]:
            console.print("no recurrent layers")
        for d in s["directions"]:
            console.print()
            console.print(Text(direction_title(d), style="bold"))
            for columns, rows in ((BLOCK_COLUMNS, block_rows(d)), (GATE_COLUMNS, gate_rows(d))):
                rows = list(rows)
                if not rows:
                    continue
                table = Table(box=style_box)
                for col in columns:
                    table.add_column(col, justify="left" if col in ("Block", "Shape", "Gate") else "right")
                for row in rows:
                    table.add_row(*(escape(c) for c in row))
                console.print(table)
            for line in forget_lines(d):
                console.print("  " + escape(line))
            for note in direction_notes(d):
                console.print("  note: " + escape(printable(note)))
        foot = spectral_footnote(s)
        if foot:
            console.print()
            console.print(escape(foot))


# --- markdown ----------------------------------------------------------------------------------

def render_markdown(results: list[dict]) -> str:
    out: list[str] = []
    for s in results:
        out += [f"## `{printable(s['file'])}`", "", header_line(s), ""]
        if not s["directions"]:
            out += ["No recurrent layers.", ""]
        for d in s["directions"]:
            out += [f"### {direction_title(d)}", ""]
            out += _md_table(BLOCK_COLUMNS, block_rows(d), set(range(2, len(BLOCK_COLUMNS))))
            rows = list(gate_rows(d))
            if rows:
                out += [""] + _md_table(GATE_COLUMNS, rows, {1, 2, 3})
            out += [""] + [f"- {line}" for line in forget_lines(d)]
            out += [f"- note: {printable(n)}" for n in direction_notes(d)] + [""]
        foot = spectral_footnote(s)
        if foot:
            out += [foot, ""]
    return "\n".join(out).rstrip() + "\n"


# --- json --------------------------------------------------------------------------------------

def render_json(results: list[dict], as_list: bool = False) -> str:
    """One object for one file, a list when several files were asked for."""
    data: Any = results if as_list else results[0]
    return json.dumps(finite_only(data), indent=2, allow_nan=False) + "\n"


def finite_only(value: Any) -> Any:
    """NaN and infinities (never expected in the data) become null: the output stays valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_only(v) for v in value]
    return value
