"""The shape of the package, kept as docs/ARCHITECTURE.md describes it: small rooms, short functions, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "cnnlab"
MODULES = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
TRAINING_ROOMS = ("pipeline", "engine", "loops", "optimization", "runs", "training", "checks")
MAX_MODULE, MAX_TRAINING_ROOM, MAX_FUNCTION = 650, 450, 70


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text())


def imports(name: str) -> set[str]:
    """cnnlab modules that `name` imports anywhere: at the top, inside functions, under TYPE_CHECKING."""
    out = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cnnlab":
                out |= {a.name for a in node.names}
            elif node.module.startswith("cnnlab."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("cnnlab.")}
    return (out & set(MODULES)) - {name}


def test_no_import_cycle_among_cnnlab_modules():
    graph = {name: imports(name) for name in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_and_functions_stay_small():
    for name, path in MODULES.items():
        lines = len(path.read_text().splitlines())
        limit = MAX_TRAINING_ROOM if name in TRAINING_ROOMS else MAX_MODULE
        assert lines <= limit, f"{name}.py has {lines} lines (limit {limit})"
        for node in ast.walk(_tree(name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION, f"{name}.{node.name} has {length} lines (limit {MAX_FUNCTION})"


def test_the_architecture_page_names_every_module():
    page = (PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md").read_text()
    missing = [name for name in MODULES if f"`{name}.py`" not in page]
    assert not missing, f"docs/ARCHITECTURE.md does not describe {missing}"
