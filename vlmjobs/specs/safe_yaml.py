"""YAML from users, with limits checked BEFORE anything is built.

A spec is a few kilobytes. Without limits, PyYAML and pydantic will happily take a
50 MB file into the job row, recurse 20,000 levels deep (RecursionError), or expand
a "billion laughs" of anchors into gigabytes of objects and error text. So, in order:
the size (before reading), the encoding (strict UTF-8), then one pass over PyYAML's
event stream (which builds nothing and does not recurse) that measures nesting depth
and the node count as if every alias were expanded; only then ``safe_load``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a spec file, or one --set value: 1 MiB
MAX_DEPTH = 64  # nested mappings/sequences, aliases included
MAX_NODES = 100_000  # scalars + collections once every alias is expanded
ECHO_CHARS = 80  # how much of a user's value an error message repeats


class YamlLimitError(ValueError):
    """The text is too big, too deep, too expanding or not UTF-8; the message says which."""


def clip(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length named."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def read_text(path: Path) -> str:
    """The file's text, refusing more than MAX_BYTES (checked before reading) and non-UTF-8."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YamlLimitError(
            f"{path} is {size:,} bytes, over the {MAX_BYTES:,}-byte limit for a spec: "
            "a spec holds settings; point it at data files instead of inlining them"
        )
    with open(path, "rb") as fh:
        raw = fh.read(MAX_BYTES + 1)  # the file may have grown since stat
    if len(raw) > MAX_BYTES:
        raise YamlLimitError(f"{path} is over the {MAX_BYTES:,}-byte limit for a spec")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise YamlLimitError(
            f"{path} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} "
            f"(line {line}); save the file as UTF-8"
        ) from None


def check(text: str, where: str) -> None:
    """Raise YamlLimitError if ``text`` nests deeper than MAX_DEPTH or expands (aliases
    counted in full) past MAX_NODES. YAML syntax errors are left to the loader."""
    if len(text) > MAX_BYTES:
        raise YamlLimitError(f"{where} is {len(text):,} characters, over {MAX_BYTES:,}")
    # Per open collection: [nodes inside so far, anchor, deepest level inside].
    stack: list[list[Any]] = []
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, depth)
    total = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            added: tuple[int, int] | None = None
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                stack.append([1, event.anchor, len(stack) + 1])
                if len(stack) > MAX_DEPTH:
                    raise YamlLimitError(
                        f"{where} nests deeper than {MAX_DEPTH} levels: flatten it"
                    )
                continue
            if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                nodes, anchor, deepest = stack.pop()
                depth = deepest - len(stack)
                if anchor:
                    sizes[anchor] = (nodes, depth)
                added = (nodes, depth)
            elif isinstance(event, yaml.ScalarEvent):
                added = (1, 0)
                if event.anchor:
                    sizes[event.anchor] = added
            elif isinstance(event, yaml.AliasEvent):
                added = sizes.get(event.anchor or "", (1, 0))  # unknown: the loader reports it
            if added is None:
                continue
            nodes, depth = added
            if stack:
                stack[-1][0] += nodes
                stack[-1][2] = max(stack[-1][2], len(stack) + depth)
                if len(stack) + depth > MAX_DEPTH:
                    raise YamlLimitError(
                        f"{where} nests deeper than {MAX_DEPTH} levels once its aliases "
                        "are expanded: flatten it"
                    )
                total_now = total + sum(frame[0] for frame in stack)
            else:
                total += nodes
                total_now = total
            if total_now > MAX_NODES:
                raise YamlLimitError(
                    f"{where} expands to more than {MAX_NODES:,} values (anchors and "
                    "aliases counted in full): a spec needs far fewer; remove the aliases"
                )
    except yaml.YAMLError:
        return  # the loader reports syntax errors with their line and column


def load(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` after ``check``: the parsed value, or YamlLimitError/YAMLError."""
    check(text, where)
    return yaml.safe_load(text)
