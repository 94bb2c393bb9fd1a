"""Spec loading: YAML + --set overrides -> a validated spec, or every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from vlmjobs.db.models import Job
from vlmjobs.db.session import session
from vlmjobs.errors import SpecError
from vlmjobs.specs import apply_override, load_spec


@pytest.fixture(autouse=True)
def _test_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setenv("VLMJOBS_PLUGINS", "vlmjobs_testkinds")


@pytest.mark.parametrize(
    ("override", "expected", "error"),
    [
        ("a=1", {"a": 1}, None),  # case: ints parse as YAML scalars
        ("a.b=x", {"a": {"b": "x"}}, None),  # case: dotted path creates the nesting
        ("a=[1, 2]", {"a": [1, 2]}, None),  # case: flow lists are YAML too
        ("a='8'", {"a": "8"}, None),  # case: quotes keep a string
        ("a=", {"a": None}, None),  # case: empty value is null
        ("a=1=2", {"a": "1=2"}, None),  # case: only the first = splits
        ("novalue", {}, "must look like key.sub=value"),  # case: no =
        ("a..b=1", {}, "must look like key.sub=value"),  # case: empty path part
        ("top.x=1", {"top": 3}, "top is a int, not a mapping"),  # case: scalar in the way
        ("a=[1", {}, "not valid YAML"),  # case: broken flow list
    ],
)
def test_apply_override(override: str, expected: dict, error: str | None) -> None:
    data: dict = {"top": 3} if override.startswith("top") else {}
    got = apply_override(data, override)
    if error is None:
        assert got is None and data == expected
    else:
        assert got is not None and error in got


def _problems(tmp_path: Path, text: str | None, overrides: list[str]) -> list[tuple[str, str]]:
    path = None
    if text is not None:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec("sleepy", path, overrides)
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "overrides", "paths", "needle"),
    [
        ("items: 3\nbogus: 1\n", [], ["bogus"], "unknown key"),  # case: unknown top key
        ("opts:\n  rr: 1\n", [], ["opts.rr"], "unknown key"),  # case: unknown nested key
        ("items: many\n", [], ["items"], "integer"),  # case: wrong type names the field
        ("items: [1\n", [], ["<yaml>"], "line 2"),  # case: YAML syntax error with line
        ("- 1\n- 2\n", [], ["<yaml>"], "mapping"),  # case: YAML that is not a mapping
        ("items: 1\n", ["opts.r=0"], ["opts.r"], "greater than"),  # case: --set checked too
        ("data_dir: /no/such/dir\n", [], ["data_dir"], "does not exist"),  # case: missing path
        ("kind: noop\n", [], ["kind"], "'noop'"),  # case: kind in file must match
        (  # case: every problem at once
            "items: x\nbogus: 1\nopts: {r: -1}\n",
            ["priority=99"],
            ["items", "bogus", "opts.r", "priority"],
            "",
        ),
    ],
)
def test_load_spec_reports_field_paths(
    tmp_path: Path, text: str, overrides: list[str], paths: list[str], needle: str
) -> None:
    problems = _problems(tmp_path, text, overrides)
    assert sorted(p for p, _ in problems) == sorted(paths)
    assert needle in " ".join(m for _, m in problems)


def test_missing_spec_file_and_unknown_kind(tmp_path: Path) -> None:
    assert load_spec("sleepy", None, []).items == 3  # no file: the defaults
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("sleepy", tmp_path / "nope.yaml", [])
    with pytest.raises(SpecError, match="unknown job kind 'nope'"):
        load_spec("nope", None, [])


def test_valid_spec_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(f"kind: sleepy\nitems: 2\ndata_dir: {tmp_path}\n")
    spec = load_spec("sleepy", path, ["opts.r=16", "name=hello"])
    assert (spec.items, spec.opts.r, spec.name, spec.data_dir) == (2, 16, "hello", str(tmp_path))


def _jobs() -> int:
    with session() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.parametrize(
    ("text", "args", "needle"),
    [
        ("items: [\n", [], "line 2"),  # case: invalid YAML
        ("itemz: 3\n", [], "itemz: unknown key"),  # case: unknown key
        ("items: lots\n", [], "items:"),  # case: wrong type
        ("data_dir: /no/such/images\n", [], "data_dir:"),  # case: missing path
        ("items: 1\n", ["--set", "opts.r=zero"], "opts.r:"),  # case: bad override
        ("items: 1\n", ["--priority", "12"], "priority:"),  # case: bad option
    ],
)
def test_cli_rejects_invalid_specs_with_exit_2(vlmjobs_cli, tmp_path, text, args, needle) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = _jobs()
    res = vlmjobs_cli("submit", "sleepy", str(path), *args)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output
    assert _jobs() == before  # nothing written


def test_cli_unknown_job_id_is_exit_2(vlmjobs_cli) -> None:
    for args in (["status", "999"], ["cancel", "999"], ["retry", "999"], ["logs", "999"]):
        res = vlmjobs_cli(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "no job" in res.stderr


def test_our_validators_speak_without_pydantics_tag(tmp_path: Path) -> None:
    """A validator's sentence is shown as written, not as 'Value error, ...'."""
    spec = tmp_path / "infer.yaml"
    spec.write_text(f"model: {{path: Qwen/x}}\ninputs: [{tmp_path}]\ntask: detect\n")
    with pytest.raises(SpecError) as caught:
        load_spec("infer", spec, [])
    messages = [message for _, message in caught.value.problems]
    assert messages == ["task 'detect' needs labels: the object names to find"]
