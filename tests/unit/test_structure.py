"""The shape of the code: no import cycles among our packages, and the servers never import the CLI.

Imports are read with `ast`, not executed: every `import` that runs (at module level or
inside a function, not under `if TYPE_CHECKING:`) is an edge. A cycle makes the import order decide
what half-initialised module another one sees; a server importing the CLI drags its
dependencies into a process that never runs it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("auditflow", "gateway", "processor")
GENERATED = "auditflow.v1"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = _module_name(path)
            if not name.startswith(GENERATED) and ".migrations." not in f"{name}.":
                found[name] = path
    return found


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that runs: at module level or inside functions, not under `if TYPE_CHECKING`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            yield from _runtime_imports(node)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        targets = [f"{base}.{alias.name}" for alias in node.names]
        targets = [t if t in known else base for t in targets]
    for target in targets:
        while target and target not in known:  # `import a.b.c` of a module we do not walk
            target = target.rpartition(".")[0]
        if target:
            yield target


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        edges = {t for node in _runtime_imports(tree) for t in _imported(node, name, is_package, known)}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_our_imports() -> None:
    graph = import_graph()
    assert "auditflow.config" in graph["auditflow.tls"]
    assert "auditflow.sample" in graph["gateway.rest.page"]
    assert "processor.runs" in graph["processor.service"]
    inside_a_function = ast.parse("def f():\n    from auditflow import cli\n")
    assert [node.module for node in _runtime_imports(inside_a_function)] == ["auditflow"]  # type: ignore[union-attr]


def test_no_import_cycles_among_our_packages() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_servers_do_not_import_the_cli() -> None:
    graph = import_graph()
    reached: set[str] = set()
    pending = [name for name in graph if name.startswith(("gateway", "processor"))]
    while pending:
        name = pending.pop()
        if name not in reached:
            reached.add(name)
            pending.extend(graph[name])
    assert not {name for name in reached if name.startswith("auditflow.cli")}


def test_the_processors_classes_stay_small() -> None:
    """A class past 200 lines holds more than one job: split it (the processor's rule)."""
    sizes = {}
    for path in sorted((ROOT / "processor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                sizes[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert sizes and max(sizes.values()) < 200, max(sizes.items(), key=lambda item: item[1])
