"""EvalSpec's COCO-only knobs: a combination that would score nothing different is an error."""

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
    ],
)
def test_coco_only_knobs(fields: dict, error: str | None, tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    truth.write_text("")
    base: dict = {"model": {"path": str(tmp_path)}, "data": str(truth)}
    if error is None:
        assert EvalSpec.model_validate(base | fields).unmatched == "fp"
        return
    with pytest.raises(ValidationError, match=error):
        EvalSpec.model_validate(base | fields)
