"""The shape of the code: no import cycles, nothing imports the CLI, format libraries only for
their format (the import-time probe of a real run lives in test_cli.py)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lstm_inspect"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """lstm_inspect modules imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "lstm_inspect"}


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_nothing_imports_the_cli():
    offenders = [name for name, path in _modules().items()
                 if name not in ("lstm_inspect.cli", "lstm_inspect.__main__")
                 and "lstm_inspect.cli" in _imports(path, module_level_only=False)]
    assert offenders == []


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph (as a path that returns to its start), or []."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        for nxt in sorted(graph[node]):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        done.add(node)
        return []

    for start in sorted(graph):
        found = [] if start in done else visit(start, [start])
        if found:
            return found
    return []


def test_module_level_imports_have_no_cycles():
    modules = _modules()
    graph = {name: {m for m in _imports(path, True) if m in modules and m != name}
             for name, path in modules.items()}
    assert _find_cycle(graph) == []


def test_the_cycle_finder_finds_the_old_cli_cycle():
    """The shape this replaced: cli imported the command modules, which took `app` from cli."""
    graph = {"cli": {"commands_ci", "api"}, "commands_ci": {"cli", "render"}, "api": set(), "render": set()}
    assert _find_cycle(graph) == ["cli", "commands_ci", "cli"]


def test_format_libraries_are_imported_lazily():
    """h5py (Keras's container library) is imported at module level only by the Keras readers."""
    heavy = {"h5py", "onnx", "onnxruntime", "torch", "tensorflow", "keras", "tf_keras", "flatbuffers",
             "safetensors", "matplotlib", "rich", "typer"}
    allowed = {"h5py": ("lstm_inspect.formats.keras.",), "typer": ("lstm_inspect.cli",)}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:
            roots = []
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots = [node.module.split(".")[0]]
            for root in roots:
                if root in heavy:
                    assert name.startswith(allowed.get(root, ("<none>",))), f"{name} imports {root} at module level"


def test_matplotlib_is_imported_only_by_plot():
    """matplotlib is an optional extra (`lstm-inspect[plot]`): only the `plot` command imports it,
    and only inside its drawing functions (the module-level check above forbids the rest)."""
    users = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "matplotlib" for n in names):
                users.add(name)
    assert users == {"lstm_inspect.commands.plot"}

