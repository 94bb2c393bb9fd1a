"""Image matching by file name, grounding accuracy, JSON and text scores: tables."""

from __future__ import annotations

import numpy as np
import pytest

from vlmjobs.eval.images import match_images
from vlmjobs.eval.tasks import grounding_metrics, json_metrics, text_metrics
from vlmjobs.vision.regions import Regions


@pytest.mark.parametrize(
    "preds, gt, pairs, unmatched_pred, ambiguous",
    [
        pytest.param(
            ["/d/img/a.png"],
            ["img/a.png"],
            {"/d/img/a.png": "img/a.png"},
            [],
            [],
            id="relative-tail",
        ),
        pytest.param(
            ["/d/x.tar!img/a.png"],
            ["img/a.png"],
            {"/d/x.tar!img/a.png": "img/a.png"},
            [],
            [],
            id="archive-member",
        ),
        pytest.param(
            ["/other/a.png"], ["img/a.png"], {"/other/a.png": "img/a.png"}, [], [], id="basename"
        ),
        pytest.param(
            ["/d/t/a.png"],
            ["t/a.png", "v/a.png"],
            {"/d/t/a.png": "t/a.png"},
            [],
            [],
            id="longest-tail-wins",
        ),
        pytest.param(
            ["/d/x/a.png"], ["t/a.png", "v/a.png"], {}, [], ["/d/x/a.png"], id="ambiguous-basename"
        ),
        pytest.param(["/d/c.png"], ["a.png"], {}, ["/d/c.png"], [], id="no-such-image"),
        pytest.param(
            ["/1/a.png", "/2/a.png"],
            ["a.png"],
            {"/1/a.png": "a.png"},
            ["/2/a.png"],
            [],
            id="second-copy",
        ),
        pytest.param(
            ["C:\\data\\a.png"], ["a.png"], {"C:\\data\\a.png": "a.png"}, [], [], id="windows-path"
        ),
    ],
)
def test_match_images(
    preds: list, gt: list, pairs: dict, unmatched_pred: list, ambiguous: list
) -> None:
    got = match_images(preds, gt)
    assert (got.pairs, got.unmatched_pred, got.ambiguous) == (pairs, unmatched_pred, ambiguous)
    assert got.unmatched_gt == [g for g in gt if g not in pairs.values()]


def test_match_summary_names_the_misses() -> None:
    text = match_images(["/d/a.png", "/d/zz.png"], ["a.png", "b.png"]).summary()
    assert "1 prediction(s) matched 1 of 2" in text and "/d/zz.png" in text and "b.png" in text


def regions(rows: list) -> Regions:
    boxes = np.array([b for b, *_ in rows], float).reshape(-1, 4)
    scores = np.array([r[2] if len(r) > 2 else 1.0 for r in rows])
    return Regions(boxes, [r[1] for r in rows], scores)


A, B = [0, 0, 10, 10], [20, 0, 30, 10]


@pytest.mark.parametrize(
    "pred, gold, want",
    [
        pytest.param([(A, "dog")], [(A, "the dog")], 1.0, id="hit"),
        pytest.param([([5, 0, 15, 10], "dog")], [(A, "dog")], 0.0, id="iou-1/3-misses"),
        pytest.param([(B, "whatever")], [(B, "dog")], 1.0, id="single-query-any-phrase"),
        pytest.param(
            [(B, "dog", 0.9), (A, "cat", 0.8)], [(A, "dog"), (B, "cat")], 0.0, id="swapped"
        ),
        pytest.param(
            [(B, "dog", 0.2), (A, "dog", 0.9)], [(A, "dog"), (B, "cat")], 0.5, id="best-scored-box"
        ),
        pytest.param(None, [(A, "dog")], 0.0, id="no-prediction"),
    ],
)
def test_grounding(pred: list | None, gold: list, want: float) -> None:
    got = grounding_metrics([(None if pred is None else regions(pred), regions(gold))])
    assert got["acc@0.5"] == pytest.approx(want)


@pytest.mark.parametrize(
    "answer, target, want",
    [
        pytest.param(
            '{"a": 1, "b": "X"}', '{"b": "x", "a": 1}', (1.0, 0.0, 1.0), id="fields-right-not-exact"
        ),
        pytest.param('```json\n{"a": 1}\n```', '{"a": 1}', (1.0, 1.0, 1.0), id="fenced-exact"),
        pytest.param('{"a": 2, "b": "x"}', '{"a": 1, "b": "x"}', (0.5, 0.0, 1.0), id="half"),
        pytest.param("nope", '{"a": 1}', (0.0, 0.0, 0.0), id="unparseable"),
        pytest.param(None, '{"a": 1}', (0.0, 0.0, 0.0), id="missing"),
    ],
)
def test_json_metrics(answer: str | None, target: str, want: tuple) -> None:
    got = json_metrics([(answer, target)])
    assert (got["field_accuracy"], got["exact_match"], got["parse_rate"]) == pytest.approx(want)


def test_json_metrics_reject_a_text_target() -> None:
    with pytest.raises(ValueError, match="use --metric text"):
        json_metrics([("x", "plain words")])


@pytest.mark.parametrize(
    "answer, target, distance, exact",
    [
        pytest.param("a  cat\n", "a cat", 0.0, 1.0, id="whitespace"),
        pytest.param("kitten", "sitting", 3 / 7, 0.0, id="textbook"),
        pytest.param(None, "x", 1.0, 0.0, id="missing"),
        pytest.param("x" * 2400, "y" * 2400, 1.0, 0.0, id="long-pair-fast"),
    ],
)
def test_text_metrics(answer: str | None, target: str, distance: float, exact: float) -> None:
    got = text_metrics([(answer, target)])
    assert (got["edit_distance"], got["exact_match"]) == pytest.approx((distance, exact))
