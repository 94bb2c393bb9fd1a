"""ARCHITECTURE.md keeps up with the code: every module listed, the lifecycle table current.

A newcomer reads ARCHITECTURE.md first; a module it does not mention, or a state table
that no longer matches ``db/lifecycle.py``, sends them the wrong way. Both are read from
the source with ``ast`` (nothing is imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "ARCHITECTURE.md"


def module_paths() -> list[str]:
    """Every module of the package, relative to vlmjobs/ (migrations are data, not code)."""
    package = ROOT / "vlmjobs"
    return sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if "migrations" not in p.parts and p.name != "__init__.py"
    )


def test_every_module_has_its_line() -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [m for m in module_paths() if f"`{m}`" not in text]
    hint = "add a line `path`: role"
    assert not missing, f"ARCHITECTURE.md's module list lacks ({hint}): {', '.join(missing)}"


def test_every_module_says_what_it_is_for() -> None:
    package = ROOT / "vlmjobs"
    bare = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if "migrations" not in p.parts and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not bare, f"modules without a docstring: {bare}"


def test_lifecycle_table_matches_the_module() -> None:
    source = (ROOT / "vlmjobs" / "db" / "lifecycle.py").read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    table = [line for line in docstring.splitlines() if line.startswith("|")]
    assert len(table) > 5, "db/lifecycle.py's docstring lost its state table"
    doc_lines = DOC.read_text(encoding="utf-8").splitlines()
    start = doc_lines.index(table[0])
    assert doc_lines[start : start + len(table)] == table, (
        "ARCHITECTURE.md's state table differs from db/lifecycle.py's docstring: copy it over"
    )
