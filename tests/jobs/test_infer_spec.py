"""InferSpec validation at submit time: every bad value names itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlmjobs.specs.infer import InferSpec


@pytest.fixture
def folder(tmp_path: Path) -> str:
    (tmp_path / "imgs").mkdir()
    return str(tmp_path / "imgs")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({}, None),  # case: minimal spec
        ({"task": "detect", "labels": ["cat"]}, None),  # case: detect with labels
        ({"task": "detect"}, "needs labels"),  # case: detect without labels
        ({"task": "ground"}, "needs phrase"),  # case: ground without phrase
        ({"task": "ground", "prompt": "find it"}, None),  # case: a prompt stands in
        ({"task": "custom"}, "needs prompt"),  # case: custom without prompt
        ({"task": "extract_json", "schema": {"type": "object"}}, None),  # case: schema
        ({"schema": {"type": "object"}}, "only read by the json parser"),  # case: schema misplaced
        ({"inputs": ["/no/such/dir"]}, "do not exist"),  # case: missing input
        ({"inputs": []}, "at least 1 item"),  # case: no inputs
        ({"batch_size": 0}, "greater than or equal to 1"),  # case: batch size
        ({"min_pixels": 10}, "greater than or equal to 784"),  # case: below one patch
        ({"min_pixels": 200_000, "max_pixels": 100_000}, "min_pixels 200000 > max_pixels"),  # case
        ({"model": {"path": "m", "adapter": "/no/adapter"}}, "adapter directory"),  # case: path
        ({"model": {"path": "m", "adapter": "job:12"}}, None),  # case: a train job's adapter
        ({"engine": "fast"}, "'auto', 'hf' or 'static'"),  # case: unknown engine
        ({"dedup": {"iou_threshold": 0}}, "greater than 0"),  # case: dedup threshold
        ({"bogus": 1}, "Extra inputs are not permitted"),  # case: typo in a key
    ],
)
def test_infer_spec_validation(folder: str, fields: dict, error: str | None) -> None:
    data = {"model": {"path": "m"}, "inputs": [folder], **fields}
    if error is None:
        spec = InferSpec.model_validate(data)
        assert InferSpec.model_validate(spec.model_dump(mode="json")) == spec  # stored and re-read
    else:
        with pytest.raises(ValidationError, match=error.replace("(", r"\(").replace("+", r"\+")):
            InferSpec.model_validate(data)
