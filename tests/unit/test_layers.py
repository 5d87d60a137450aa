"""The layers of docs/architecture.md hold in the code: a test that reads every import with `ast`.

Rules (checked on `bucketfs/`, every import counted: module level, inside functions, and under
`TYPE_CHECKING`):
- the folders are layers, top to bottom `app` > `fuse` > `core` > `cache` > `backends`, with the
  package's top modules (`errors`, `types`, `concurrency`, `__init__`) below them all; nothing
  imports a layer above its own (`__main__` counts as `app`);
- only `fuse/` imports pyfuse3, only `backends/` imports the HTTP stack (httpx2, httpcore2, h11,
  httptools, botocore), so `core/` imports neither;
- no import circle between modules;
- no module over `MAX_LINES` lines (one sitting).
Each rule is also run on a planted violation, so the test is known to be able to fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bucketfs"

#: rank of each layer: a module may import only modules of its own rank or lower
LAYERS = {"app": 5, "fuse": 4, "core": 3, "cache": 2, "backends": 1}
TOP_RANK = 0  # errors.py, types.py, concurrency.py, __init__.py
#: third-party packages that only one layer may import
ONLY_IN = {
    "pyfuse3": "fuse",
    "httpx2": "backends",
    "httpcore2": "backends",
    "httpx": "backends",
    "httpcore": "backends",
    "h11": "backends",
    "httptools": "backends",
    "botocore": "backends",
}
MAX_LINES = 650


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted name as imported (a module, or a package when a name is taken from it)
    line: int


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def imports(root: Path) -> Iterator[Import]:
    """Every import in the package, with relative imports resolved and `from pkg import mod`
    read as an import of the module `pkg.mod` when that is a module of the package."""
    known = modules(root)
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield Import(name, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    drop = node.level - 1 if is_package else node.level
                    base = base[: len(base) - drop] if drop else base
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    yield Import(name, full if full in known else source, node.lineno)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) >= 2 and parts[1] == "__main__":
        return "app"
    return None


def rank(module: str) -> int:
    layer = layer_of(module)
    return LAYERS[layer] if layer is not None else TOP_RANK


def violations(root: Path) -> list[str]:
    """What breaks the layering rules, one line each."""
    pkg = root.name
    problems: list[str] = []
    for imp in imports(root):
        top = imp.target.split(".")[0]
        where = f"{imp.importer}:{imp.line} imports {imp.target}"
        if top == pkg:
            if rank(imp.target) > rank(imp.importer):
                problems.append(f"{where}: upward ({layer_of(imp.target)} is above)")
        elif top in ONLY_IN and layer_of(imp.importer) != ONLY_IN[top]:
            problems.append(f"{where}: only {ONLY_IN[top]}/ may import {top}")
    return problems


def circles(root: Path) -> list[list[str]]:
    """The import circles between modules of the package (each found once)."""
    pkg = root.name
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for imp in imports(root):
        if imp.target.split(".")[0] == pkg and imp.target in graph and imp.target != imp.importer:
            graph[imp.importer].add(imp.target)
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    found.append(cycle)
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def too_long(root: Path) -> list[str]:
    out = []
    for name, path in modules(root).items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            out.append(f"{name}: {lines} lines")
    return out


# --- the package as it is ------------------------------------------------------------------------


def test_imports_point_down_and_third_party_stacks_stay_in_their_layer() -> None:
    assert violations(PACKAGE) == []


def test_no_import_circle() -> None:
    assert circles(PACKAGE) == []


def test_every_module_fits_in_one_sitting() -> None:
    assert too_long(PACKAGE) == []


def test_every_module_opens_with_what_it_owns() -> None:
    missing = [
        name
        for name, path in modules(PACKAGE).items()
        if ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert missing == []


def test_the_layers_are_the_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)
    loose = {p.stem for p in PACKAGE.glob("*.py")}
    assert loose == {"__init__", "__main__", "errors", "types", "concurrency"}


# --- planted violations: the checks can fail ----------------------------------------------------


def plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"core/a.py": "import pyfuse3\n"}, "only fuse/ may import pyfuse3"),
        ({"app/a.py": "from pyfuse3 import FUSEError\n"}, "only fuse/ may import pyfuse3"),
        ({"core/a.py": "import httpx2\n"}, "only backends/ may import httpx2"),
        ({"cache/a.py": "def f():\n    import h11\n"}, "only backends/ may import h11"),
        ({"core/a.py": "from pkg.fuse import ops\n", "fuse/ops.py": ""}, "upward (fuse"),
        ({"cache/a.py": "from ..core.fs import X\n", "core/fs.py": ""}, "upward (core"),
        (
            {
                "backends/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from pkg.cache import store\n",
                "cache/store.py": "",
            },
            "upward (cache",
        ),
        ({"errors.py": "from pkg.core import fs\n", "core/fs.py": ""}, "upward (core"),
    ],
)
def test_a_planted_violation_is_found(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    found = violations(plant(tmp_path, files))
    assert len(found) == 1
    assert expected in found[0]


def test_allowed_imports_are_not_reported(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "app/a.py": "import pkg.fuse.ops\nfrom pkg.core import fs\nfrom pkg import errors\n",
            "fuse/ops.py": "import pyfuse3\nfrom pkg.core.fs import X\n",
            "core/fs.py": "from pkg.cache import store\nfrom . import nodes\n",
            "core/nodes.py": "",
            "cache/store.py": "from pkg.backends.base import B\nfrom ..errors import E\n",
            "backends/base.py": "import httpx2\nimport botocore.auth\n",
            "errors.py": "",
        },
    )
    assert violations(root) == []
    assert circles(root) == []


def test_a_planted_circle_is_found(tmp_path: Path) -> None:
    root = plant(
        tmp_path,
        {
            "core/a.py": "from pkg.core import b\n",
            "core/b.py": "def f():\n    from pkg.core.c import x\n",
            "core/c.py": "from .a import y\n",
        },
    )
    assert circles(root) == [["pkg.core.a", "pkg.core.b", "pkg.core.c", "pkg.core.a"]]


def test_a_planted_long_module_is_found(tmp_path: Path) -> None:
    root = plant(tmp_path, {"core/a.py": "x = 1\n" * (MAX_LINES + 1), "core/b.py": "y = 1\n"})
    assert too_long(root) == [f"pkg.core.a: {MAX_LINES + 1} lines"]
