"""The package's import graph has no cycles.

A cycle makes the import order matter and hides which module owns what. An edge is
``from . import x``, ``from .x import y`` or ``import scans.x`` at module level (including under
``if TYPE_CHECKING:`` and ``try:``). Imports inside functions (deferred: optional extras such as
FastAPI or vLLM, or start-up cost) are not part of that graph; a second test checks that they
do not close a cycle either, so that a deferred import never stands in for a layering fix.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "scans"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = ["scans", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, deferred: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported (not inside a function body);
    with ``deferred``, those inside functions too."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif deferred or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph(package: Path = PACKAGE, deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level (``deferred``: anywhere)."""
    modules = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def resolve(name: str) -> str | None:
        while name and name not in modules:  # an attribute of a module: scans.x.func -> scans.x
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path)), deferred):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level == 0:
                base = node.module or ""
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                package_parts = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = package_parts[: len(package_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] != "scans":
                    continue
                resolved = resolve(target)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "scans.kvcache" in graph["scans.engine"]
    assert "scans.errors" in graph["scans.embedded"]
    assert "scans.decode" in graph["scans.serve.batcher"]  # from ..decode import ...
    assert "scans.cli.common" in graph["scans.cli"]  # a package's __init__: from .common import ...
    assert "scans.errors" in graph["scans.bench.report.run"]  # from ...errors import ...


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycles_through_deferred_imports():
    cycle = find_cycle(import_graph(deferred=True))
    assert cycle is None, "import cycle (through an import inside a function): " + " -> ".join(cycle or [])


def test_the_graph_of_a_small_package(tmp_path):
    pkg = tmp_path / "scans"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\nimport scans.sub.c\n\ndef f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text(
        "from ..a import f\nclass C:\n    from .. import b\n\ndef h():\n    from .. import b\n"
    )
    assert import_graph(pkg) == {
        "scans": {"scans.a"},
        "scans.a": {"scans.b", "scans.sub.c"},
        "scans.b": {"scans.sub.c"},
        "scans.sub": set(),
        "scans.sub.c": {"scans.a", "scans.b"},
    }
    assert find_cycle(import_graph(pkg)) == ["scans.a", "scans.b", "scans.sub.c", "scans.a"]
