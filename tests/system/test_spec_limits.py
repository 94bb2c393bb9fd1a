"""Hostile spec files and --set values through `vlmjobs submit`: exit 2, a reason, fast,
bounded output, nothing stored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from vlmjobs.db.models import Job
from vlmjobs.db.session import session

LAUGHS = "\n".join(
    ['a0: &a0 "lol"']
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["name: *a8"]
).encode()
DEEP = "[" * 20_000 + "]" * 20_000


def _jobs() -> int:
    with session() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        (b"items: 3\nname: caf\xe9\n", [], "is not UTF-8 text: byte 0xe9"),  # case: Latin-1 byte
        (b"name: " + DEEP.encode(), [], "nests deeper than 64"),  # case: 20,000 deep
        (LAUGHS, [], "expands to more than 100,000"),  # case: 9^8 alias expansion
        (b"# pad\n" * 200_000, [], "over the 1,048,576-byte limit"),  # case: 1.2 MB file
        (b"items: 1\n", ["--set", f"name={DEEP}"], "nests deeper than 64"),  # case: deep --set
        (b"items: 1\n", ["--set", "a" + ".a" * 20 + "=1"], "more than 16"),  # case: long key
        (  # case: a 100,000-character bad value is echoed cut short
            b"items: '" + b"9x" * 50_000 + b"'\n",
            [],
            "... (100002 characters)",
        ),
        (  # case: a 5,001-item list where a number belongs: one short problem
            b"name: ok\nitems: [" + b"x, " * 5_000 + b"x]\n",
            [],
            "items:",
        ),
    ],
)
def test_hostile_specs_exit_2_with_a_short_reason(
    vlmjobs_cli, tmp_path: Path, content: bytes, args: list[str], needle: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    before = _jobs()
    started = time.perf_counter()
    res = vlmjobs_cli("submit", "sleepy", str(path), *args)
    assert time.perf_counter() - started < 15
    assert res.exit_code == 2, res.output
    assert needle in res.stderr, res.stderr[:500]
    assert len(res.stderr) < 5_000  # the reason, not the input
    assert "Traceback" not in res.output
    assert _jobs() == before
