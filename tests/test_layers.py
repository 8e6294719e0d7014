"""The layers' one-way rule of ARCHITECTURE.md: no import upwards, no import circle in mcdiff/.

Every ``import`` and ``from ... import`` of an ``mcdiff`` module anywhere in a file (also
inside functions, where a circle could hide) is an edge of the import graph.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcdiff"

# Lower ranks may not import higher ones. Equal ranks may import each other, as long as the
# graph has no circle.
RANK = {
    "mcdiff.noise": 0,
    "mcdiff.designs": 0,
    "mcdiff.data": 0,
    "mcdiff.samplers": 1,
    "mcdiff.functionals": 2,
    "mcdiff.models": 2,
    "mcdiff.training": 2,
    "mcdiff.estimators": 3,
    "mcdiff.inverse": 3,
    "mcdiff.writer_lock": 3,
    "mcdiff.atomic": 3,
    "mcdiff.results": 4,
    "mcdiff.store": 4,
    "mcdiff.plots": 4,
    "mcdiff.blocks": 5,
    "mcdiff.executors": 6,
    "mcdiff.runner": 7,
    "mcdiff.multifidelity": 8,
    "mcdiff.diagnostics": 8,
    "mcdiff.cli": 9,
    "mcdiff": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            deps |= {n for n in names if n == "mcdiff" or n.startswith("mcdiff.")}
        graph[module_name(path)] = deps - {module_name(path)}
    return graph


def rank(module: str) -> int:
    """The rank of a module, or of the subpackage (``mcdiff.samplers``) it belongs to."""
    name = module
    while name not in RANK:
        if name.count(".") < 2:
            raise KeyError(module)
        name = name.rsplit(".", 1)[0]
    return RANK[name]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_every_module_has_a_rank():
    unranked = []
    for m in import_graph():
        try:
            rank(m)
        except KeyError:
            unranked.append(m)
    assert not unranked, f"add these modules to RANK: {unranked}"


def test_no_import_goes_up_a_layer():
    upward = [
        f"{a} (rank {rank(a)}) imports {b} (rank {rank(b)})"
        for a, deps in import_graph().items()
        for b in deps
        if rank(b) > rank(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    assert find_circle(import_graph()) is None


@pytest.mark.parametrize(
    "graph, circle",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]), ({"a": {"b"}, "b": set()}, None)],
)
def test_the_circle_finder_finds_circles(graph, circle):
    assert find_circle(graph) == circle
