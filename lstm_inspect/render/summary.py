"""The summary data (lstm_inspect.commands.summary) as a rich table, GitHub-flavoured Markdown or JSON."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from rich.console import Console

from lstm_inspect.cells import GATE_MEANING
from lstm_inspect.safety.text import printable

def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_shape(shape: Iterable[Any] | None) -> str:
    if shape is None:
        return "?"
    dims = ["None" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def fmt_block(shape: list[int] | None) -> str:
    return "×".join(str(d) for d in shape) if shape else "-"


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


def header_line(s: dict) -> str:
    parts = [s["format"]]
    if s.get("keras_version"):
        parts.append(f"Keras {printable(s['keras_version'], 80)}")
    if s.get("backend"):
        parts.append(f"backend {printable(s['backend'], 80)}")
    if s.get("model_class"):
        parts.append(printable(f"{s['model_class']} {s.get('model_name') or ''}".strip()))
    if s.get("producer"):
        parts.append(f"written by {printable(s['producer'], 120)}")
    if not s.get("has_config") and s.get("framework", "keras") == "keras":
        parts.append("no config: layer classes inferred from weight names and shapes")
    return " · ".join(parts)


def totals_lines(s: dict) -> list[str]:
    if s.get("tflite"):
        return tflite_lines(s["tflite"])
    dtype_text = ", ".join(f"{d} {fmt_bytes(b)}" for d, b in s["bytes_by_dtype"].items()) or "none"
    return [
        f"Total params: {fmt_int(s['total_params'])} ({fmt_bytes(s['total_bytes'])})",
        f"Trainable params: {fmt_int(s['trainable_params'])}",
        f"Non-trainable params: {fmt_int(s['non_trainable_params'])}",
        f"Weights by dtype: {dtype_text}",
    ] + ([f"Optimizer state: {fmt_int(s['optimizer_params'])} values (not parameters, not counted above)"]
         if s.get("optimizer_params") else [])


def _layer_rows(layers: list[dict], depth: int = 0) -> Iterable[tuple[str, str, str, str]]:
    for layer in layers:
        shapes = ", ".join(fmt_shape(w["shape"]) for w in layer["weights"]) or "-"
        cls = printable(layer["class"]) + (" (inferred)" if layer.get("inferred") else "")
        yield ("  " * depth + printable(layer["name"]), cls, shapes, fmt_int(layer["params"]))
        yield from _layer_rows(layer.get("layers", []), depth + 1)


_OPTIONAL_COLUMNS = (("bU", "bU"), ("p", "peephole"), ("ln", "layer norm"))


def gate_columns(d: dict) -> list[str]:
    """W, U, b, and a column for each optional per-gate block kind the direction has."""
    kinds = {k.partition("_")[0] for k in d["blocks"] if "_" in k}
    return ["Gate", "W", "U", "b"] + [title for kind, title in _OPTIONAL_COLUMNS if kind in kinds] + ["Params"]


def _gate_rows(d: dict) -> Iterable[list[str]]:
    blocks = d["blocks"]
    gates = d["gates"] or [""]
    kinds = {k.partition("_")[0] for k in blocks if "_" in k}
    optional = [kind for kind, _ in _OPTIONAL_COLUMNS if kind in kinds]
    for g in gates:
        suffix = f"_{g}" if g else ""
        label = f"{g} ({GATE_MEANING[g]})" if g else "(single block)"
        row = [label] + [fmt_block(blocks.get(f"{k}{suffix}")) for k in ["W", "U", "b"] + optional]
        row.append(fmt_int(sum(n for k, n in d["block_params"].items()
                               if (k.endswith(suffix) and "_" in k) or not g)))
        yield row


def direction_title(d: dict) -> str:
    extra = f", reset_after={d['reset_after']}" if d["reset_after"] is not None else ""
    return (f"{printable(d['path'])} — {d['kind']} ({printable(d['class'])}), units {d['units']}, "
            f"input {d['input_dim']}{extra}, {fmt_int(d['params'])} params")


def direction_facts(d: dict) -> list[str]:
    facts = []
    if d["output_shape"] is not None:
        facts.append(f"output {fmt_shape(d['output_shape'])}")
    if d["state_shapes"] is not None:
        names = ["h", "c"] if len(d["state_shapes"]) == 2 else ["h"]
        facts.append("states " + ", ".join(f"{n} {fmt_shape(s)}" for n, s in zip(names, d["state_shapes"])))
    if d["activation"] or d["recurrent_activation"]:
        facts.append(printable(f"activation {d['activation'] or '?'}"
                               + (f", recurrent {d['recurrent_activation']}" if d["recurrent_activation"] else "")))
    flags = [f"{k}={d[k]}" for k in ("return_sequences", "return_state", "stateful", "go_backwards")
             if d[k] is not None]
    if flags:
        facts.append(" ".join(flags))
    if d.get("projection_size"):
        facts.append(f"projection P {fmt_block(d['blocks'].get('P'))}: h and the output have "
                     f"{d['projection_size']} features, the cell state {d['units']}")
    if d.get("forget_bias") is not None:
        facts.append(f"forget_bias {d['forget_bias']:g} added to the forget gate at run time (not stored)")
    clips = [f"{k} {d[k]:g}" for k in ("cell_clip", "proj_clip", "gate_clip") if d.get(k)]
    if clips:
        facts.append(", ".join(clips))
    facts += storage_lines(d)
    return facts


def storage_lines(d: dict) -> list[str]:
    """How the blocks are stored when quantized: per block kind, the stored dtype, the scale of each gate
    (a range over the channels when per channel) and the zero points."""
    storage = d.get("quantization")
    if not storage:
        return []
    kinds: dict[str, list[tuple[str, dict]]] = {}
    for name, entry in storage.items():
        kind, _, gate = name.partition("_")
        kinds.setdefault(kind, []).append((gate, entry))
    lines = []
    for kind, items in kinds.items():
        dtypes = "/".join(sorted({e["stored_dtype"] for _, e in items}))
        scaled = [(g, e) for g, e in items if e.get("scale")]
        if not scaled:
            note = " (widened to float32 at run time)" if dtypes == "float16" else ""
            lines.append(f"stored {kind}: {dtypes}{note}")
            continue
        scales = []
        for gate, e in scaled:
            sc = e["scale"]
            value = f"{sc[0]:.4g}" if len(sc) == 1 else f"{min(sc):.4g}–{max(sc):.4g} ({len(sc)} channels)"
            scales.append(f"{gate} {value}" if gate else value)
        zeros = sorted({z for _, e in scaled for z in e["zero_point"]})
        zero_text = ", ".join(str(z) for z in zeros[:4]) + (", …" if len(zeros) > 4 else "")
        lines.append(f"stored {kind}: {dtypes}, scale {', '.join(scales)}, zero point {zero_text}")
    return lines


def tflite_lines(t: dict) -> list[str]:
    """The totals of a TFLite file: stored constants, the Keras parameter count, operators, and every
    recurrent layer fused or not."""
    stored, params = t["stored_constants"], t["parameters"]
    dtype_text = ", ".join(f"{k} {fmt_int(v['values'])} ({fmt_bytes(v['bytes'])})"
                           for k, v in stored["by_dtype"].items()) or "none"
    shared = f"; {stored['shared']} tensor(s) reuse another's buffer" if stored["shared"] else ""
    lines = [f"Stored constants: {fmt_int(stored['values'])} values in {stored['buffers']} buffers "
             f"({fmt_bytes(stored['bytes'])}): {dtype_text}{shared}"]
    if params["keras"] is not None:
        lines.append(f"Keras parameters: {fmt_int(params['keras'])} (recurrent {fmt_int(params['recurrent'])}, "
                     f"other layers {fmt_int(params['other_layers'])})")
    else:
        lines.append(f"Keras parameters: unknown: {fmt_int(params['unknown'])} values of float constants in no "
                     f"known role (recurrent {fmt_int(params['recurrent'])}, other layers "
                     f"{fmt_int(params['other_layers'])})")
    not_params = [f"{_KIND_TEXT.get(k, k)} {fmt_int(v['values'])}" for k, v in stored["by_kind"].items()
                  if k not in ("parameter", "unknown")]
    variables = stored["variable_tensors"]
    if variables["tensors"]:
        not_params.append(f"state buffers: {variables['tensors']} variable tensor(s), {fmt_int(variables['values'])} "
                          "values allocated at run time (not stored)")
    if not_params:
        lines.append("Not parameters: " + "; ".join(not_params))
    ops = t["operators"]
    lines.append(f"Operators: {fmt_int(ops['total'])} ("
                 + ", ".join(f"{printable(k)} {v}" for k, v in ops["by_kind"].items()) + ")")
    for layer in t["recurrent_layers"]:
        lines.append("Recurrent layer " + recurrent_layer_text(layer))
    return lines


_KIND_TEXT = {"state": "state initial values", "shape": "shapes and indices", "copy": "second copies of a bias",
              "cell": "cell constants", "shared-bias": "biases the converter shares"}


def recurrent_layer_text(layer: dict) -> str:
    name = printable(layer["name"])
    where = f"operator {layer['op_index']}" + (f" of subgraph {layer['subgraph']}" if layer["subgraph"] else "")
    side = layer.get("bidirectional")
    side_text = f", {side['side']} side of {printable(side['layer'])}" if side else ""
    if layer["fused"]:
        return f"{name}: fused {layer['operator']} ({where}{side_text})"
    if layer["form"] == "while-loop":
        body = layer["body"]
        custom = f", custom ops {', '.join(layer['custom_ops'])}" if layer.get("custom_ops") else ""
        return (f"{name}: NOT fused: WHILE loop ({where}{side_text}; body subgraph {body['subgraph']}: "
                f"{body['operators']} operators{custom}), cell {layer['kind']}")
    return f"{name}: NOT fused: unrolled over {layer.get('steps')} steps ({where}{side_text}), cell {layer['kind']}"


# --- table -------------------------------------------------------------------------------------

def render_table(summaries: list[dict], console: "Console") -> None:
    # rich is imported here, not at module level: JSON output does not pay for it.
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    plain = not console.is_terminal
    style_box = box.ASCII if plain else box.SIMPLE_HEAVY
    for i, s in enumerate(summaries):
        if i:
            console.print()
        console.print(Text(printable(s["file"]), style="bold"), Text(" " + header_line(s)), soft_wrap=True)
        table = Table(box=style_box, show_footer=False)
        for col, justify in (("Layer", "left"), ("Class", "left"), ("Weights", "left"), ("Params", "right")):
            table.add_column(col, justify=justify, overflow="fold")
        for row in _layer_rows(s["layers"]):
            table.add_row(*(escape(c) for c in row))
        console.print(table)
        for line in totals_lines(s):
            console.print(escape(line))
        for note in s.get("notes", []):
            console.print("note: " + escape(printable(note)))
        for d in s["recurrent"]:
            console.print()
            console.print(Text(direction_title(d), style="bold"))
            gates = Table(box=style_box)
            cols = gate_columns(d)
            for col in cols:
                gates.add_column(col, justify="right" if col == "Params" else "left")
            for row in _gate_rows(d):
                gates.add_row(*row)
            console.print(gates)
            for fact in direction_facts(d):
                console.print("  " + escape(fact))
            for note in d["notes"]:
                console.print("  note: " + escape(printable(note)))


# --- markdown ----------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: Iterable[Iterable[str]], right: set[int] = frozenset()) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in right else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(summaries: list[dict]) -> str:
    out: list[str] = []
    for s in summaries:
        out += [f"## `{printable(s['file'])}`", "", header_line(s), ""]
        out += _md_table(["Layer", "Class", "Weights", "Params"],
                         ([f"`{r[0].strip()}`", r[1], r[2], r[3]] for r in _layer_rows(s["layers"])), {3})
        out += [""] + [f"- {line}" for line in totals_lines(s)]
        out += [f"- note: {_md_cell(printable(n))}" for n in s.get("notes", [])] + [""]
        for d in s["recurrent"]:
            out += [f"### {direction_title(d)}", ""]
            cols = gate_columns(d)
            out += _md_table(cols, _gate_rows(d), {len(cols) - 1})
            out += [""] + [f"- {f}" for f in direction_facts(d)]
            out += [f"- note: {_md_cell(printable(n))}" for n in d["notes"]] + [""]
    return "\n".join(out).rstrip() + "\n"


def write_json(summaries: list[dict], stream, as_list: bool = False) -> None:
    """`render_json` written piece by piece: the same bytes, without the whole text in memory (the
    summary of a 12,000-variable checkpoint is megabytes of indented JSON)."""
    data: Any = summaries if as_list else summaries[0]
    json.dump(data, stream, indent=2)
    stream.write("\n")


def render_json(summaries: list[dict], as_list: bool = False) -> str:
    """One object for one file, a list when several files were asked for."""
    data: Any = summaries if as_list else summaries[0]
    return json.dumps(data, indent=2) + "\n"
