"""The layers' one-way rule of ARCHITECTURE.md: no import upwards, no import circle in mcdiff/,
and no module using another's private names.

Every ``import`` and ``from ... import`` of an ``mcdiff`` module anywhere in a file (also
inside functions, where a circle could hide) is an edge of the import graph.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcdiff"

ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"


def documented_table(heading: str) -> list[list[str]]:
    """The rows of the Markdown table under ``## heading`` in ARCHITECTURE.md, cells stripped of backticks."""
    text = ARCHITECTURE.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip().strip("`") for cell in row] for row in rows[2:]]


# Lower ranks may not import higher ones. Equal ranks may import each other, as long as the
# graph has no circle. The ranks are the project's architecture document's, read from it.
RANK = {module: int(rank) for rank, module, _ in documented_table("Layers")}
def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_trees() -> dict[str, ast.Module]:
    """The syntax tree of every module of mcdiff/, by module name."""
    return {module_name(path): ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, tree in module_trees().items():
        deps = set()
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            deps |= {n for n in names if n == "mcdiff" or n.startswith("mcdiff.")}
        graph[module] = deps - {module}
    return graph


def is_private(name: str) -> bool:
    """``_name``, not ``__dunder__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(trees: dict[str, ast.Module]) -> list[str]:
    """Private names one module takes from another: ``from mcdiff.x import _y``, or ``x._y``
    on a name bound to another mcdiff module (``import mcdiff.x as x``, ``from mcdiff import x``,
    ``mcdiff.x._y``). Relative imports are not used in mcdiff and are not read."""
    found = []
    for here, tree in trees.items():
        modules = {}  # local name -> the mcdiff module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "mcdiff":
                        modules[alias.asname or "mcdiff"] = alias.name if alias.asname else "mcdiff"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mcdiff":
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in trees:
                        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif is_private(alias.name) and node.module != here:
                        found.append(f"{here} line {node.lineno}: from {node.module} import {alias.name}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain, value = [value.attr, *chain], value.value
            if not isinstance(value, ast.Name) or value.id not in modules:
                continue
            module = modules[value.id]
            for attr in chain:  # down the submodules, to the first name that is not one
                if f"{module}.{attr}" not in trees:
                    if is_private(attr) and module != here:
                        found.append(f"{here} line {node.lineno}: {module}.{attr}")
                    break
                module = f"{module}.{attr}"
    return sorted(set(found))


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


def test_the_architecture_document_names_every_module_and_no_other():
    documented = [row[0] for row in documented_table("Every module")]
    assert sorted(documented) == sorted(import_graph()), "ARCHITECTURE.md's module table is out of date"
    assert RANK["mcdiff.noise"] == 0 and RANK["mcdiff.cli"] > RANK["mcdiff.runner"]


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


def test_no_module_uses_another_modules_private_names():
    uses = private_uses(module_trees())
    assert not uses, "make these names public in the module that owns them:\n" + "\n".join(uses)


@pytest.mark.parametrize(
    "source, found",
    [
        ("from mcdiff.b import _y, z", ["mcdiff.a line 1: from mcdiff.b import _y"]),
        ("import mcdiff.b as b\nb._y()", ["mcdiff.a line 2: mcdiff.b._y"]),
        ("import mcdiff\nmcdiff.b._y", ["mcdiff.a line 2: mcdiff.b._y"]),
        ("from mcdiff import b\nb._y", ["mcdiff.a line 2: mcdiff.b._y"]),
        ("import mcdiff.b\nmcdiff.b.__doc__, mcdiff.b.y._z, self._y", []),
        ("from mcdiff.a import _y", []),
    ],
)
def test_the_private_name_finder_finds_private_names(source, found):
    trees = {"mcdiff.a": ast.parse(source), "mcdiff.b": ast.parse("")}
    assert private_uses(trees) == found


@pytest.mark.parametrize(
    "graph, circle",
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]), ({"a": {"b"}, "b": set()}, None)],
)
def test_the_circle_finder_finds_circles(graph, circle):
    assert find_circle(graph) == circle


# The one loop over evaluations: blocks are evaluated only by the executors, for the runner.
EVALUATING = {"mcdiff.blocks", "mcdiff.executors"}


def test_nothing_but_the_executors_evaluates_blocks():
    """No module but the executors (and blocks itself) calls or imports ``evaluate_design`` or
    ``evaluate_block``: every estimator and diagnostic evaluates through the runner."""
    offenders = []
    for module, tree in module_trees().items():
        if module in EVALUATING:
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            names += [node.attr] if isinstance(node, ast.Attribute) else []
            names += [node.id] if isinstance(node, ast.Name) else []
            offenders += [f"{module}: {n}" for n in names if n in ("evaluate_design", "evaluate_block")]
    assert not offenders
