"""The shape of the package, kept as docs/ARCHITECTURE.md describes it: a few top-level modules, packages per role,
a dependency order with no cycles, small modules, short functions, documented faces.

A node of the import graph is a top-level module (`api`, `config`, ...) or a package (`data`, `training`, ...);
every `cnnlab.*` import in a file counts, wherever it is: at the top, inside a function, under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "cnnlab"
PAGE = PACKAGE.parents[1] / "docs" / "ARCHITECTURE.md"
FILES = sorted(PACKAGE.rglob("*.py"))
TOP_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
PACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
NODES = set(TOP_MODULES) | set(PACKAGES)
MAX_MODULE, MAX_FUNCTION = 450, 60
MAX_TOP_MODULES, MIN_PACKAGES = 5, 7
# What each lower layer must not import, directly or through another node.
FORBIDDEN = {
    "training": {"studies", "cli", "serve", "explain", "export", "datatools", "api"},
    "data": {"training", "studies", "cli", "serve", "explain", "export", "datatools", "evaluation", "api"},
}


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _node(path: Path) -> str | None:
    """The graph node a file belongs to; None for the root face (src/cnnlab/__init__.py)."""
    parts = path.relative_to(PACKAGE).parts
    if len(parts) == 1:
        return None if parts[0] == "__init__.py" else path.stem
    return parts[0]


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _root_exports() -> dict[str, str]:
    """Names `cnnlab/__init__.py` re-exports -> the node that defines them (`train` -> `api`)."""
    out = {}
    for node in ast.walk(_tree(PACKAGE / "__init__.py")):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnnlab."):
            out |= {a.asname or a.name: node.module.split(".")[1] for a in node.names}
    return out


ROOT_EXPORTS = _root_exports()


def _absolute(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against the file's package)."""
    if not node.level:
        return node.module or ""
    base = ["cnnlab", *path.relative_to(PACKAGE).parts[:-1]]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every cnnlab import in the file; `from cnnlab.x import y` gives `cnnlab.x.y`
    too, since y may be a module. `importlib.import_module("cnnlab...")` with a literal counts as well."""
    out = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(path, node)
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            out.append((node.lineno, node.args[0].value))
    return [(line, m) for line, m in out if m == "cnnlab" or m.startswith("cnnlab.")]


def _target(module: str) -> str | None:
    """The node an absolute cnnlab module (or `cnnlab.name`) belongs to; None for the root face itself."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in NODES:
        return parts[1]
    return ROOT_EXPORTS.get(parts[1])  # `from cnnlab import train` is api's; `lazy_face`, `__version__`: root's


def graph() -> dict[str, dict[str, str]]:
    """node -> {imported node: 'file:line' of the first such import}."""
    out: dict[str, dict[str, str]] = {n: {} for n in NODES}
    for path in FILES:
        src = _node(path)
        if src is None:
            continue
        for line, module in imported_modules(path):
            dst = _target(module)
            if dst and dst != src:
                out[src].setdefault(dst, f"{_rel(path)}:{line}")
    return out


def test_no_import_cycle_between_packages():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                where = ", ".join(edges[a][b] for a, b in itertools.pairwise(cycle))
                pytest.fail(f"import cycle: {' -> '.join(cycle)} ({where})")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def _reach(edges: dict[str, dict[str, str]], start: str) -> dict[str, list[str]]:
    """Every node `start` imports, directly or not -> one chain of 'file:line' imports that gets there."""
    seen: dict[str, list[str]] = {}
    todo = [(start, [])]
    while todo:
        node, chain = todo.pop(0)
        for nxt, where in sorted(edges[node].items()):
            if nxt not in seen and nxt != start:
                seen[nxt] = chain + [f"{node} -> {nxt} ({where})"]
                todo.append((nxt, seen[nxt]))
    return seen


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_import_nothing_above_them(layer):
    reached = _reach(graph(), layer)
    bad = {n: reached[n] for n in sorted(FORBIDDEN[layer] & set(reached))}
    assert not bad, f"cnnlab.{layer} imports " + "; ".join(f"{n}: {', '.join(c)}" for n, c in bad.items())


def test_few_top_level_modules_and_packages_per_role():
    assert len(TOP_MODULES) <= MAX_TOP_MODULES, f"src/cnnlab/ holds {len(TOP_MODULES)} modules: {TOP_MODULES}"
    assert len(PACKAGES) >= MIN_PACKAGES, f"src/cnnlab/ holds {len(PACKAGES)} packages: {PACKAGES}"


def test_modules_stay_small():
    big = [f"{_rel(p)} has {n} lines" for p in FILES if (n := len(p.read_text().splitlines())) > MAX_MODULE]
    assert not big, f"over {MAX_MODULE} lines: {big}"


def test_functions_stay_short():
    long = []
    for path in FILES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} has {length} lines")
    assert not long, f"over {MAX_FUNCTION} lines: {long}"


def test_no_aliased_cnnlab_imports():
    aliased = []
    for path in FILES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                names = [a for a in node.names if a.asname and (a.name == "cnnlab" or a.name.startswith("cnnlab."))]
            elif isinstance(node, ast.ImportFrom):
                module = _absolute(path, node)
                names = [a for a in node.names if a.asname and (module == "cnnlab" or module.startswith("cnnlab."))]
            else:
                continue
            aliased += [f"{_rel(path)}:{node.lineno} {a.name} as {a.asname}" for a in names]
    assert not aliased, f"cnnlab names imported under another name: {aliased}"


def test_every_module_has_a_docstring():
    missing = [_rel(p) for p in FILES if not ast.get_docstring(_tree(p))]
    assert not missing, f"no module docstring: {missing}"


def _docstring(obj) -> str | None:
    """The docstring written in the source (not one a dataclass or NamedTuple makes up, nor an inherited one)."""
    try:
        tree = _tree(Path(inspect.getsourcefile(obj)))
    except (TypeError, OSError):
        return obj.__doc__
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == obj.__name__:
            return ast.get_docstring(node)
    return obj.__doc__


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_of_a_face_resolves_and_is_documented(package):
    face = importlib.import_module(f"cnnlab.{package}")
    assert Path(face.__file__).resolve().is_relative_to(PACKAGE.resolve()), f"imported {face.__file__}: set PYTHONPATH"
    assert hasattr(face, "__all__"), f"cnnlab.{package} has no __all__"
    unresolved, undocumented = [], []
    for name in face.__all__:
        try:
            obj = getattr(face, name)
        except (AttributeError, ImportError) as e:
            unresolved.append(f"{name} ({e})")
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (_docstring(obj) or "").strip():
            undocumented.append(name)
    assert not unresolved, f"cnnlab.{package}.__all__ names that do not resolve: {unresolved}"
    assert not undocumented, f"cnnlab.{package}: public names without a docstring: {undocumented}"


def test_the_architecture_page_names_every_package_and_module():
    page = PAGE.read_text()
    wanted = [f"{p}/" for p in PACKAGES]
    wanted += [_rel(p) for p in FILES if p.name != "__init__.py"]
    missing = [w for w in wanted if f"`{w}`" not in page]
    assert not missing, f"docs/ARCHITECTURE.md does not name {missing}"
