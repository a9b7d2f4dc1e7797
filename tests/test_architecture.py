"""The layering, enforced: every import (module level and inside functions) points down.

links/            the pure library: imports nothing from pipeline/ or stages/
pipeline/ (core)  config, Redis, keys, codecs, video, zoo, costs, metrics: nothing from stages/ or pipeline.app
stages/           decoder, scheduler, policies at run time, profiler: core + links, never pipeline.app
pipeline.app      CLI, supervisor, session engine, sinks, bench: the only code that starts stages

Also: no import cycle between project modules (lazy imports count), and no
function-level import of a project module outside pipeline.app (lazy imports stay
only where the CLI defers heavy start-up work).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("links", "pipeline", "stages")


def layer(module: str) -> str:
    if module == "pipeline.app" or module.startswith("pipeline.app."):
        return "app"
    return module.split(".")[0]


# What each layer may import from the project.
ALLOWED = {
    "links": {"links"},
    "pipeline": {"pipeline", "links"},
    "stages": {"stages", "pipeline", "links"},
    "app": {"app", "stages", "pipeline", "links"},
}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules(root: Path) -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            mods[module_name(p, root)] = p
    return mods


def imports_of(path: Path, module: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported project module, line, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(n) for n in tree.body}
    # Imports under `if TYPE_CHECKING:` or try/except at module level still count as module level.
    for n in tree.body:
        for sub in ast.walk(n):
            if isinstance(sub, (ast.Import, ast.ImportFrom)) and not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                top_level.add(id(sub))
    out = []
    pkg_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(pkg_parts[: len(pkg_parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        found = set()
        for n in names:
            # The longest known module that the name starts with.
            parts = n.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in known:
                    if cand != module:
                        found.add(cand)
                    break
        out.extend((m, node.lineno, id(node) in top_level) for m in sorted(found))
    return out


def import_graph(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    mods = project_modules(root)
    known = set(mods)
    return {m: imports_of(p, m, known) for m, p in mods.items()}


def violations(root: Path) -> list[str]:
    graph = import_graph(root)
    bad = []
    for mod, deps in graph.items():
        for dep, line, top in deps:
            if layer(dep) not in ALLOWED[layer(mod)]:
                bad.append(f"{mod}:{line} imports {dep} ({layer(mod)} -> {layer(dep)} points up)")
            if not top and layer(mod) != "app":
                bad.append(f"{mod}:{line} imports {dep} inside a function (import it at module level)")
    # Cycles: depth-first search over every edge, lazy ones included.
    edges = {m: sorted({d for d, _, _ in deps if d != m and not m.startswith(d + ".")}) for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, []):
            if state.get(d) == 1:
                bad.append("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return bad


def test_every_import_points_down_and_no_cycles() -> None:
    bad = violations(REPO)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("links/bad.py", "from pipeline.errors import UserError\n", "links -> pipeline points up"),
        ("links/bad.py", "def f():\n    import stages.decoder\n", "links -> stages points up"),
        ("pipeline/bad.py", "def f():\n    from stages.scheduler import Worker\n", "pipeline -> stages points up"),
        ("pipeline/bad.py", "from pipeline.app.cli import main\n", "pipeline -> app points up"),
        ("stages/bad.py", "from pipeline.app import supervisor\n", "stages -> app points up"),
        ("stages/bad.py", "def f():\n    from pipeline.keys import GROUP\n", "inside a function"),
        ("links/bad.py", "from links.bad2 import x\n", "import cycle"),
    ],
)
def test_a_wrong_import_is_caught(tmp_path: Path, module: str, source: str, expected: str) -> None:
    """The checker itself: a copy of the tree plus one wrong import fails it."""
    import shutil

    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    (tmp_path / module).write_text(source)
    if expected == "import cycle":
        (tmp_path / "links" / "bad2.py").write_text("from links.bad import y\n")
    found = violations(tmp_path)
    assert any(expected in v and "bad" in v for v in found), found
