"""docs/architecture.md stays the map of the tree, and the tree keeps its shape: every module is
listed, nothing listed is missing, no module imports another that imports it back (at any
depth, function-level imports included), and the library never imports the command line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
# The one library module allowed to import the command line: `python -m ptjf.train`.
ENTRY_POINTS = {"ptjf.train"}


def _modules() -> dict[str, Path]:
    """Dotted name → file, for ptjf/ and tasks/ (installed as ptjf.tasks)."""
    out = {}
    for base, package in (("ptjf", "ptjf"), ("tasks", "ptjf.tasks")):
        for path in sorted((ROOT / base).rglob("*.py")):
            parts = path.relative_to(ROOT / base).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ptjf modules `name` imports anywhere in its file (relative imports resolved)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif node.module in modules:
                    found.add(node.module)
    found.discard(name)
    return found


def test_every_module_is_listed_and_every_listed_file_exists():
    text = DOC.read_text(encoding="utf-8")
    listed = set(re.findall(r"`((?:ptjf|tasks)/[\w/]+\.py)`", text))
    files = {str(p.relative_to(ROOT)) for p in _modules().values() if p.name != "__init__.py"}
    files.add("tasks/__init__.py")  # ptjf.tasks itself is a module users import
    assert sorted(files - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - files) == [], "docs/architecture.md lists files that do not exist"


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # Package __init__ modules run before their submodules; an edge into a package from its
    # own submodule is not a cycle of files.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_the_library_never_imports_the_command_line():
    modules = _modules()
    offenders = {
        name: sorted(m for m in _imports(name, path, modules) if m.startswith("ptjf.commands"))
        for name, path in modules.items()
        if not name.startswith("ptjf.commands") and name not in ENTRY_POINTS
    }
    assert {k: v for k, v in offenders.items() if v} == {}
