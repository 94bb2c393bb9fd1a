"""deploy/examples/*.yaml: each loads as its kind's spec and names every knob of it.

A knob added to a spec without a line (and its comment) in the example fails here.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from vlmjobs.specs import load_spec, spec_class

EXAMPLES = Path(__file__).resolve().parents[1] / "deploy" / "examples"


def missing_keys(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of ``model``'s fields (nested specs included) that ``data`` lacks."""
    missing: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name  # infer's json_schema is written `schema`
        if not isinstance(data, dict) or key not in data:
            missing.append(prefix + key)
            continue
        nested = _nested_spec(field.annotation)
        if nested is not None and isinstance(data[key], dict):
            missing += missing_keys(nested, data[key], f"{prefix}{key}.")
        elif nested is not None:
            missing.append(f"{prefix}{key} (write it as a mapping, one knob a line)")
    return missing


def _nested_spec(annotation: Any) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


@pytest.fixture
def paths(tmp_path: Path) -> dict[str, Path]:
    """Stand-ins for the demo paths the examples name (specs check that paths exist)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "data.jsonl").write_text("")
    return {
        "model": tmp_path / "model",
        "images": tmp_path / "images",
        "file": tmp_path / "data.jsonl",
    }


def overrides(kind: str, p: dict[str, Path]) -> list[str]:
    return {
        "clean": [f"input={p['file']}"],
        "train": [f"model.path={p['model']}", f"data.path={p['file']}"],
        "infer": [f"model.path={p['model']}", f"inputs=[{p['images']}]"],
        "eval": [f"model.path={p['model']}", f"data={p['file']}"],
    }[kind]


@pytest.mark.parametrize("kind", ["clean", "train", "infer", "eval"])
def test_example_loads_and_names_every_knob(kind: str, paths: dict[str, Path]) -> None:
    path = EXAMPLES / f"{kind}.yaml"
    spec = load_spec(kind, path, overrides(kind, paths))
    assert spec.kind == kind
    data = {"kind": kind, **yaml.safe_load(path.read_text(encoding="utf-8"))}
    assert missing_keys(spec_class(kind), data) == [], f"{path.name} lacks these knobs"


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"kind": "x", "model": {"path": "m"}}, ["model.dtype"]),  # case: nested knob missing
        ({"kind": "x", "model": "m"}, ["model (write it as a mapping, one knob a line)"]),  # case
        ({"kind": "x", "model": {"path": "m", "dtype": "bf16"}}, []),  # case: complete
    ],
)
def test_missing_keys_walks_nested_specs(data: dict[str, Any], expected: list[str]) -> None:
    class Model(BaseModel):
        path: str
        dtype: str = "bf16"

    class Spec(BaseModel):
        kind: str
        model: Model

    assert missing_keys(Spec, data) == expected
