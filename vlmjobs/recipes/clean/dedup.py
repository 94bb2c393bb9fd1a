"""The cleaning algorithm on plain arrays: IoU groups, then meaning clusters within a group.

1. Group: boxes whose pairwise IoU is >= ``iou_threshold``. ``complete`` is
   complete-linkage agglomerative clustering on ``1 - IoU`` (every pair in a
   group overlaps enough, so two far-apart boxes never meet through a chain of
   boxes between them); ``components`` takes connected components of the
   overlap graph (chains merge, so more is removed).
2. Cluster: inside a group, phrases whose sentence embeddings are within
   ``distance_threshold`` cosine distance (average linkage) are one meaning.
   Without embeddings (``semantic: false``) only phrases that are equal after
   ``vision.regions.normalize_phrase`` (case, article, end punctuation) are one meaning.
3. Keep one region per cluster: the phrase nearest the cluster's median
   embedding; of the boxes carrying that phrase, the one nearest the cluster's
   median box.

Everything here is deterministic: same input, same kept indices, same order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import squareform

# Lower case, no article or end punctuation: the key of phrase matching and the vector cache.
from vlmjobs.vision.regions import normalize_phrase


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Labels numbered 0.. in order of first appearance (scipy's numbering is arbitrary)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.reshape(-1)]


def _cut(tree: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Flat clusters of a scipy linkage ``tree`` over ``n`` points: merges at <= threshold.

    Complete and average linkage merge at non-decreasing heights, so the merges to
    apply are a prefix of the tree. (fcluster does the same after ~1 ms of input checks
    per call, which is most of the cost for small groups.)
    """
    parent = np.arange(2 * n - 1)
    for i, (a, b, height, _) in enumerate(tree):
        if height > threshold:
            break
        parent[int(a)] = parent[int(b)] = n + i
    while True:  # pointer jumping: every node ends pointing at its root
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return _relabel(parent[:n])
        parent = grand


def _agglomerate(dist: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Cut a ``method``-linkage tree of the (n, n) distance matrix at ``threshold``."""
    n = dist.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    if n == 2:  # every linkage agrees on two points
        return np.array([0, 0 if dist[0, 1] <= threshold + 1e-9 else 1])
    condensed = squareform(np.clip(dist, 0.0, None), checks=False)
    tree = linkage(condensed, method=method)
    # The small slack absorbs float error for distances exactly at the threshold.
    return _cut(tree, n, threshold + 1e-9)


def group_by_iou(iou: np.ndarray, threshold: float, method: str = "complete") -> np.ndarray:
    """(N,) group label per box from an (N, N) IoU matrix; labels 0.. by first member."""
    if method not in ("complete", "components"):
        raise ValueError(f"grouping {method!r} is not one of complete, components")
    if iou.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    n_comp, labels = connected_components(iou >= threshold, directed=False)
    if method == "components" or np.bincount(labels).max() <= 2:
        # Components of one or two boxes are already complete-linkage groups.
        return _relabel(labels)
    return _agglomerate(1.0 - iou, 1.0 - threshold, "complete")


def cluster_embeddings(emb: np.ndarray, distance_threshold: float) -> np.ndarray:
    """(n,) cluster label per row of (n, d) L2-normalised embeddings (cosine, average linkage)."""
    return _agglomerate(1.0 - emb @ emb.T, distance_threshold, "average")


def nearest_to_median(emb: np.ndarray) -> int:
    """Row of (n, d) ``emb`` nearest (L2) its element-wise median; the first one on ties."""
    median = np.median(emb, axis=0)
    return int(np.argmin(((emb - median) ** 2).sum(axis=1)))


@dataclass(frozen=True)
class Kept:
    """One region kept for a cluster: its index in the input, and how many it stands for."""

    index: int
    cluster_size: int


def _representative(
    members: np.ndarray, boxes: np.ndarray, keys: list[str], emb: np.ndarray | None
) -> int:
    """Index (into the input) of the region that represents the cluster ``members``."""
    if emb is None:
        phrase = keys[members[0]]
    else:
        phrase = keys[members[nearest_to_median(emb)]]
    carriers = np.array([m for m in members if keys[m] == phrase])
    if boxes.shape[0] == 0:
        return int(carriers[0])
    median_box = np.median(boxes[members], axis=0)
    return int(carriers[np.argmin(np.abs(boxes[carriers] - median_box).sum(axis=1))])


def _clusters_of_group(
    members: np.ndarray,
    keys: list[str],
    vectors: Mapping[str, np.ndarray] | None,
    distance_threshold: float,
) -> list[np.ndarray]:
    """Split one IoU group into meaning clusters (arrays of input indices)."""
    unique = list(dict.fromkeys(keys[m] for m in members))
    if vectors is None or len(unique) == 1:
        labels_u = np.arange(len(unique))
    else:
        labels_u = cluster_embeddings(np.stack([vectors[u] for u in unique]), distance_threshold)
    label_of = dict(zip(unique, labels_u, strict=True))
    labels = np.array([label_of[keys[m]] for m in members])
    return [members[labels == c] for c in range(int(labels.max()) + 1)]


def dedup_regions(
    boxes: np.ndarray,
    phrases: list[str],
    groups: np.ndarray,
    *,
    vectors: Mapping[str, np.ndarray] | None = None,
    distance_threshold: float = 0.3,
) -> list[Kept]:
    """Regions to keep, one per (IoU group, meaning cluster), in input order.

    ``boxes`` (N, 4) original px, or (0, 4) for captions; ``groups`` (N,) labels 0.. from
    :func:`group_by_iou` (all zeros: one group); ``vectors`` maps :func:`normalize_phrase`
    keys (at least :func:`keys_to_embed`'s) to L2-normalised embeddings; None: only equal
    phrases merge.
    """
    if len(phrases) == 0:
        return []
    keys = [normalize_phrase(p) for p in phrases]
    kept: list[Kept] = []
    for g in range(int(groups.max()) + 1):
        members = np.flatnonzero(groups == g)
        if len(members) == 1:
            kept.append(Kept(int(members[0]), 1))
            continue
        for cluster in _clusters_of_group(members, keys, vectors, distance_threshold):
            if len(cluster) == 1:
                kept.append(Kept(int(cluster[0]), 1))
                continue
            distinct = {keys[m] for m in cluster}
            emb = None
            if vectors is not None and len(distinct) > 1:
                emb = np.stack([vectors[keys[m]] for m in cluster])
            kept.append(Kept(_representative(cluster, boxes, keys, emb), len(cluster)))
    return sorted(kept, key=lambda k: k.index)


def keys_to_embed(phrases: list[str], groups: np.ndarray) -> set[str]:
    """Normalised phrases that need a vector: those in groups with >= 2 distinct phrases.

    Singletons and groups of one repeated phrase are decided without the model, which is
    most of the regions of a sparse image.
    """
    keys = [normalize_phrase(p) for p in phrases]
    need: set[str] = set()
    for g in np.unique(groups):
        distinct = {keys[m] for m in np.flatnonzero(groups == g)}
        if len(distinct) > 1:
            need |= distinct
    return need
