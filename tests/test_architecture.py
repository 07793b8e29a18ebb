"""The import graph of the four packages: dependencies point one way.

Every module of ``gateway``, ``providers``, ``security`` and ``metrics`` is parsed (never
imported) and each of its imports becomes an edge, wherever it stands: at module level or inside
a function (a function-level import still runs, only later). ``from a.b import c`` is an edge
to ``a.b.c`` when that is a module, else to ``a.b`` (a package's ``__init__`` when ``a.b`` is
a package). The ``__init__`` of a package that its own modules import through (``a.b.c``
imports ``a.b.d``) is not an edge: a package's ``__init__`` importing its modules is how a
package presents them.

Imports under ``if TYPE_CHECKING:`` are left out: they never run, so they cannot order or
entangle start-up, and they name a type only. The one kind the tree has is a report reading
the whole container (``review``, ``compliance`` annotate their argument as ``Runtime``) while
the wiring that builds the container runs those reports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "providers", "security", "metrics")
LOWER = ("providers", "security", "metrics")
"""Packages beneath the app: none of them may import ``gateway`` or starlette."""


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {
        module_name(path, root): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import under ``node`` (in any function or class), except the body of an
    ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _imports_of(other)
        else:
            yield from _imports(child)


def _imports_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _imports(node)


def imported_names(name: str, path: Path) -> Iterator[str]:
    """The dotted names ``name`` (at ``path``) imports: ``import a.b`` gives ``a.b``; ``from a
    import b`` gives ``a.b`` (a module, or a name in ``a``: resolved against the graph)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        yield base
        yield from (f"{base}.{alias.name}" for alias in node.names)


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the modules of the four packages it imports."""
    known = modules(root)
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target in imported_names(name, path):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_imports_are_read_wherever_they_stand(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "import a.b\n"
        "from c import d\n"
        "if TYPE_CHECKING:\n"
        "    from e import f\n"
        "else:\n"
        "    import g\n"
        "def run():\n"
        "    from h.i import j\n"
        "class K:\n"
        "    def method(self):\n"
        "        import l\n"
    )
    names = set(imported_names("p.module", source))
    assert {"a.b", "c", "c.d", "g", "h.i", "h.i.j", "l"} <= names
    assert not {"e", "e.f"} & names
    assert cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}) == [["x", "y", "z"]]


def test_the_graph_resolves_modules_and_packages(tmp_path):
    for path, text in {
        "gateway/__init__.py": "",
        "gateway/room/__init__.py": "from gateway.room.front import serve\n",
        "gateway/room/front.py": "def serve():\n    from gateway import other\n",
        "gateway/other.py": "from gateway.room import serve\nimport gateway.room.back\n",
        "gateway/room/back.py": "",
    }.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    edges = graph(tmp_path)
    assert edges["gateway.other"] == {"gateway.room", "gateway.room.back"}
    assert edges["gateway.room.front"] == {"gateway", "gateway.other"}
    # other -> room/__init__ -> front -> (inside a function) other.
    assert cycles(edges) == [["gateway.other", "gateway.room", "gateway.room.front"]]


def test_no_import_cycle():
    assert cycles(graph()) == [], "import cycles (each line: the modules of one cycle)"


def test_lower_packages_never_import_the_app_or_starlette():
    offenders = []
    for name, path in modules().items():
        if not name.startswith(LOWER):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):  # TYPE_CHECKING included: not even a type
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            forbidden = [t for t in targets if t.split(".")[0] in ("gateway", "starlette")]
            offenders += [f"{name} imports {t}" for t in forbidden]
    assert offenders == []
