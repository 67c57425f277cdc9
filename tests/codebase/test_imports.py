"""No import circle inside the package: the app, the tasks and the runtime (and every
other module) form a graph that only points one way. Imports inside functions count too,
as do those under TYPE_CHECKING, since any of them can start a circle at run time.

The subpackages are layers: provider/ (the Mobyt side) and store/ (Redis) sit under the
Celery side and the processes built on it (web/, cli/); store/ records what provider/
decodes, never the other way round; the fake provider (sandbox/) is reached only from the
command line."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mobyt_worker"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in its code."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # from . import tasks
    return {m for m in found if m in modules and m != name}


def ancestors(name: str) -> set[str]:
    """The packages Python imports before ``name`` anyway (``from . import x`` names one)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules, root) - ancestors(name) for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


#: The modules that build or run Celery apps.
CELERY_SIDE = ("mobyt_worker.celeryapp", "mobyt_worker.runtime", "mobyt_worker.worker", "mobyt_worker.tasks",
               "mobyt_worker.producer")
#: A layer, and what no module of it imports.
BELOW = {
    "mobyt_worker.provider": ("mobyt_worker.store", "mobyt_worker.web", "mobyt_worker.cli", "mobyt_worker.sandbox",
                              *CELERY_SIDE),
    "mobyt_worker.store": ("mobyt_worker.web", "mobyt_worker.cli", "mobyt_worker.sandbox", *CELERY_SIDE),
    "mobyt_worker.web": ("mobyt_worker.cli", "mobyt_worker.sandbox"),
}
#: A subpackage, and the only modules outside it that import it.
ENTRY_POINTS = {
    "mobyt_worker.sandbox": ("mobyt_worker.cli",),
    "mobyt_worker.cli": ("mobyt_worker.__main__",),
    "mobyt_worker.web": (),
}


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up or into a subpackage through a door it does not have."""
    found = []
    for name, targets in sorted(edges.items()):
        for target in sorted(targets):
            downward = all(not (within(name, layer) and within(target, *above)) for layer, above in BELOW.items())
            allowed_in = all(within(name, package, *doors) or not within(target, package)
                             for package, doors in ENTRY_POINTS.items())
            if not (downward and allowed_in):
                found.append(f"{name} -> {target}")
    return found


def test_the_package_has_no_import_cycle():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "mobyt_worker"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    assert find_cycle(graph(pkg)) == ["mobyt_worker.a", "mobyt_worker.b", "mobyt_worker.a"]


def test_the_app_the_tasks_and_the_runtime_point_one_way():
    edges = graph()
    assert "mobyt_worker.tasks" not in edges["mobyt_worker.worker"]
    assert "mobyt_worker.worker" not in edges["mobyt_worker.runtime"]
    assert "mobyt_worker.runtime" not in edges["mobyt_worker.celeryapp"]


def test_the_layers_point_one_way():
    edges = graph()
    assert all(any(within(m, layer) for m in edges) for layer in [*BELOW, *ENTRY_POINTS]), sorted(edges)
    assert layer_violations(edges) == []


def test_the_layer_check_finds_an_import_that_goes_up():
    edges = {"mobyt_worker.provider.client": {"mobyt_worker.store.orders"},
             "mobyt_worker.store.orders": {"mobyt_worker.provider.protocol"},
             "mobyt_worker.runtime": {"mobyt_worker.sandbox.provider"}, "mobyt_worker.cli.main": {"mobyt_worker.sandbox"}}
    assert layer_violations(edges) == ["mobyt_worker.provider.client -> mobyt_worker.store.orders",
                                       "mobyt_worker.runtime -> mobyt_worker.sandbox.provider"]


def test_the_delivery_policy_imports_no_io():
    """delivery.py is pure: no store/ (Redis), provider/ (HTTP) or Celery side, so every
    row of its decision table is a unit test."""
    assert graph()["mobyt_worker.delivery"] == {"mobyt_worker.states"}
    tree = ast.parse((PACKAGE / "delivery.py").read_text(encoding="utf-8"))
    outside = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    outside |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    assert outside <= {"__future__", "dataclasses", "datetime", "typing"}, outside
