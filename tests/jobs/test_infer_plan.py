"""Infer setup: adapter by train job id, the adapter's manifest honoured unless the spec says
otherwise, the JSON-schema subset, de-duplication keeping the best-scored repeat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmjobs.errors import ModelLoadError
from vlmjobs.recipes.infer.plan import make_plan, resolve_adapter, schema_errors
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.manifest import Manifest
from vlmjobs.vision.regions import Regions
from vlmjobs.vision.tasks import DENSE_CAPTION_PROMPT, prompt_for


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """An adapter dir whose manifest says: 100k..400k pixels, Qwen2-VL 0-1000 boxes, a prompt."""
    path = tmp_path / "adapter"
    Manifest(
        base_model="m",
        min_pixels=100_352,
        max_pixels=401_408,
        convention="qwen2-vl-1000",
        task="dense_caption",
        prompt="List every object with its box.",
        system="You label shelves.",
    ).write(path)
    return path


def base_model(tmp_path: Path, model_type: str = "qwen2_5_vl") -> str:
    """A checkpoint dir as far as the plan reads one: config.json's model_type."""
    path = tmp_path / f"base-{model_type}"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(path)


def spec_with(tmp_path: Path, **fields: object) -> InferSpec:
    model = fields.pop("model", {"path": base_model(tmp_path)})
    return InferSpec.model_validate({"model": model, "inputs": [str(tmp_path)], **fields})


def test_manifest_settings_apply(tmp_path: Path, adapter: Path) -> None:
    model = {"path": base_model(tmp_path), "adapter": str(adapter)}
    plan = make_plan(spec_with(tmp_path, model=model))
    assert (plan.min_pixels, plan.max_pixels) == (100_352, 401_408)
    assert plan.prompt == "List every object with its box."
    assert (plan.system, plan.convention, plan.parser) == ("You label shelves.", "1000", "regions")


def test_spec_fields_override_the_manifest(tmp_path: Path, adapter: Path) -> None:
    model = {"path": base_model(tmp_path), "adapter": str(adapter), "max_pixels": 802_816}
    spec = spec_with(tmp_path, model=model, min_pixels=50_176, system="S", prompt="P")
    plan = make_plan(spec)
    assert (plan.min_pixels, plan.max_pixels) == (50_176, 802_816)
    assert (plan.prompt, plan.system) == ("P", "S")
    other = make_plan(spec_with(tmp_path, model=model, task="detect", labels=["can"]))
    assert other.prompt == prompt_for("detect", labels=["can"])  # manifest prompt is another task's


def test_no_adapter_uses_defaults(tmp_path: Path) -> None:
    plan = make_plan(spec_with(tmp_path))
    assert (plan.prompt, plan.system, plan.convention) == (DENSE_CAPTION_PROMPT, None, "absolute")
    assert (plan.min_pixels, plan.max_pixels) == (256 * 784, 1280 * 784)


def test_the_base_model_family_decides_without_an_adapter(tmp_path: Path) -> None:
    plan = make_plan(spec_with(tmp_path, model={"path": base_model(tmp_path, "qwen3_vl")}))
    assert (plan.family.name, plan.convention) == ("qwen3_vl", "1000")
    assert plan.input_size((1000, 500)) == (992, 512)  # multiples of 32 (28 would be 1008x504)


def test_an_adapter_of_another_family_is_refused(tmp_path: Path, adapter: Path) -> None:
    model = {"path": base_model(tmp_path, "qwen3_vl"), "adapter": str(adapter)}
    with pytest.raises(ModelLoadError, match="trained on a 'qwen2_5_vl' model.*Qwen3-VL"):
        make_plan(spec_with(tmp_path, model=model))


@pytest.fixture
def jobs_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Train jobs in a fresh SQLite database: one succeeded, one running; and a clean job."""
    from vlmjobs.db.models import Job
    from vlmjobs.db.session import session

    monkeypatch.setenv("VLMJOBS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLMJOBS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("VLMJOBS_DB_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    rows = {
        "done": Job(kind="train", spec={}, state="succeeded", queue="gpu",
                    result={"adapter": "jobs/1/adapter"}),
        "running": Job(kind="train", spec={}, state="running", queue="gpu"),
        "clean": Job(kind="clean", spec={}, state="succeeded", queue="cpu", result={}),
    }  # fmt: skip
    with session() as s:
        s.add_all(rows.values())
        s.flush()
        return {name: job.id for name, job in rows.items()}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("done", "{artifacts}/jobs/1/adapter"),  # case: relative to the artifact root
        ("running", "has no adapter yet"),  # case: not finished
        ("clean", "a clean job"),  # case: wrong kind
        ("missing", "no such job"),  # case: unknown id
    ],
)
def test_resolve_adapter_by_job(tmp_path: Path, jobs_db: dict, ref: str, expected: str) -> None:
    job_ref = f"job:{jobs_db.get(ref, 999)}"
    if expected.startswith("{"):
        assert resolve_adapter(job_ref) == expected.format(artifacts=tmp_path / "artifacts")
    else:
        with pytest.raises(ModelLoadError, match=expected):
            resolve_adapter(job_ref)


SCHEMA = {
    "type": "object",
    "required": ["name", "items"],
    "properties": {
        "name": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["price"],
                "properties": {"price": {"type": "number"}},
            },
        },  # fmt: skip
        "kind": {"enum": ["a", "b"]},
    },
}


@pytest.mark.parametrize(
    ("value", "errors"),
    [
        ({"name": "x", "items": [{"price": 1.5}]}, []),  # case: conforms
        ({"name": "x"}, ["$: 'items' is a required property"]),  # case: required key
        ({"name": 3, "items": []}, ["$.name: 3 is not of type 'string'"]),  # case: wrong type
        (
            {"name": "x", "items": [{"price": True}]},
            ["$.items[0].price: True is not of type 'number'"],
        ),
        ({"name": "x", "items": [], "kind": "c"}, ["$.kind: 'c' is not one of ['a', 'b']"]),
        ([1, 2], ["$: [1, 2] is not of type 'object'"]),  # case: not an object
        (
            {"name": 1, "items": [{"price": "x"}]},
            ["$.items[0].price: 'x' is not of type 'number'", "$.name: 1 is not of type 'string'"],
        ),  # case: several errors, in path order
    ],
)
def test_schema_errors(value: object, errors: list[str]) -> None:
    assert schema_errors(value, SCHEMA) == errors


def test_dedup_keeps_the_best_scored_repeat(tmp_path: Path) -> None:
    plan = make_plan(spec_with(tmp_path))
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], dtype=float)
    regions = Regions(boxes, ["a cat", "A cat.", "a cat"])
    kept = plan.dedup(regions, [0.5, 0.9, None])
    assert [(b[3], p, s) for b, p, s in kept] == [(11.0, "A cat.", 0.9), (60.0, "a cat", None)]
    off = make_plan(spec_with(tmp_path, dedup={"enabled": False}))
    assert len(off.dedup(regions, [0.5, 0.9, None])) == 3


@pytest.mark.slow  # loads all-MiniLM-L6-v2 (sentence-transformers import: seconds)
def test_dedup_by_phrase_embedding(tmp_path: Path) -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    regions = Regions(boxes, ["a red car", "red automobile", "a green apple"])
    dedup = {"phrase_similarity": "embedding", "phrase_threshold": 0.7}
    plan = make_plan(spec_with(tmp_path, dedup=dedup))
    kept = plan.dedup(regions, [0.9, 0.8, 0.7])
    assert [p for _, p, _ in kept] == ["a red car", "a green apple"]
    exact = make_plan(spec_with(tmp_path, dedup={"phrase_threshold": 0.7}))
    assert len(exact.dedup(regions, [0.9, 0.8, 0.7])) == 3  # exact match misses the synonym


def test_a_broken_schema_is_refused_at_submit(tmp_path: Path) -> None:
    """A schema jsonschema cannot use is a spec error naming where, not a failed job later."""
    from pydantic import ValidationError

    from vlmjobs.specs.infer import InferSpec

    spec = {"model": {"path": "Qwen/x"}, "inputs": [str(tmp_path)], "task": "extract_json"}
    with pytest.raises(ValidationError, match="schema is not a valid JSON Schema at type"):
        InferSpec.model_validate(spec | {"schema": {"type": "strin"}})
    assert InferSpec.model_validate(spec | {"schema": SCHEMA}).json_schema == SCHEMA
