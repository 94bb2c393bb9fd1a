"""EvalSpec's cross-field checks: COCO-only knobs where they change nothing, and a task the
eval kind cannot run yet, are errors at submit time."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlmjobs.specs.eval import EvalSpec


@pytest.mark.parametrize(
    "fields, error",
    [
        pytest.param({"metric": "coco", "unmatched": "fp"}, None, id="fp-with-coco"),
        pytest.param({"unmatched": "fp"}, None, id="fp-metric-from-the-truth"),
        pytest.param(
            {"metric": "densecap", "unmatched": "fp"},
            "unmatched: fp applies to metric coco only, not densecap",
            id="fp-with-densecap",
        ),
        pytest.param(
            {"metric": "coco", "unmatched": "fp", "class_agnostic": True},
            "nothing is unmatched",
            id="fp-with-class-agnostic",
        ),
        pytest.param(
            {"task": "ground"}, "run one infer job per phrase", id="ground-needs-a-phrase-each"
        ),
        pytest.param(
            {"task": "custom"}, "set data to that clean job", id="custom-needs-a-manifest"
        ),
    ],
)
def test_coco_only_knobs(fields: dict, error: str | None, tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    truth.write_text("")
    base: dict = {"model": {"path": str(tmp_path)}, "data": str(truth)}
    if error is None:
        assert EvalSpec.model_validate(base | fields).unmatched == fields.get("unmatched")
        return
    with pytest.raises(ValidationError, match=error):
        EvalSpec.model_validate(base | fields)


def test_detect_asks_for_the_truths_categories(tmp_path: Path) -> None:
    """task detect over a COCO truth: infer is asked for the truth's category names."""
    from vlmjobs.eval.data import coco_truth
    from vlmjobs.recipes.eval.recipe import infer_spec
    from vlmjobs.vision.tasks import prompt_for

    truth_file = tmp_path / "instances.json"
    truth_file.write_text("{}")
    images = tmp_path / "images.txt"
    images.write_text("")
    spec = EvalSpec.model_validate(
        {"model": {"path": str(tmp_path)}, "data": str(truth_file), "task": "detect"}
    )
    truth = coco_truth(
        {
            "images": [],
            "annotations": [],
            "categories": [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}],
        }
    )
    infer = infer_spec(spec, images, None, truth)
    assert infer.task == "detect" and infer.labels == ["cat", "dog"]
    assert "cat or dog" in prompt_for("detect", labels=infer.labels)
