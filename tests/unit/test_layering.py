"""The package's shape, read from its source: imports flow down the layers, no import cycle, no file
over 400 lines and no function over 60.

Layers, top to bottom (DESIGN.md): entry points (``cli``, ``__main__``, ``pytest_plugin``, ``plugin/``,
the top ``__init__``) -> ``reports`` -> ``evaluate`` and ``checks`` (an evaluation stage) ->
``defenses`` -> ``attacks``, ``models``, ``data`` (side by side, not importing each other) -> ``core``.
A module may import its own layer and the layers below, never one above.

Every import counts: module level, inside functions, under ``if TYPE_CHECKING:``, and literal
``importlib.import_module("robustaudit...")`` / ``__import__("robustaudit...")`` calls. A lazy import
keeps start-up cheap; it does not make a cycle or an upward dependency go away. The source is parsed,
never imported, so this test costs well under a second.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = "robustaudit"
SRC = Path(__file__).resolve().parents[2] / "src" / ROOT
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60

#: Layer rank of each subpackage (higher may import lower; one rank may import itself). ``evaluate`` and
#: ``checks`` are one layer (a check is an evaluation stage); ``attacks``, ``models`` and ``data`` share a
#: rank but are siblings (``SIBLINGS``): one imports another only through ``ALLOWED_SIBLING_EDGES``.
LAYERS: dict[str, int] = {
    "core": 0,
    "attacks": 1,
    "models": 1,
    "data": 1,
    "defenses": 2,
    "evaluate": 3,
    "checks": 3,
    "reports": 4,
    "entry": 5,
}
#: Modules outside the subpackages above: the entry points.
ENTRY_MODULES = {ROOT, f"{ROOT}.__main__", f"{ROOT}.cli", f"{ROOT}.cli_audit", f"{ROOT}.cli_common",
                 f"{ROOT}.cli_train",
                 f"{ROOT}.pytest_plugin"}
ENTRY_PACKAGES = {"plugin"}
SIBLINGS = {"attacks", "models", "data"}
#: (importer group, imported group) between siblings of one rank, each with its reason. None today:
#: attacks take a model as an argument and never build or load one, and neither models nor data know
#: about the other.
ALLOWED_SIBLING_EDGES: dict[tuple[str, str], str] = {}


# ---------------------------------------------------------------------------------- reading the source
def module_name(path: Path, src: Path = SRC) -> str:
    """``src/robustaudit/models/zoo/__init__.py`` -> ``robustaudit.models.zoo``."""
    parts = [src.name, *path.relative_to(src).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p, src): p for p in sorted(src.rglob("*.py"))}


def _owner(target: str, known: Iterable[str]) -> str | None:
    """The module that ``target`` (a module or a name inside one) lives in: its longest known prefix."""
    known = set(known)
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _literal_import_call(node: ast.Call) -> str | None:
    """The module named by ``import_module("x")`` / ``importlib.import_module("x")`` / ``__import__("x")``."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(tree: ast.AST, module: str, is_package: bool, known: Iterable[str]) -> dict[str, int]:
    """Modules of ours that ``module`` imports anywhere in ``tree``: ``{imported module: first line}``."""
    known = set(known)
    package = module if is_package else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        owner = _owner(target, known)
        if owner is not None and owner != module:
            found.setdefault(owner, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from pkg import mod` imports the submodule; `from mod import name` the module
                full = f"{base}.{alias.name}"
                add(full if full in known else base, node.lineno)
        elif isinstance(node, ast.Call):
            target = _literal_import_call(node)
            if target is not None:
                add(target, node.lineno)
    return found


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` over the whole package."""
    files = source_files(src)
    return {
        name: imports_of(ast.parse(path.read_text(encoding="utf-8"), str(path)), name,
                         path.name == "__init__.py", files)
        for name, path in files.items()
    }


# ---------------------------------------------------------------------------------- the rules
def group_of(module: str) -> str | None:
    """The layer group of a module: a key of ``LAYERS``, or None for a module no layer claims."""
    if module in ENTRY_MODULES:
        return "entry"
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] in ENTRY_PACKAGES:
        return "entry"
    return parts[1] if parts[1] in LAYERS and parts[1] != "entry" else None


def layer_violations(graph: Mapping[str, Mapping[str, int]],
                     allowed: Mapping[tuple[str, str], str] = ALLOWED_SIBLING_EDGES) -> list[str]:
    """One line per import that goes up the layers or across siblings without an allowed edge."""
    bad = []
    for module, targets in sorted(graph.items()):
        src_group = group_of(module)
        for target, line in sorted(targets.items()):
            dst_group = group_of(target)
            if src_group is None or dst_group is None or src_group == dst_group:
                continue
            up = LAYERS[dst_group] > LAYERS[src_group]
            across = {src_group, dst_group} <= SIBLINGS and (src_group, dst_group) not in allowed
            if src_group == "entry" or not (up or across):
                continue
            why = "up" if up else "across siblings"
            bad.append(f"{module}:{line} imports {target} ({src_group} -> {dst_group}, {why})")
    return bad


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (or a module that
    imports itself), each sorted, found with Tarjan's algorithm (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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
    return sorted(found)


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length)`` of every function or method longer than ``limit`` lines
    (from ``def`` to its last line; decorators not counted), nested ones included."""
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > limit:
                        out.append((name, child.lineno, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _where(path: Path) -> str:
    return path.relative_to(SRC.parent).as_posix()


# ---------------------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_every_module_has_a_layer():
    orphans = [m for m in source_files() if group_of(m) is None]
    assert orphans == [], f"modules in no layer (add them to a layer in DESIGN.md and here): {orphans}"


def test_imports_flow_down_the_layers(graph):
    bad = layer_violations(graph)
    assert bad == [], f"{len(bad)} imports go up the layers or across siblings:\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    found = cycles({m: set(t) for m, t in graph.items()})
    lines = [" <-> ".join(c) for c in found]
    assert found == [], f"{len(found)} import cycles (lazy imports included):\n" + "\n".join(lines)


def test_no_file_over_the_line_limit():
    big = [(_where(p), n) for p in source_files().values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]
    assert big == [], f"{len(big)} files over {MAX_FILE_LINES} lines:\n" + "\n".join(f"{p}: {n}" for p, n in big)


def test_no_function_over_the_line_limit():
    long = [f"{_where(p)}:{line} {name} ({n} lines)"
            for p in source_files().values()
            for name, line, n in long_functions(ast.parse(p.read_text(encoding="utf-8")))]
    assert long == [], f"{len(long)} functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


# ---------------------------------------------------------------------------------- the checks can fail
def test_the_walker_sees_lazy_typing_relative_and_string_imports(tmp_path):
    pkg = tmp_path / "robustaudit"
    for rel in ("__init__.py", "core/__init__.py", "core/a.py", "models/__init__.py", "models/m.py",
                "models/n.py", "data/__init__.py", "data/d.py", "evaluate/__init__.py", "evaluate/e.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text("")
    (pkg / "models" / "m.py").write_text(textwrap.dedent("""
        from typing import TYPE_CHECKING
        import importlib
        from robustaudit.core.a import Thing          # module level, a name inside a module
        from . import n                               # relative: a submodule
        if TYPE_CHECKING:
            from robustaudit.data.d import D          # typing only: still a dependency
        def later():
            import robustaudit.evaluate.e             # function level
            importlib.import_module("robustaudit.data")
            return __import__("os")                   # not ours: ignored
    """))
    found = import_graph(pkg)["robustaudit.models.m"]
    assert found == {"robustaudit.core.a": 4, "robustaudit.models.n": 5, "robustaudit.data.d": 7,
                     "robustaudit.evaluate.e": 9, "robustaudit.data": 10}


def test_the_layer_rule_catches_upward_and_sibling_imports():
    fake = {
        "robustaudit.core.a": {"robustaudit.evaluate.runner": 3},  # up two layers
        "robustaudit.attacks.pgd": {"robustaudit.models.catalog": 7, "robustaudit.core.a": 1},  # across
        "robustaudit.reports.html": {"robustaudit.evaluate.result": 2},  # down: fine
        "robustaudit.cli": {"robustaudit.reports.html": 1},  # entry point: fine
    }
    assert layer_violations(fake, allowed={}) == [
        "robustaudit.attacks.pgd:7 imports robustaudit.models.catalog (attacks -> models, across siblings)",
        "robustaudit.core.a:3 imports robustaudit.evaluate.runner (core -> evaluate, up)",
    ]
    assert layer_violations(fake, allowed={("attacks", "models"): "a reason"}) == [
        "robustaudit.core.a:3 imports robustaudit.evaluate.runner (core -> evaluate, up)",
    ]


def test_the_cycle_finder_finds_a_planted_cycle():
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert cycles(fake) == [["a", "b", "c"], ["e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_size_check_names_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    tree = ast.parse(f"class K:\n  def short(self):\n    return 1\n\ndef f():\n{body}\n    return x0\n")
    assert long_functions(tree) == [("f", 5, 62)]
    assert long_functions(tree, limit=62) == []
