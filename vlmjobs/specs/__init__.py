"""Load a job spec: YAML file + ``--set a.b=value`` overrides -> the kind's pydantic model.

Every problem is collected and raised at once as ``errors.SpecError`` with
dotted field paths (``lora.r``), so a user fixes a spec in one round trip.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vlmjobs.errors import SpecError
from vlmjobs.kinds import KINDS, resolve
from vlmjobs.specs import safe_yaml
from vlmjobs.specs.common import JobSpec
from vlmjobs.specs.safe_yaml import clip

_plugins_loaded: set[str] = set()
MAX_KEY_PARTS = 16  # a --set key's dotted parts: specs nest a few levels
MAX_PROBLEMS = 50  # validation problems listed in one error


def load_plugins() -> None:
    """Import the modules named in ``VLMJOBS_PLUGINS`` (comma-separated); each may call
    ``kinds.register(Kind(...))``. The CLI and every worker do this, so both sides agree on
    the kinds (the test suite registers test-only kinds this way)."""
    for name in filter(None, (m.strip() for m in os.environ.get("VLMJOBS_PLUGINS", "").split(","))):
        if name not in _plugins_loaded:
            importlib.import_module(name)
            _plugins_loaded.add(name)


def spec_class(kind: str) -> type[JobSpec]:
    """The spec model of ``kind``; SpecError when the kind is unknown or not implemented yet."""
    load_plugins()
    if kind not in KINDS:
        raise SpecError([("kind", f"unknown job kind {kind!r}: choose one of {sorted(KINDS)}")])
    ref = KINDS[kind].spec
    try:
        cls = resolve(ref)
    except (ImportError, AttributeError) as e:
        raise SpecError(
            [("kind", f"job kind {kind!r} is not available: cannot import {ref} ({e})")]
        ) from e
    return cls  # type: ignore[no-any-return]


def _read_yaml(path: Path) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    if not path.is_file():
        return {}, [("<file>", f"spec file {clip(str(path))} does not exist: check the path")]
    try:
        data = safe_yaml.load(safe_yaml.read_text(path), str(path))
    except safe_yaml.YamlLimitError as e:
        return {}, [("<file>", str(e))]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = getattr(e, "problem", None) or str(e)
        return {}, [("<yaml>", f"invalid YAML in {path} at {where}: {clip(problem, 200)}")]
    if data is None:
        return {}, []
    if not isinstance(data, dict):
        return {}, [("<yaml>", f"{path} must hold a mapping of keys, not {type(data).__name__}")]
    return data, []


def apply_override(data: dict[str, Any], override: str) -> str | None:
    """Set ``a.b=value`` in ``data`` (value parsed as a YAML scalar); an error message or None."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    shown = clip(override)
    if not sep or not key or any(not part for part in key.split(".")):
        return f"--set {shown} must look like key.sub=value"
    parts = key.split(".")
    if len(parts) > MAX_KEY_PARTS:
        return f"--set {shown}: the key has {len(parts)} parts, more than {MAX_KEY_PARTS}"
    try:
        value = safe_yaml.load(raw, "the --set value") if raw.strip() else None
    except safe_yaml.YamlLimitError as e:
        return f"--set {shown}: {e}"
    except yaml.YAMLError as e:
        return f"--set {shown}: value is not valid YAML ({clip(str(e), 200)})"
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            return f"--set {shown}: {where} is a {type(child).__name__}, not a mapping"
        node = child
    node[parts[-1]] = value
    return None


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def validate_spec(
    kind: str, data: dict[str, Any], *, resolve_job_ref: Callable[..., Any] | None = None
) -> JobSpec:
    """Build the spec of ``kind`` from a mapping; SpecError with every problem at once.

    ``resolve_job_ref``: checks ``job:ID`` references (submit passes the database lookup
    of recipes/refs.py); without it a reference is only checked for its form.
    """
    cls = spec_class(kind)
    given = data.get("kind", kind)
    if given != kind:
        raise SpecError([("kind", f"the file says kind {given!r} but you submitted {kind!r}")])
    try:
        context = {"resolve_job_ref": resolve_job_ref} if resolve_job_ref else None
        return cls.model_validate({**data, "kind": kind}, context=context)
    except ValidationError as e:
        problems = [(_field_path(err["loc"]), _message(err)) for err in e.errors()]
        if len(problems) > MAX_PROBLEMS:  # a 10,000-item list of bad values: show a sample
            more = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], ("...", f"and {more} more problems")]
        raise SpecError(problems) from None


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key (check its spelling and nesting)"
    msg = str(err["msg"])
    if err["type"] == "value_error":  # our validators' own sentences, without pydantic's tag
        msg = msg.removeprefix("Value error, ")
    if err["type"] not in ("missing", "value_error") and "input" in err:
        msg += f" (got {clip(err['input'])})"
    return msg


def load_spec(
    kind: str,
    path: Path | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    resolve_job_ref: Callable[..., Any] | None = None,
) -> JobSpec:
    """The validated spec of ``kind`` from an optional YAML file and ``--set`` overrides.

    Raises SpecError listing every problem: YAML syntax (with line numbers), bad
    ``--set`` syntax, unknown keys, wrong types, missing paths (checked by the
    kind's validators), each with its dotted field path. The kind's preflight is
    separate (``kinds.preflight``): it needs a valid spec.
    """
    problems: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    if path is not None:
        data, problems = _read_yaml(Path(path))
    for override in overrides:
        err = apply_override(data, override)
        if err:
            problems.append((override.partition("=")[0] or "--set", err))
    if problems:
        raise SpecError(problems)
    return validate_spec(kind, data, resolve_job_ref=resolve_job_ref)
