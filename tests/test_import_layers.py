"""The project's modules import one another only downwards: no import circle, and the
layers schemas ← billing ← metering (a lower layer never imports a higher one).

Read from the source (ast), not by importing: every `import` counts wherever it is — at
module level or inside a function — since a function-level import that closes a circle
is a circle all the same, only one that fails later, or in another order. Imports under
`if TYPE_CHECKING:` are never executed, so they make no circle; they still count for the
layers (a type from a higher layer is a dependency on it)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Lowest first: a package may import only from the packages before it (and itself).
LAYERS = ("schemas", "billing", "metering")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name → file, for every module of the layered packages."""
    return {
        _module_name(path, root): path
        for layer in LAYERS
        for path in sorted((root / layer).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement in the tree, at any depth, and whether it runs only for the
    type checker (the body of an `if TYPE_CHECKING:`)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, typing_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typing_only)
        else:
            yield from _imports(node, typing_only)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name is, or is in (`a.b.C` → `a.b`); None outside."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(
    module: str, path: Path, modules: dict[str, Path]
) -> Iterator[tuple[str, bool]]:
    """The project modules `module` imports, each with whether only for type checking."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node, typing_only in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            assert isinstance(node, ast.ImportFrom)
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a.b import c` imports the module a.b.c when there is one, else a.b
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            names = [name if name in modules else base for name in names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                yield target, typing_only


def import_graph(
    modules: dict[str, Path], *, with_typing_only: bool = False
) -> dict[str, set[str]]:
    return {
        module: {
            target
            for target, typing_only in imported_modules(module, path, modules)
            if with_typing_only or not typing_only
        }
        for module, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing
    itself): each is at least one import circle. Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def a_circle(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One circle inside a strongly connected component, as `a → b → … → a`: the
    shortest path back to its first module (breadth first, inside the component)."""
    inside = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & inside):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    following.append(succ)
        frontier = following
    raise AssertionError(f"not strongly connected: {component}")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: n for n, layer in enumerate(LAYERS)}
    return [
        f"{module} → {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    ]


def test_there_is_no_import_circle() -> None:
    graph = import_graph(project_modules())
    circles = [
        f"{' → '.join(a_circle(c, graph))} (all of {', '.join(c)} reach one another)"
        for c in cycles(graph)
    ]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_layers_import_only_downwards() -> None:
    graph = import_graph(project_modules(), with_typing_only=True)
    upward = upward_imports(graph)
    assert not upward, "schemas ← billing ← metering, but:\n" + "\n".join(upward)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The checks above would pass vacuously if the parser missed imports: a made-up
    tree with a circle closed inside a function, a relative import and an upward one."""
    files = {
        "schemas/__init__.py": "",
        "schemas/low.py": "def f():\n    from billing import rules\n",
        "billing/__init__.py": "",
        "billing/rules.py": "from .more import X\n",
        "billing/more.py": "import schemas.low\nX = 1\n",
        "metering/__init__.py": "",
        "metering/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from metering import b\n",
        "metering/b.py": "from metering.a import thing\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = project_modules(tmp_path)
    graph = import_graph(modules)
    assert graph["schemas.low"] == {"billing.rules"}
    assert graph["billing.rules"] == {"billing.more"}
    assert graph["metering.a"] == set()  # only for the type checker
    assert import_graph(modules, with_typing_only=True)["metering.a"] == {"metering.b"}
    [circle] = cycles(graph)
    assert circle == ["billing.more", "billing.rules", "schemas.low"]
    assert a_circle(circle, graph) == [
        "billing.more",
        "schemas.low",
        "billing.rules",
        "billing.more",
    ]
    assert upward_imports(graph) == ["schemas.low → billing.rules"]
