"""The layers import one way (docs/architecture.md), and no module imports itself back.

Every module of the project is parsed (not imported) and each `import` of one of our
packages, at any depth (a function-level import is a dependency too), is checked:
- a package may import itself and the packages strictly below it, never one above it
  or a different package on its own level;
- flatmath imports nothing of ours and no Ray; foundation and landscape import no Ray;
- the module graph has no cycle.
Ray Train keeps tests/test_circular_imports.py for the same reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

LEVELS: dict[str, int] = {
    "flatmath": 0,
    "foundation": 1,
    "landscape": 1,
    "replicas": 2,
    "coordinator": 3,
    "cluster": 4,
    "widevalley": 5,
    "jobs": 6,
}
NO_RAY = {"flatmath", "foundation", "landscape"}

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every module named by an import statement in `source`, resolved to absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, `level` steps up
                anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def project_graph() -> Graph:
    """module → the project's modules (and `ray`) it imports."""
    files = [p for pkg in LEVELS for p in (REPO / pkg).rglob("*.py") if (REPO / pkg).is_dir()]
    modules = {module_name(p): p for p in files}
    graph: Graph = {}
    for name, path in modules.items():
        named = imports_of(path.read_text(), name, path.name == "__init__.py")
        ray = {"ray"} if any(m.split(".")[0] == "ray" for m in named) else set()
        graph[name] = {m for m in named if m in modules} | ray
    return graph


def violations(graph: Graph) -> list[str]:
    """Upward or sideways imports, and Ray where it must not be, as readable lines."""
    problems = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other == "ray":
                if package in NO_RAY:
                    problems.append(f"{module} imports Ray ({package} must not)")
            elif other != package and LEVELS[other] >= LEVELS[package]:
                where = "above" if LEVELS[other] > LEVELS[package] else "beside"
                problems.append(f"{module} imports {target}, a layer {where} {package}")
    return problems


def cycles(graph: Graph) -> list[list[str]]:
    """Each cycle among the modules, found by a depth-first search."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        state[node] = 2
        path.pop()

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def without_package_inits(graph: Graph) -> Graph:
    """A package's __init__ re-exporting its submodules is not a cycle with them."""
    return {m: {t for t in ts if not m.startswith(f"{t}.")} for m, ts in graph.items()}


def test_every_import_goes_down() -> None:
    assert violations(project_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(without_package_inits(project_graph())) == []


def test_the_layers_cover_every_package() -> None:
    # tests/ (and benchmarks/) are packages only so that their modules have names of their
    # own (tests.unit.…, tests.e2e.conftest); they sit above every layer and are no layer.
    ours = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert ours <= set(LEVELS), f"a package without a layer: {ours - set(LEVELS)}"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("replicas.replica", "from coordinator import report", "a layer above replicas"),
        ("flatmath.coupling", "def f():\n    import foundation.config", "a layer above flatmath"),
        ("landscape.hessian", "from foundation import models", "a layer beside landscape"),
        ("foundation.data", "import ray", "imports Ray"),
        ("coordinator.groups", "from jobs.train import main", "a layer above coordinator"),
    ],
)
def test_the_checker_catches_an_added_upward_import(
    module: str, source: str, expected: str
) -> None:
    graph = project_graph()
    added = imports_of(source, module, is_package=False)
    graph[module] = graph[module] | {m for m in added if m in graph or m == "ray"}
    assert any(expected in line for line in violations(graph)), violations(graph)


def test_the_checker_catches_a_cycle() -> None:
    graph = project_graph()
    graph["coordinator.rundir"] = graph["coordinator.rundir"] | {"coordinator.checkpoint"}
    assert ["coordinator.checkpoint", "coordinator.rundir", "coordinator.checkpoint"] in cycles(
        without_package_inits(graph)
    )
