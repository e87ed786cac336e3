"""Renderers for `check` reports (text, json, junit, github) and `diff` results (table, json, markdown).

Pure functions of the data in lockfile.py (CheckReport, DiffReport): no model is read here.
"""
from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any, Iterable

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rich is imported where a table is drawn, keeping start-up light
    from rich.console import Console
    from rich.table import Table

from lstm_inspect.cells import GATE_MEANING
from lstm_inspect.commands.lockfile import CheckReport, DiffReport, Finding


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _one_line(text: str) -> str:
    """For terminals: no control characters, no line breaks (names come from untrusted files)."""
    return _CONTROL.sub("\ufffd", " ".join(str(text).splitlines()))


def _table(console: Console) -> Table:
    from rich import box
    from rich.table import Table
    return Table(box=box.ASCII if not console.is_terminal else box.SIMPLE_HEAVY)


# ------------------------------------------------------------------------------------------------
# check: text

def render_text(report: CheckReport, console: Console) -> None:
    from rich.markup import escape
    from rich.text import Text

    findings = report.findings
    n = len(report.checks)
    if report.ok and not findings:
        console.print(f"ok: {n} check{'s' if n != 1 else ''} hold for {_one_line(report.file)}",
                      markup=False, highlight=False)
        return
    table = _table(console)
    for col in ("Check", "Subject", "Finding"):
        table.add_column(col, overflow="fold")
    for check in report.checks:
        for f in check.findings:
            label = check.name if f.severity == "error" else f"{check.name} ({f.severity})"
            table.add_row(escape(_one_line(label)), escape(_one_line(f.subject)), escape(_one_line(f.message)))
    console.print(table)
    warnings = sum(1 for f in findings if f.severity != "error")
    if report.ok:
        console.print(f"ok: {n} checks hold for {_one_line(report.file)} ({warnings} warning"
                      f"{'s' if warnings != 1 else ''})", markup=False, highlight=False)
    else:
        errors = sum(1 for f in findings if f.severity == "error")
        console.print(Text(f"FAILED: {len(report.failed)} of {n} checks, {errors} finding"
                           f"{'s' if errors != 1 else ''} for {_one_line(report.file)}", style="bold red"))


# ------------------------------------------------------------------------------------------------
# check: json

def render_json(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------------------
# check: JUnit XML (testsuites > testsuite > testcase > failure), one test case per check

_XML_BAD = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: Any) -> str:
    """Text XML 1.0 can hold: characters it forbids (controls, lone surrogates) become U+FFFD."""
    return _XML_BAD.sub("\ufffd", str(text))


def render_junit(report: CheckReport, suite: str = "lstm-inspect check") -> str:
    checks = report.checks
    failures = len(report.failed)
    root = ET.Element("testsuites", name=_xml(suite), tests=str(len(checks)), failures=str(failures),
                      errors="0", skipped="0", time="0")
    ts = ET.SubElement(root, "testsuite", name=_xml(f"{suite} {report.file}"), tests=str(len(checks)),
                       failures=str(failures), errors="0", skipped="0", time="0")
    props = ET.SubElement(ts, "properties")
    ET.SubElement(props, "property", name="model", value=_xml(report.file))
    if report.against:
        ET.SubElement(props, "property", name="against", value=_xml(report.against))
    for check in checks:
        case = ET.SubElement(ts, "testcase", classname=_xml(f"lstm-inspect.{check.group}"),
                             name=_xml(check.name), file=_xml(report.file), time="0")
        errors = [f for f in check.findings if f.severity == "error"]
        others = [f for f in check.findings if f.severity != "error"]
        if errors:
            first = errors[0].message + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
            failure = ET.SubElement(case, "failure", message=_xml(first), type=_xml(errors[0].kind))
            failure.text = _xml("\n".join(f.message for f in errors))
        if others:
            out = ET.SubElement(case, "system-out")
            out.text = _xml("\n".join(f"{f.severity}: {f.message}" for f in others))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------------------------
# check: GitHub Actions workflow commands

def escape_data(text: Any) -> str:
    """The message part of a workflow command: % CR LF escaped (as @actions/core does)."""
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: Any) -> str:
    """A property value (file=, title=): also ':' and ','."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_command(level: str, message: str, **props: Any) -> str:
    parts = ",".join(f"{k}={escape_property(v)}" for k, v in props.items() if v is not None)
    return f"::{level}{' ' + parts if parts else ''}::{escape_data(message)}"


def render_github(report: CheckReport) -> str:
    lines = []
    for check in report.checks:
        for f in check.findings:
            level = {"error": "error", "warning": "warning"}.get(f.severity, "notice")
            lines.append(workflow_command(level, f.message, file=report.file, title=f"lstm-inspect {check.name}"))
    if report.ok:
        n = len(report.checks)
        lines.append(workflow_command("notice", f"all {n} check{'s' if n != 1 else ''} hold",
                                      file=report.file, title="lstm-inspect check"))
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------------------------------------
# diff

def _rel(entry: dict | None) -> str:
    if entry is None:
        return "-"
    rel = entry.get("relative")
    if rel is not None:
        return f"{rel:.3g}"
    if entry.get("norm_a") == 0.0:
        return f"inf (‖A‖=0, ‖B−A‖={entry['norm_diff']:.3g})"
    if "not in the file" in str(entry.get("note")):
        return "n/a (no values in the file)"
    return "n/a (non-finite)"


def _gate_rows(change: dict) -> Iterable[tuple[list[str], bool]]:
    blocks = change["blocks"]
    has_bu = any(k.startswith("bU") for k in blocks)
    for gate in change["gates"] or [""]:
        suffix = f"_{gate}" if gate else ""
        label = f"{gate} ({GATE_MEANING[gate]})" if gate else "(single block)"
        row = [label] + [_rel(blocks.get(f"{k}{suffix}")) for k in ("W", "U", "b")]
        if has_bu:
            row.append(_rel(blocks.get(f"bU{suffix}")))
        total = change["gate_change"].get(gate or "-")
        row.append("n/a" if total is None else f"{total:.3g}")
        yield row, has_bu


def most_moved(change: dict) -> str | None:
    gates = {g: v for g, v in change["gate_change"].items() if v is not None}
    if not gates:
        return None
    gate = max(gates, key=lambda g: gates[g])
    if gates[gate] == 0.0:
        return "unchanged: every block is equal in A and B"
    blocks = {k: v["relative"] for k, v in change["blocks"].items()
              if v["relative"] is not None and (k.partition("_")[2] == gate or gate == "-")}
    block = max(blocks, key=lambda k: blocks[k]) if blocks else None
    name = f"{gate} ({GATE_MEANING[gate]})" if gate in GATE_MEANING else "the cell"
    return f"moved most: {name}, {gates[gate]:.3g}" + (f" (largest block {block}: {blocks[block]:.3g})"
                                                       if block else "")


def _columns(has_bu: bool) -> list[str]:
    return ["Gate", "W", "U", "b"] + (["bU"] if has_bu else []) + ["gate"]


def render_diff_table(result: DiffReport, console: Console) -> None:
    from rich.markup import escape
    from rich.text import Text

    console.print(Text(f"A: {_one_line(result.a)} ({result.format_a})\nB: {_one_line(result.b)} ({result.format_b})"))
    findings = [f for f in result.comparison.findings if f.severity == "error"]
    if not findings:
        console.print(Text("identical structure", style="bold green"))
    else:
        table = _table(console)
        for col in ("Subject", "Difference"):
            table.add_column(col, overflow="fold")
        for f in findings:
            table.add_row(escape(_one_line(f.subject)), escape(_one_line(f.message)))
        console.print(table)
        console.print(Text(f"structure differs: {len(findings)} difference{'s' if len(findings) != 1 else ''}",
                           style="bold red"))
    for change in result.changes:
        console.print()
        title = change["path"] if change["path"] == change["path_b"] else f"{change['path']} → {change['path_b']}"
        console.print(Text(f"{_one_line(title)} — {change['kind']}: relative change ‖B−A‖/‖A‖ per block",
                           style="bold"))
        rows = list(_gate_rows(change))
        table = _table(console)
        for col in _columns(rows[0][1] if rows else False):
            table.add_column(col, justify="left" if col == "Gate" else "right")
        for row, _ in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)
        moved = most_moved(change)
        if moved:
            console.print("  " + moved, markup=False, highlight=False)


def render_diff_markdown(result: DiffReport) -> str:
    def cell(text: Any) -> str:
        return _one_line(str(text)).replace("|", "\\|")

    out = [f"## `{cell(result.a)}` → `{cell(result.b)}`", "",
           f"A: {result.format_a} · B: {result.format_b}", ""]
    findings = [f for f in result.comparison.findings if f.severity == "error"]
    if not findings:
        out += ["**Identical structure.**", ""]
    else:
        out += [f"**Structure differs** ({len(findings)} difference{'s' if len(findings) != 1 else ''}):", "",
                "| Subject | Difference |", "|---|---|"]
        out += [f"| `{cell(f.subject)}` | {cell(f.message)} |" for f in findings]
        out.append("")
    for change in result.changes:
        title = change["path"] if change["path"] == change["path_b"] else f"{change['path']} → {change['path_b']}"
        out += [f"### `{cell(title)}` — {change['kind']}", "", "Relative change ‖B−A‖/‖A‖ per block:", ""]
        rows = list(_gate_rows(change))
        cols = _columns(rows[0][1] if rows else False)
        out += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
        out += ["| " + " | ".join(cell(c) for c in row) + " |" for row, _ in rows]
        moved = most_moved(change)
        out += ([""] + [f"- {moved}"] if moved else []) + [""]
    return "\n".join(out).rstrip() + "\n"


def render_diff_json(result: DiffReport) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"


def finding_line(f: Finding) -> str:
    return f"{f.subject}: {f.message}"
