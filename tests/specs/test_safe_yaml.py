"""safe_yaml: size, encoding, depth and alias-expansion limits, checked before building."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from vlmjobs.specs.safe_yaml import MAX_BYTES, YamlLimitError, check, clip, load, read_text


def laughs(levels: int, width: int = 9) -> str:
    """The "billion laughs": each anchor is a list of ``width`` aliases of the previous."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("name: x\nitems: 3\n", None),  # case: an ordinary spec
        ("x: " + nested(60) + "\n", None),  # case: deep but under the limit
        ("x: " + nested(20_000) + "\n", "nests deeper than 64"),  # case: RecursionError bait
        ("x: " + "{a: " * 100 + "1" + "}" * 100 + "\n", "nests deeper"),  # case: deep mappings
        (laughs(4), None),  # case: 9^4 expanded values is fine
        (laughs(8), "expands to more than 100,000"),  # case: 9^8, stopped early
        (  # case: an alias of a deep anchor nests past the limit once expanded
            "a: &d " + nested(40) + "\nb: " + nested(40, "*d") + "\n",
            "once its aliases are expanded",
        ),
        ("x: [1\n", None),  # case: a syntax error is left to the loader's message
    ],
)
def test_check(text: str, error: str | None) -> None:
    started = time.perf_counter()
    if error is None:
        check(text, "spec")
    else:
        with pytest.raises(YamlLimitError, match=error):
            check(text, "spec")
    assert time.perf_counter() - started < 5  # bounded work, whatever the input


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"items: 3\n", None),  # case: UTF-8
        (b"items: 3\nname: caf\xe9\n", "byte 0xe9 at offset 18 \\(line 2\\)"),  # case: Latin-1
        (b"#" * (MAX_BYTES + 1), "over the 1,048,576-byte limit"),  # case: too big
    ],
)
def test_read_text(tmp_path: Path, content: bytes, error: str | None) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    if error is None:
        assert read_text(path) == content.decode()
    else:
        with pytest.raises(YamlLimitError, match=error):
            read_text(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("short", "'short'"),  # case: kept whole
        ("x" * 200, "'" + "x" * 79 + "... (202 characters)"),  # case: cut, length named
    ],
)
def test_clip(value: str, expected: str) -> None:
    assert clip(value) == expected


def test_load_parses_after_the_check() -> None:
    assert load("a: &x [1, 2]\nb: *x\n", "spec") == {"a": [1, 2], "b": [1, 2]}
    with pytest.raises(yaml.YAMLError):
        load("a: [1\n", "spec")
