"""`explain` output as plain text or Markdown."""
from __future__ import annotations

from lstm_inspect.commands.explain import Explanation


def render_text(items: list[Explanation]) -> str:
    out: list[str] = []
    for e in items:
        out += [e.title, ""]
        out += [f"  {line}" for line in e.equations]
        out += ["", "  with " + ", ".join(e.shapes), "", "  parameters: " + e.params[0]]
        out += [f"  {line}" for line in e.params[1:]]
        out += [""] + [f"  - {line}" for line in e.meaning] + [""]
    return "\n".join(out).rstrip() + "\n"


def render_markdown(items: list[Explanation]) -> str:
    out: list[str] = []
    for e in items:
        out += [f"### {e.title}", "", "```text"] + list(e.equations) + ["```", ""]
        out += ["Shapes: " + ", ".join(f"`{s}`" for s in e.shapes), ""]
        out += [f"Parameters: `{e.params[0]}`"] + [f"{line}" for line in e.params[1:]] + [""]
        out += [f"- {line}" for line in e.meaning] + [""]
    return "\n".join(out).rstrip() + "\n"
