"""The vlmjobs import graph: no cycles between modules, and layers only point down.

Read with ``ast`` from the source (nothing is imported), counting module-level
imports only: an import inside a function runs when called, which is how a layer
reaches up on purpose (the CLI's lazy imports) without a cycle at import time.
``if TYPE_CHECKING:`` blocks are skipped too. The stdlib suffices here: the
whole check is ~60 lines, and grimp/import-linter would add a dependency (and a
config format) for the same two rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vlmjobs"

# Layers a job runs on: none of them imports the CLI, the services, the dashboard or the
# dev fixtures at module level.
LOWER = ("specs", "vision", "eval", "db", "recipes")
# (importer package, imported package): never allowed at module level.
FORBIDDEN = [
    *((low, high) for low in LOWER for high in ("cli", "worker", "scheduler", "dashboard", "dev")),
    ("db", "recipes"),
    ("specs", "recipes"),  # specs are pure data: no recipe, no data read
    ("specs", "db"),  # ... and no database query
    ("vision", "recipes"),  # the model layer knows no job kind
    ("eval", "recipes"),
    ("kinds", "*"),  # the registry is a leaf: strings only
    ("errors", "*"),
    ("settings", "*"),
]

# Cycles not fixed yet: a cycle wholly inside one of these packages is tolerated, with
# why; any other cycle fails the test. None today (the cli's went with cli/app.py).
KNOWN_CYCLES: dict[str, str] = {}


def known(cycle: frozenset[str]) -> bool:
    return any(all(m.startswith(prefix) for m in cycle) for prefix in KNOWN_CYCLES)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    return {m: p for m, p in found.items() if ".migrations." not in m}


def _top_level(tree: ast.Module) -> list[ast.stmt]:
    """Statements run at import: the body, into if/try blocks, but not TYPE_CHECKING."""
    out: list[ast.stmt] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try)):
            todo.extend([*node.body, *node.orelse, *getattr(node, "finalbody", [])])
            todo.extend(s for h in getattr(node, "handlers", []) for s in h.body)
        else:
            out.append(node)
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The vlmjobs modules ``name`` imports at module level."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _top_level(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = {stack.pop()}
            while v not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_import_cycles() -> None:
    new = [sorted(c) for c in cycles(graph()) if not known(c)]
    assert not new, f"import cycles (move the shared code down a layer): {new}"


def test_layers_point_down() -> None:
    bad = sorted(
        f"{a} imports {b}"
        for a, targets in graph().items()
        for b in targets
        for low, high in FORBIDDEN
        if layer(a) == low and (high == "*" or layer(b) == high)
    )
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": set()}, []),  # case: a chain
        ({"a": {"b"}, "b": {"a"}}, [{"a", "b"}]),  # case: two modules
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [{"a", "b", "c"}]),  # case: a ring
    ],
)
def test_cycles_finds_them(edges: dict[str, set[str]], expected: list[set[str]]) -> None:
    assert [set(c) for c in cycles(edges)] == expected


def test_graph_reads_the_real_imports() -> None:
    edges = graph()
    assert "vlmjobs.specs.common" in edges["vlmjobs.specs.train"]
    # from pkg import module
    assert "vlmjobs.recipes.train.checkpoints" in edges["vlmjobs.recipes.train.recipe"]
    assert "vlmjobs.kinds" in edges["vlmjobs.specs"]  # from a.b import c, c not a module


def test_known_cycles_only_inside_their_package() -> None:
    KNOWN_CYCLES["vlmjobs.cli."] = "a prefix, for this test only"
    try:
        assert known(frozenset({"vlmjobs.cli.main", "vlmjobs.cli.jobs"}))
        assert not known(frozenset({"vlmjobs.cli.main", "vlmjobs.specs"}))
    finally:
        del KNOWN_CYCLES["vlmjobs.cli."]


def test_loading_a_train_spec_imports_no_recipe_nor_torch(tmp_path: Path) -> None:
    """Specs are data: validating one (submit, and the worker before each attempt) reads
    no data set and imports neither the recipe nor torch; the kind's preflight does that."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # looks local: no preflight skip
    (tmp_path / "data.jsonl").write_text("not json: reading it would fail\n")
    code = (
        "import sys\n"
        "from vlmjobs.specs import load_spec\n"
        f"load_spec('train', None, ['model.path={tmp_path / 'model'}', "
        f"'data.path={tmp_path / 'data.jsonl'}'])\n"
        "heavy = ('torch', 'peft', 'vlmjobs.recipes.train.recipe')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
