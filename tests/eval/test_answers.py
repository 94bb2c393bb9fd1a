"""Task metrics: parametrize tables, one `# case` per row; expected exceptions are data too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlmjobs.eval.answers import (
    RegionCounts,
    edit_distance,
    flatten_json,
    json_edit_distance,
    json_field_accuracy,
    match_regions,
    parse_json,
)

R = [0, 0, 10, 10]  # a 10x10 box at the origin


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ([(R, "red circle")], [(R, "a red circle")], (1, 1, 1)),  # case: exact match
        ([(R, "blue circle")], [(R, "red circle")], (0, 1, 1)),  # case: phrase mismatch
        ([([0, 0, 10, 20], "x")], [(R, "x")], (1, 1, 1)),  # case: IoU exactly 0.5 counts
        ([([0, 0, 10, 21], "x")], [(R, "x")], (0, 1, 1)),  # case: IoU just under 0.5
        ([(R, "x"), (R, "x")], [(R, "x")], (1, 2, 1)),  # case: duplicate is a false positive
        ([], [(R, "x")], (0, 0, 1)),  # case: nothing predicted
        ([(R, "x")], [], (0, 1, 0)),  # case: nothing to find
        ([(R, "red-circle")], [(R, "Red circle.")], (1, 1, 1)),  # case: punctuation is a space
        ([], [], (0, 0, 0)),  # case: empty image
        (
            [([0, 0, 10, 10], "x"), ([1, 0, 11, 10], "x")],
            [([1, 0, 11, 10], "x"), ([0, 0, 10, 10], "x")],
            (2, 2, 2),
        ),  # case: greedy by IoU pairs each with its best, not the first
    ],
)
def test_match_regions(pred: list, gold: list, expected: tuple[int, int, int]) -> None:
    counts = match_regions(
        np.array([b for b, _ in pred], dtype=float).reshape(-1, 4),
        [p for _, p in pred],
        np.array([b for b, _ in gold], dtype=float).reshape(-1, 4),
        [p for _, p in gold],
    )
    assert (counts.tp, counts.n_pred, counts.n_gold) == expected


def test_match_regions_rejects_unpaired_phrases() -> None:
    with pytest.raises(ValueError, match="1 boxes but 0 phrases"):
        match_regions(np.array([R]), [], np.zeros((0, 4)), [])


@pytest.mark.parametrize(
    "counts, p, r, f1",
    [
        (RegionCounts(1, 2, 4), 0.5, 0.25, 1 / 3),  # case: ordinary
        (RegionCounts(0, 0, 0), 1.0, 1.0, 1.0),  # case: nothing to find, nothing found
        (RegionCounts(0, 0, 3), 0.0, 0.0, 0.0),  # case: found nothing
        (RegionCounts(0, 3, 0), 0.0, 0.0, 0.0),  # case: hallucinated everything
        (RegionCounts(1, 1, 1) + RegionCounts(0, 1, 3), 0.5, 0.25, 1 / 3),  # case: micro-average
    ],
)
def test_region_scores(counts: RegionCounts, p: float, r: float, f1: float) -> None:
    assert (counts.precision, counts.recall, counts.f1) == pytest.approx((p, r, f1))


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', (True, {"a": 1})),  # case: plain
        ('```json\n{"a": 1}\n```', (True, {"a": 1})),  # case: fenced
        ("```\n[1, 2]\n```", (True, [1, 2])),  # case: fence without a language
        ('{"a": 1', (False, None)),  # case: truncated
        ("null", (True, None)),  # case: JSON null is not a failure
        ("", (False, None)),  # case: empty
        ("{'a': 1}", (True, {"a": 1})),  # case: Python quoting, repaired as infer does
        ('Here it is: {"a": [1, 2,]}', (True, {"a": [1, 2]})),  # case: prose + trailing comma
    ],
)
def test_parse_json(text: str, expected: tuple[bool, object]) -> None:
    assert parse_json(text) == expected


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("kitten", "sitting", 3),  # case: textbook
        ("", "abc", 3),  # case: from empty
        ("abc", "abc", 0),  # case: same
        ("ab", "ba", 2),  # case: transposition costs two
        ("héllo", "hello", 1),  # case: one code point, not one byte
    ],
)
def test_edit_distance(a: str, b: str, expected: int) -> None:
    assert edit_distance(a, b) == expected == edit_distance(b, a)


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ('{"b": 2, "a": 1}', {"a": 1, "b": 2}, 0.0),  # case: key order and spaces do not count
        ('{"a":1}', {"a": 2}, 1 / 7),  # case: one character of seven
        ("", {"a": 1}, 1.0),  # case: empty answer
        ('{"a":1', {"a": 1}, 1 / 7),  # case: truncated answer compared as raw text
        ("[]", [], 0.0),  # case: empty list
    ],
)
def test_json_edit_distance(pred: str, gold: object, expected: float) -> None:
    assert json_edit_distance(pred, gold) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"a": {"b": [1, 2]}}, {"a.b[0]": 1, "a.b[1]": 2}),  # case: nested
        ({"a": {}}, {"a": {}}),  # case: empty dict is a leaf
        (3, {"": 3}),  # case: scalar root
        ([], {"": []}),  # case: empty root
    ],
)
def test_flatten_json(value: object, expected: dict) -> None:
    assert flatten_json(value) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ('{"name": " ACME  Ltd", "total": 10}', {"name": "acme ltd", "total": 10.0}, 1.0),
        # case above: case, spaces and 10 == 10.0
        ('{"name": "acme", "total": 11}', {"name": "acme", "total": 10}, 0.5),  # case: one wrong
        ('{"name": "acme"}', {"name": "acme", "total": 10}, 0.5),  # case: one missing
        ('{"name": "acme", "x": 1}', {"name": "acme"}, 1.0),  # case: extra fields are free
        ('{"items": [{"q": 1}, {"q": 3}]}', {"items": [{"q": 1}, {"q": 2}]}, 0.5),  # case: list
        ("not json", {"name": "acme"}, 0.0),  # case: unparseable
        ('{"flag": 1}', {"flag": True}, 0.0),  # case: true is not 1
    ],
)
def test_json_field_accuracy(pred: str, gold: object, expected: float) -> None:
    assert math.isclose(json_field_accuracy(pred, gold), expected)
