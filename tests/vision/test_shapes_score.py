"""Scoring an infer job's outputs against make-shapes truth: the demo's one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmjobs.dev.shapes_score import matched_ious, score_outputs


@pytest.mark.parametrize(
    "pred, gold, ious",
    [
        pytest.param([[0, 0, 10, 10]], [[0, 0, 10, 10]], [1.0], id="exact"),
        pytest.param([[0, 0, 10, 10]], [[5, 0, 15, 10]], [1 / 3], id="half-shifted"),
        pytest.param([[0, 0, 10, 10]], [[20, 20, 30, 30]], [], id="disjoint-not-matched"),
        pytest.param([[0, 0, 10, 10], [1, 0, 11, 10]], [[0, 0, 10, 10]], [1.0], id="one-to-one"),
        pytest.param(np.zeros((0, 4)), [[0, 0, 10, 10]], [], id="no-predictions"),
    ],
)
def test_matched_ious(pred: list, gold: list, ious: list) -> None:
    assert matched_ious(np.array(pred, float), np.array(gold, float)) == pytest.approx(ious)


def test_score_outputs_line(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    rows = [
        {"image": "images/a.png", "regions": [{"bbox": [0, 0, 10, 10], "phrase": "a red star"}]},
        {"image": "images/b.png", "regions": [{"bbox": [0, 0, 10, 10], "phrase": "a blue star"}]},
    ]
    truth.write_text("".join(json.dumps(r) + "\n" for r in rows))
    region = {"bbox": [0, 0, 10, 5], "phrase": "a red star", "score": 0.9}
    outputs = [
        {"source": str(tmp_path / "images/a.png"), "status": "ok", "parse_status": "ok",
         "regions": [{**region, "bbox": [0, 0, 10, 10]}]},
        {"source": str(tmp_path / "images/b.png"), "status": "ok", "parse_status": "repaired",
         "regions": [region]},  # wrong phrase, IoU 0.5
        {"source": str(tmp_path / "other.png"), "status": "ok", "parse_status": "ok",
         "regions": []},  # not in the truth: ignored
    ]  # fmt: skip
    score = score_outputs(outputs, truth)
    assert score.line() == "held-out shapes: parse ok 50.0%, mean IoU 0.75, F1 0.50"
    with pytest.raises(ValueError, match="no output of the job is an image of"):
        score_outputs(outputs[2:], truth)
