"""The import graph of jwae_ext: no cycle, and no module imports a command-line module.

Every import counts, at module level or inside a function: a lazy import still ties the two
modules together, it only hides the tie until the function runs. Imports under
``if TYPE_CHECKING:`` do not count (they never run). Importing ``a.b.c`` counts as an edge to
``a.b.c`` only, not to the packages above it. See docs/design.md, "Layers".
"""

from __future__ import annotations

import ast
import importlib.machinery
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "jwae_ext"
COMMAND_LINE = {
    "jwae_ext.train",
    "jwae_ext.evaluate",
    "jwae_ext.experiments",
    "jwae_ext.info",
    "jwae_ext.index",
    "jwae_ext.search.__main__",
    "jwae_ext.serve.__main__",
}
# The poster's experiments run the trainer's command line in-process, one run after another.
COMMAND_LINE_IMPORTS_ALLOWED = {("jwae_ext.experiments", "jwae_ext.train")}


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir`` by dotted name: Python sources and
    compiled extensions (an extension imports nothing of the package, but it is imported)."""
    suffixes = (".py", *importlib.machinery.EXTENSION_SUFFIXES)
    modules = {}
    for path in sorted(package_dir.rglob("*")):
        suffix = next((s for s in suffixes if path.name.endswith(s)), None)
        if suffix is None or "__pycache__" in path.parts:
            continue
        parts = [*path.relative_to(package_dir.parent).parent.parts, path.name[: -len(suffix)]]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """The ids of every node in the body of an ``if TYPE_CHECKING:`` (or
    ``typing.TYPE_CHECKING``); its ``else`` runs, and counts."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
            or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")
        ):
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` if it is a module of the package, else its longest prefix that is."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that ``module`` (its source at ``path``) imports."""
    if path.suffix != ".py":
        return set()
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level - 1 packages from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from p import x`` imports the module p.x when there is one, else a name of p;
            # either way p itself runs first, so p is imported too (except the root package,
            # which every module's import passes through).
            names += [f"{base}.{alias.name}" for alias in node.names]
            if "." in base:
                names.append(base)
    found = {_known_prefix(name, modules) for name in names}
    return {target for target in found if target is not None and target != module}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    modules = package_modules(package_dir)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the path ``[a, b, ..., a]``, or None when it has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        path.append(node)
        for target in sorted(graph[node]):
            if target in path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done and (cycle := visit(node)):
            return cycle
    return None


# ---- the package -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_DIR)


def test_the_graph_sees_the_package(graph):
    assert graph.keys() >= COMMAND_LINE
    assert "jwae_ext._C" in graph["jwae_ext"]  # the compiled extension is a module too
    assert "jwae_ext.ops" in graph["jwae_ext.retrieval"]


def test_jwae_ext_has_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in jwae_ext: " + " -> ".join(cycle)


def test_no_module_imports_a_command_line_module(graph):
    offending = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets & COMMAND_LINE
        if (module, target) not in COMMAND_LINE_IMPORTS_ALLOWED
    )
    assert not offending, "; ".join(offending)


# ---- the checker, on packages made for it --------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "pkg"


def test_a_cycle_through_a_function_level_relative_import_is_found(tmp_path):
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\n",
            "pkg/sub/__init__.py": "",
            "pkg/b.py": "from pkg.sub import c\n",
            "pkg/sub/c.py": "def f():\n    from ..a import thing\n",
        },
    )
    assert find_cycle(import_graph(package)) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_type_checking_imports_and_names_of_a_package_are_no_cycle(tmp_path):
    package = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import A\nVERSION = 1\n",
            "pkg/a.py": (
                "from typing import TYPE_CHECKING\nimport typing\nimport os\n"
                "if TYPE_CHECKING:\n    from pkg.b import B\n"
                "if typing.TYPE_CHECKING:\n    import pkg.b\n"
                "A = 1\n"
            ),
            "pkg/b.py": "from . import a\nfrom pkg import VERSION\n",
        },
    )
    graph = import_graph(package)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": set(), "pkg.b": {"pkg", "pkg.a"}}
    assert find_cycle(graph) is None
    (package / "a.py").write_text("import pkg.b\n")  # now b -> pkg -> a -> b
    assert find_cycle(import_graph(package)) == ["pkg", "pkg.a", "pkg.b", "pkg"]
