"""The cleaning algorithm on plain arrays: grouping, clustering, representatives."""

from __future__ import annotations

import numpy as np
import pytest

from vlmjobs.recipes.clean.dedup import (
    Kept,
    cluster_embeddings,
    dedup_regions,
    group_by_iou,
    keys_to_embed,
    nearest_to_median,
)
from vlmjobs.vision.regions import normalize_phrase

# A chain: 0 overlaps 1, 1 overlaps 2, but 0 and 2 do not overlap.
CHAIN = np.array([[1.0, 0.6, 0.1], [0.6, 1.0, 0.6], [0.1, 0.6, 1.0]])
# Two pairs that overlap within, not across.
PAIRS = np.array(
    [[1.0, 0.8, 0.0, 0.0], [0.8, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.7], [0.0, 0.0, 0.7, 1.0]]
)


@pytest.mark.parametrize(
    ("iou", "threshold", "method", "expected"),
    [
        (CHAIN, 0.5, "components", [0, 0, 0]),  # case: components follow the chain
        (CHAIN, 0.5, "complete", [0, 0, 1]),  # case: complete linkage breaks it (0-2 IoU 0.1)
        (CHAIN, 0.05, "complete", [0, 0, 0]),  # case: low threshold: all pairs qualify
        (CHAIN, 0.6, "complete", [0, 0, 1]),  # case: IoU exactly at threshold merges
        (CHAIN, 0.61, "components", [0, 1, 2]),  # case: just above: nothing merges
        (PAIRS, 0.5, "complete", [0, 0, 1, 1]),  # case: two separate pairs
        (PAIRS, 0.75, "complete", [0, 0, 1, 2]),  # case: only the tighter pair merges
        (np.ones((1, 1)), 0.5, "complete", [0]),  # case: a single box
        (np.zeros((0, 0)), 0.5, "complete", []),  # case: no boxes
    ],
)
def test_group_by_iou(iou, threshold, method, expected):
    assert group_by_iou(iou, threshold, method).tolist() == expected


def test_group_by_iou_rejects_unknown_method():
    with pytest.raises(ValueError, match="'single' is not one of"):
        group_by_iou(CHAIN, 0.5, "single")


def _unit(*rows: list[float]) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("emb", "threshold", "expected"),
    [
        (_unit([1, 0], [1, 0.05], [0, 1]), 0.3, [0, 0, 1]),  # case: two close, one orthogonal
        (_unit([1, 0], [0, 1]), 0.3, [0, 1]),  # case: orthogonal: distance 1
        (_unit([1, 0], [0, 1]), 1.0, [0, 0]),  # case: threshold at 1 merges orthogonal
        (_unit([1, 0], [-1, 0]), 1.5, [0, 1]),  # case: opposite: distance 2
        (_unit([1, 0]), 0.3, [0]),  # case: one phrase
    ],
)
def test_cluster_embeddings(emb, threshold, expected):
    assert cluster_embeddings(emb, threshold).tolist() == expected


@pytest.mark.parametrize(
    ("emb", "expected"),
    [
        (_unit([1, 0], [1, 0.1], [1, 0.2]), 1),  # case: the middle one
        (_unit([1, 0], [1, 0]), 0),  # case: a tie: the first
        (
            _unit([0, 1], [1, 0.05], [1, 0], [1, 0.1], [1, 0.2]),
            3,
        ),  # case: the mean would pick row 4
    ],
)
def test_nearest_to_median(emb, expected):
    assert nearest_to_median(emb) == expected


def test_paraphrases_on_one_box_collapse_to_the_median_phrase():
    boxes = np.array([[10, 10, 50, 50], [11, 10, 50, 51], [10, 11, 51, 50]], dtype=float)
    phrases = ["a man in a hat", "man wearing hat", "a man with a hat"]
    vectors = dict(
        zip([normalize_phrase(p) for p in phrases], _unit([1, 0], [1, 0.2], [1, 0.1]), strict=True)
    )
    kept = dedup_regions(boxes, phrases, np.zeros(3, dtype=int), vectors=vectors)
    assert kept == [Kept(index=2, cluster_size=3)]


def test_different_meanings_on_one_box_are_both_kept():
    boxes = np.array([[10, 10, 50, 50], [10, 10, 50, 50]], dtype=float)
    phrases = ["a dog", "green grass"]
    vectors = {"dog": _unit([1, 0])[0], "green grass": _unit([0, 1])[0]}
    kept = dedup_regions(boxes, phrases, np.zeros(2, dtype=int), vectors=vectors)
    assert [k.index for k in kept] == [0, 1]


def test_same_phrase_in_different_groups_is_kept_twice():
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    kept = dedup_regions(boxes, ["a window", "a window"], np.array([0, 1]), vectors={})
    assert [k.index for k in kept] == [0, 1]


def test_without_vectors_only_equal_phrases_merge():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [0, 1, 10, 10]], dtype=float)
    phrases = ["A cat.", "the cat", "a kitten"]
    kept = dedup_regions(boxes, phrases, np.zeros(3, dtype=int), vectors=None)
    assert kept == [Kept(0, 2), Kept(2, 1)]


def test_repeated_phrase_keeps_the_box_nearest_the_median_box():
    boxes = np.array([[0, 0, 30, 30], [10, 10, 40, 40], [5, 5, 35, 35]], dtype=float)
    kept = dedup_regions(boxes, ["sky"] * 3, np.zeros(3, dtype=int), vectors={})
    assert kept == [Kept(2, 3)]


def test_captions_without_boxes_form_one_group():
    phrases = ["a dog runs", "a dog running", "two cats sleep"]
    keys = [normalize_phrase(p) for p in phrases]
    vectors = dict(zip(keys, _unit([1, 0], [1, 0.1], [0, 1]), strict=True))
    kept = dedup_regions(np.zeros((0, 4)), phrases, np.zeros(3, dtype=int), vectors=vectors)
    assert [(k.index, k.cluster_size) for k in kept] == [(0, 2), (2, 1)]


def test_keys_to_embed_skips_singletons_and_repeats():
    phrases = ["a cat", "dog", "The tree.", "tree", "sky"]
    groups = np.array([0, 0, 1, 1, 2])
    assert keys_to_embed(phrases, groups) == {"cat", "dog"}


@pytest.mark.parametrize("method", ["complete", "average"])
@pytest.mark.parametrize("seed", range(8))
def test_tree_cut_matches_scipy_fcluster(method, seed):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    from vlmjobs.recipes.clean.dedup import _agglomerate

    points = np.random.default_rng(seed).uniform(0, 1, (40, 2))
    dist = squareform(pdist(points))
    threshold = 0.15 + 0.05 * seed
    ours = _agglomerate(dist, threshold, method)
    theirs = fcluster(linkage(pdist(points), method=method), t=threshold, criterion="distance")
    # the same partition (label numbers differ): pairs together in one are together in the other
    assert (np.equal.outer(ours, ours) == np.equal.outer(theirs, theirs)).all()
    assert 1 < len(set(ours)) < 40  # the threshold actually cuts the tree


def test_pairs_shortcut_equals_the_complete_linkage_tree():
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    from vlmjobs.vision.regions import iou_matrix

    # 30 far-apart places, two boxes each with random shifts: components of 1 or 2 boxes,
    # which group_by_iou settles without building a tree.
    rng = np.random.default_rng(0)
    x = np.repeat(np.arange(30) * 200.0, 2) + rng.uniform(0, 40, 60)
    y = rng.uniform(0, 40, 60)
    boxes = np.stack([x, y, x + 50, y + 50], axis=1)
    iou = iou_matrix(boxes, boxes)
    fast = group_by_iou(iou, 0.5, "complete")
    tree = linkage(squareform(1.0 - iou, checks=False), method="complete")
    full = fcluster(tree, t=0.5, criterion="distance")
    assert (np.equal.outer(fast, fast) == np.equal.outer(full, full)).all()
    assert 30 < len(set(fast)) < 60  # some pairs merged, some did not
