"""Regions dataclass, vectorised IoU, greedy de-duplication."""

from __future__ import annotations

import numpy as np
import pytest

from vlmjobs.vision.regions import Regions, dedup, iou_matrix, match_pairs, normalize_phrase


def _iou_loop(a, b):
    """Reference IoU, one pair at a time."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - w * h
            out[i, j] = w * h / union if union > 0 else 0.0
    return out


@pytest.mark.parametrize(
    "a,b,want",
    [
        ([[0, 0, 10, 10]], [[0, 0, 10, 10]], [[1.0]]),  # case: identical
        ([[0, 0, 10, 10]], [[5, 0, 15, 10]], [[1 / 3]]),  # case: half overlap
        ([[0, 0, 10, 10]], [[10, 10, 20, 20]], [[0.0]]),  # case: touching corners
        ([[0, 0, 10, 10]], [[2, 2, 4, 4]], [[0.04]]),  # case: contained
        ([[0, 0, 0, 0]], [[0, 0, 0, 0]], [[0.0]]),  # case: both zero area, no NaN
        ([], [[0, 0, 1, 1]], np.zeros((0, 1))),  # case: empty side
    ],
)
def test_iou_matrix_table(a, b, want):
    np.testing.assert_allclose(iou_matrix(a, b), want)


def test_iou_matrix_equals_pairwise_loop():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(2, 30, 2))
    wh = rng.uniform(0, 50, size=(2, 30, 2))
    a, b = np.concatenate([xy[0], xy[0] + wh[0]], 1), np.concatenate([xy[1], xy[1] + wh[1]], 1)
    np.testing.assert_allclose(iou_matrix(a, b[:20]), _iou_loop(a, b[:20]))


def test_indexing_len_and_json_round_trip():
    r = Regions(
        np.array([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]]), ["a", "b", "c"], [0.1, 0.2, 0.3]
    )
    assert len(r) == 3 and len(Regions.empty()) == 0
    picked = r[np.array([True, False, True])]
    assert picked.phrases == ["a", "c"] and picked.scores.tolist() == [0.1, 0.3]
    assert r[[2, 0]].phrases == ["c", "a"]
    back = Regions.from_json(r.to_json())
    np.testing.assert_array_equal(back.boxes, r.boxes)
    assert back.phrases == r.phrases and back.scores.tolist() == r.scores.tolist()
    no_scores = Regions(r.boxes, r.phrases)
    assert "score" not in no_scores.to_json()[0]
    assert Regions.from_json(no_scores.to_json()).scores is None
    assert Regions.from_json([]).boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(boxes=[[0, 0, 1, 1]], phrases=[]), "1 boxes but 0 phrases"),  # case: phrases short
        (dict(boxes=[[0, 0, 1, 1]], phrases=["a"], scores=[1, 2]), "2 scores"),  # case: scores
        (dict(boxes=[[0, 0, 1]], phrases=["a"]), r"\(N, 4\)"),  # case: 3 coordinates
    ],
)
def test_bad_regions_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Regions(**kwargs)


@pytest.mark.parametrize(
    "phrase,want",
    [
        ("A Red  circle.", "red circle"),  # case: case, spaces, article, period
        ("the blue star", "blue star"),  # case: 'the'
        ("an apple", "apple"),  # case: 'an'
        ("another box", "another box"),  # case: 'an' only as a whole word
        ("red-circle", "red circle"),  # case: inner punctuation is a separator
        ("the  big   square.", "big square"),  # case: punctuation and runs of spaces
        ("a “quoted” circle!", "quoted circle"),  # case: typographic quotes
        ("", ""),  # case: empty
    ],
)
def test_normalize_phrase(phrase, want):
    assert normalize_phrase(phrase) == want


def test_dedup_and_eval_agree_on_the_same_phrase():
    """Infer's dedup used to keep "red-circle" beside "a red circle." (end punctuation only)
    while eval scored them as one phrase: both now use normalize_phrase."""
    from vlmjobs.eval.answers import match_regions

    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=float)
    regions = Regions(boxes, ["red-circle", "a red circle."], [0.9, 0.8])
    assert dedup(regions).phrases == ["red-circle"]
    counts = match_regions(boxes[:1], ["red-circle"], boxes[1:], ["a red circle."])
    assert counts.tp == 1


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # case: identical
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # case: half overlap
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # case: touching edges
        ([0, 0, 10, 10], [0, 0, 5, 5], 0.25),  # case: contained
        ([0, 0, 0, 0], [0, 0, 0, 0], 0.0),  # case: degenerate boxes, no division by zero
    ],
)
def test_iou_table(a, b, expected):
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


@pytest.mark.parametrize(
    "iou, allowed, want",
    [
        ([[0.9, 0.6], [0.95, 0.0]], [[1, 1], [1, 1]], [(1, 0), (0, 1)]),
        # case: greedy by IoU: the best pair first, then the next free one
        ([[0.9]], [[0]], []),  # case: not allowed (other phrase) never matches
        ([[0.49]], [[1]], []),  # case: under the threshold
        ([[0.5]], [[1]], [(0, 0)]),  # case: the threshold itself counts
        ([[0.8], [0.7]], [[1], [1]], [(0, 0)]),  # case: a gold box is found once
    ],
)
def test_match_pairs(iou, allowed, want):
    got = match_pairs(np.array(iou, dtype=float), np.array(allowed, dtype=bool), 0.5)
    assert got == want


BOXES = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=float)


@pytest.mark.parametrize(
    "phrases,scores,kwargs,kept",
    [
        (["red circle", "a red circle", "blue square", "red circle"], None, {}, [0, 2, 3]),
        # case: duplicates by IoU and normalised phrase; other phrase and far box survive
        (["x", "x", "x", "x"], [0.1, 0.9, 0.5, 0.2], {}, [1, 3]),
        # case: the highest score wins among overlapping duplicates
        (["x", "x", "x", "x"], None, {"iou_threshold": 0.95}, [0, 1, 3]),
        # case: a stricter IoU threshold keeps the shifted box
        (["x", "y", "z", "w"], None, {"phrase_similarity": lambda p: np.ones((4, 4))}, [0, 3]),
        # case: a similarity function that says everything is alike
    ],
)
def test_dedup_table(phrases, scores, kwargs, kept):
    regions = Regions(BOXES, phrases, scores)
    out = dedup(regions, **kwargs)
    np.testing.assert_array_equal(out.boxes, BOXES[kept])
    assert out.phrases == [phrases[i] for i in kept]


def test_dedup_rejects_a_bad_similarity_shape():
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(4, 4\)"):
        dedup(Regions(BOXES, list("abcd")), phrase_similarity=lambda p: np.ones((2, 2)))
