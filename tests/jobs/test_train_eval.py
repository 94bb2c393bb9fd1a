"""Task metrics of the train job's evaluation, from answers already generated (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmjobs.recipes.train.data import Sample
from vlmjobs.recipes.train.eval import task_metrics
from vlmjobs.vision.manifest import Manifest

PIXELS = 112 * 56  # a 112x56 image keeps its size: input frame == original frame


def manifest(task: str) -> Manifest:
    return Manifest(base_model=None, min_pixels=PIXELS, max_pixels=PIXELS, task=task, prompt="p")


def regions(*items: tuple[list[int], str]) -> str:
    return json.dumps([{"bbox_2d": box, "label": label} for box, label in items])


GOLD = regions(([0, 0, 28, 28], "a red square"), ([56, 0, 112, 56], "a blue circle"))


@pytest.mark.parametrize(
    "answer, expected",
    [
        (GOLD, {"region_f1": 1.0, "parse_rate": 1.0}),  # case: perfect
        (
            regions(([0, 0, 28, 28], "red square")),
            {"region_precision": 1.0, "region_recall": 0.5, "parse_rate": 1.0},
        ),  # case: one of two found, article ignored
        (
            regions(([0, 0, 28, 28], "a blue circle")),
            {"region_precision": 0.0, "region_f1": 0.0},
        ),  # case: right box, wrong phrase
        ("no boxes here, sorry", {"region_f1": 0.0, "parse_rate": 0.0}),  # case: unparseable
    ],
)
def test_region_task_metrics(answer: str, expected: dict[str, float]) -> None:
    val = [Sample(Path("x.png"), "p", GOLD, None, (112, 56))]
    got = task_metrics(val, [answer], manifest("dense_caption"))
    assert {k: got[k] for k in expected} == pytest.approx(expected)


@pytest.mark.parametrize(
    "answer, expected",
    [
        (
            '{"total": 10, "name": "acme"}',
            {"json_edit_distance": 0.0, "json_field_accuracy": 1.0, "parse_rate": 1.0},
        ),  # case: same object, other key order and case
        ('{"total": 11, "name": "acme"}', {"json_field_accuracy": 0.5}),  # case: one field wrong
        ("total: ten", {"json_field_accuracy": 0.0, "parse_rate": 0.0}),  # case: not JSON
    ],
)
def test_json_task_metrics(answer: str, expected: dict[str, float]) -> None:
    val = [Sample(Path("x.png"), "p", '{"name": "acme", "total": 10}', None, (112, 56))]
    got = task_metrics(val, [answer], manifest("extract_json"))
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def test_text_task_counts_non_empty_answers() -> None:
    val = [Sample(Path("x.png"), "p", "a cat", None, (112, 56))] * 2
    assert task_metrics(val, ["a dog", "  "], manifest("caption")) == {"parse_rate": 0.5}
