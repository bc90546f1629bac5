"""The package has no import cycles among its modules.

A cycle makes a module run while another is half-initialised, so the names it imports depend on
which module was imported first. Imports are read with `ast`; only those that run when a module
is imported count: imports inside functions (deferred on purpose, to keep heavy libraries off
`llmkit --help`) and under `if TYPE_CHECKING:` are left out. `from P import N` reads package P
(and module P.N when N is one), so a module inside P that imports from P's namespace while P's
`__init__` imports it is a cycle too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules_of(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every module below `package_dir`."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_at_import(body: Iterable[ast.stmt]) -> Iterable[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module body runs."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _run_at_import(node.body)
            yield from _run_at_import(node.orelse)
        elif isinstance(node, ast.ClassDef):
            yield from _run_at_import(node.body)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _run_at_import(block)
            for handler in node.handlers:
                yield from _run_at_import(handler.body)
        elif isinstance(node, (ast.With, ast.For, ast.While)):
            yield from _run_at_import(node.body)


def imports_of(name: str, modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """The package's modules that module `name` imports when it is imported."""
    path, is_package = modules[name]
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _run_at_import(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
            continue
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join([*parent, *([node.module] if node.module else [])])
        if base in modules:
            found.add(base)
        found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    found.discard(name)
    return found


def import_cycles(package_dir: Path) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others (Tarjan)."""
    modules = modules_of(package_dir)
    graph = {name: sorted(imports_of(name, modules)) for name in modules}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        order[name] = low[name] = len(order)
        stack.append(name)
        for imported in graph[name]:
            if imported not in order:
                visit(imported)
                low[name] = min(low[name], low[imported])
            elif imported in stack:
                low[name] = min(low[name], order[imported])
        if low[name] == order[name]:
            group = stack[stack.index(name) :]
            del stack[stack.index(name) :]
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in order:
            visit(name)
    return cycles


def test_llmkit_has_no_import_cycles() -> None:
    assert import_cycles(ROOT / "llmkit") == []


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_the_check_finds_a_cycle_through_a_package_namespace(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.front import run\n",
            "pkg/front.py": "from pkg import sub\nfrom pkg.sub.low import helper\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/low.py": "import pkg.sub\n",
            "pkg/back.py": "from . import front\n",
            "pkg/top.py": "from pkg import back\n",
        },
    )
    # pkg -> front -> pkg (front reads the namespace of pkg, whose __init__ imports front)
    assert import_cycles(package) == [["pkg", "pkg.front"]]


def test_the_check_ignores_deferred_and_type_checking_imports(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": (
                "from typing import TYPE_CHECKING\nimport pkg.b\n"
                "if TYPE_CHECKING:\n    from pkg.b import B\n"
            ),
            "pkg/b.py": (
                "import typing\n"
                "if typing.TYPE_CHECKING:\n    from pkg import a\nelse:\n    import json\n"
                "def later():\n    from pkg.a import x\n"
                "class C:\n    def method(self):\n        import pkg.a\n"
            ),
        },
    )
    assert import_cycles(package) == []
    guarded = "try:\n    from pkg.a import x\nexcept ImportError:\n    x = None\n"
    (package / "b.py").write_text(guarded)
    assert import_cycles(package) == [["pkg.a", "pkg.b"]]
