"""Task metrics of the train job's evaluation, from answers already generated (no model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmjobs.eval.data import Truth, predictions_from_outputs
from vlmjobs.eval.score import score
from vlmjobs.eval.tasks import text_metrics
from vlmjobs.recipes.train.data import Sample
from vlmjobs.recipes.train.eval import task_metrics
from vlmjobs.vision.manifest import Manifest
from vlmjobs.vision.parse import parse_regions

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


def test_text_task_scores_like_the_eval_kind() -> None:
    """Free text: non-empty answers, and the eval kind's edit distance / exact match."""
    val = [Sample(Path("x.png"), "p", "a cat", None, (112, 56))] * 3
    answers = ["a dog", "  ", "a  cat"]
    got = task_metrics(val, answers, manifest("caption"))
    # "a dog" is 3 edits from "a cat" (3/5); "" is all 5 (1.0); "a cat" after collapsing: 0.
    assert got == pytest.approx(
        {"parse_rate": 2 / 3, "edit_distance": (0.6 + 1.0 + 0.0) / 3, "exact_match": 1 / 3}
    )
    assert (
        got["edit_distance"]
        == text_metrics(zip(answers, ["a cat"] * 3, strict=True))["edit_distance"]
    )


def one_hot(phrases: list[str]) -> dict[str, np.ndarray]:
    """Phrase vectors for DenseCap's similarity without a sentence model: equal or not."""
    return {p: np.eye(len(phrases))[i] for i, p in enumerate(phrases)}


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param([GOLD, GOLD], id="perfect"),
        pytest.param([regions(([0, 0, 28, 28], "red square")), GOLD], id="one-missed"),
        pytest.param(
            [regions(([0, 0, 28, 28], "a blue circle"), ([60, 2, 112, 56], "a blue circle")), "?"],
            id="wrong-phrase-shifted-box-unparseable",
        ),
    ],
)
def test_train_region_f1_is_the_eval_kinds(answers: list[str]) -> None:
    """Train's periodic eval and `vlmjobs eval` / the eval kind give one region_f1 for the
    same answers: both call vlmjobs.eval.tasks.region_f1_metrics."""
    val = [Sample(Path(f"{i}.png"), "p", GOLD, None, (112, 56)) for i in range(2)]
    train = task_metrics(val, answers, manifest("dense_caption"))
    gold = parse_regions(GOLD, input_size=(112, 56), image_size=(112, 56)).regions
    truth = Truth("regions", regions={f"{i}.png": gold for i in range(2)})
    outputs = [
        {
            "source": f"/data/{i}.png",
            "regions": parse_regions(
                a, input_size=(112, 56), image_size=(112, 56)
            ).regions.to_json(),
        }
        for i, a in enumerate(answers)
    ]
    ranked, _ = score(truth, predictions_from_outputs(outputs, "p"), "densecap", embed=one_hot)
    for key in ("region_precision", "region_recall", "region_f1"):
        assert ranked.metrics[key] == pytest.approx(train[key]), key
