"""The eval job's ground truth from a clean job's split: clean's targets, written in the
model's resized frame, read back in original pixels, match make-shapes' exact truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlmjobs.dev.shapes import make_shapes
from vlmjobs.recipes.clean.recipe import clean
from vlmjobs.recipes.eval.recipe import _clean_split
from vlmjobs.specs.clean import CleanSpec
from vlmjobs.vision.regions import iou_matrix, same_phrase


def test_clean_split_is_truth_in_original_pixels(tmp_path: Path) -> None:
    make_shapes(tmp_path / "shapes", n=10, seed=1, duplicates=0.0)
    spec = CleanSpec(
        input=str(tmp_path / "shapes" / "regions.jsonl"),
        semantic=False,  # exact phrases only: no sentence model needed here
        split={"train": 0.5, "val": 0.0, "test": 0.5},
        min_pixels=3136,
        max_pixels=50176,  # a small frame: rounding to it moves boxes by ~2 px
    )
    assert clean(spec, tmp_path / "data", vectors=None) is not None
    truth, manifest = _clean_split(tmp_path / "data", "test")
    assert manifest.task == "dense_caption" and truth.kind == "regions" and len(truth.regions) == 5
    exact = {}
    for line in (tmp_path / "shapes" / "truth.jsonl").read_text().splitlines():
        row = json.loads(line)
        exact[str(tmp_path / "shapes" / row["image"])] = row
    for name, regions in truth.regions.items():
        want = exact[name]["regions"]
        boxes = np.array([r["bbox"] for r in want], dtype=float)
        iou = iou_matrix(regions.boxes, boxes)
        same = same_phrase(regions.phrases, [r["phrase"] for r in want])
        assert len(regions) == len(want) and (iou * same).max(axis=1).min() > 0.8, name
