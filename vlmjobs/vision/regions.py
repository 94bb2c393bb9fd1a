"""Regions: boxes with phrases (and optional scores), the one box type of vlmjobs.

``Regions.boxes`` is ``(N, 4)`` float64 ``xyxy`` in ORIGINAL-image pixels;
``phrases`` has N strings; ``scores`` is ``(N,)`` or None. Frame changes live in
vision/frames.py, never here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmjobs.vision.frames import as_boxes


@dataclass
class Regions:
    """``boxes`` (N, 4) xyxy original px, ``phrases`` (N), ``scores`` (N,) or None."""

    boxes: np.ndarray
    phrases: list[str]
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = as_boxes(self.boxes)
        self.phrases = list(self.phrases)
        if len(self.phrases) != len(self.boxes):
            raise ValueError(
                f"{len(self.boxes)} boxes but {len(self.phrases)} phrases: need one each"
            )
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != len(self.boxes):
                raise ValueError(f"{len(self.boxes)} boxes but {len(self.scores)} scores")

    @classmethod
    def empty(cls) -> Regions:
        return cls(np.zeros((0, 4)), [])

    def __len__(self) -> int:
        return len(self.phrases)

    def __getitem__(self, index: np.ndarray | Sequence[int] | Sequence[bool]) -> Regions:
        """A bool mask (N,) or an integer index array selects rows, in that order."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"mask of shape {idx.shape} for {len(self)} regions")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        scores = None if self.scores is None else self.scores[idx]
        return Regions(self.boxes[idx], [self.phrases[i] for i in idx], scores)

    def to_json(self) -> list[dict[str, Any]]:
        """``[{"bbox": [x1, y1, x2, y2], "phrase": str, "score"?: float}]`` (floats as given)."""
        out = []
        for i, (box, phrase) in enumerate(zip(self.boxes.tolist(), self.phrases, strict=True)):
            item: dict[str, Any] = {"bbox": box, "phrase": phrase}
            if self.scores is not None:
                item["score"] = float(self.scores[i])
            out.append(item)
        return out

    @classmethod
    def from_json(cls, items: list[dict[str, Any]]) -> Regions:
        """Inverse of :meth:`to_json`; scores are kept only when every item has one."""
        if not items:
            return cls.empty()
        try:
            boxes = [item["bbox"] for item in items]
            phrases = [str(item["phrase"]) for item in items]
        except (KeyError, TypeError) as err:
            raise ValueError(f"region items need 'bbox' and 'phrase', missing {err}") from err
        has_scores = all("score" in item for item in items)
        scores = np.array([item["score"] for item in items]) if has_scores else None
        return cls(np.asarray(boxes, dtype=np.float64), phrases, scores)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): (N, M) in [0, 1].

    Boxes with zero area have IoU 0 with everything (never NaN).
    """
    a, b = as_boxes(a), as_boxes(b)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    w = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(
        0
    )
    h = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(
        0
    )
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


_ARTICLE = re.compile(r"^(a|an|the)\s+")
_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize_phrase(phrase: str) -> str:
    """The key under which two phrases are "the same" for dedup, clean and eval alike: lower
    case, punctuation turned into spaces, spaces collapsed, one leading article dropped:
    "A Red-circle." -> "red circle"."""
    text = " ".join(_PUNCTUATION.sub(" ", phrase.lower()).split())
    return _ARTICLE.sub("", text)


def match_pairs(
    iou: np.ndarray, allowed: np.ndarray, iou_threshold: float
) -> list[tuple[int, int]]:
    """One-to-one (pred, gold) index pairs, greedy by IoU (highest first), among pairs with
    ``allowed`` True and IoU >= ``iou_threshold``; ``iou`` and ``allowed`` are (N, M)."""
    candidates = np.argwhere(allowed & (iou >= iou_threshold))
    order = np.argsort(-iou[candidates[:, 0], candidates[:, 1]], kind="stable")
    used_pred: set[int] = set()
    used_gold: set[int] = set()
    pairs = []
    for i, j in candidates[order].tolist():
        if i not in used_pred and j not in used_gold:
            used_pred.add(i)
            used_gold.add(j)
            pairs.append((i, j))
    return pairs


def same_phrase(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """(len(a), len(b)) bool: True where the normalised phrases are equal."""
    ka = np.array([normalize_phrase(p) for p in a], dtype=object)
    kb = np.array([normalize_phrase(p) for p in b], dtype=object)
    return (ka[:, None] == kb[None, :]).astype(bool).reshape(len(ka), len(kb))


def exact_similarity(phrases: list[str]) -> np.ndarray:
    """(N, N) 1.0 where normalised phrases are equal, else 0.0."""
    return same_phrase(phrases, phrases).astype(np.float64)


def dedup(
    regions: Regions,
    *,
    iou_threshold: float = 0.7,
    phrase_similarity: Callable[[list[str]], np.ndarray] | None = None,
    phrase_threshold: float = 0.8,
) -> Regions:
    """Drop near-duplicates greedily: a region goes if it overlaps an already kept one with
    IoU > ``iou_threshold`` AND phrase similarity >= ``phrase_threshold``.

    Regions are visited by descending score (by order when there are no scores);
    ``phrase_similarity(phrases) -> (N, N)`` defaults to exact match of normalised
    phrases. The kept regions come back in their original order.
    """
    n = len(regions)
    if n < 2:
        return regions[np.arange(n)]
    order = np.arange(n) if regions.scores is None else np.argsort(-regions.scores, kind="stable")
    iou = iou_matrix(regions.boxes, regions.boxes)
    sim = np.asarray((phrase_similarity or exact_similarity)(regions.phrases), dtype=np.float64)
    if sim.shape != (n, n):
        raise ValueError(f"phrase_similarity returned shape {sim.shape}, expected ({n}, {n})")
    duplicate = (iou > iou_threshold) & (sim >= phrase_threshold)
    kept: list[int] = []
    for i in order:
        if not duplicate[i, kept].any():
            kept.append(int(i))
    return regions[np.sort(np.array(kept, dtype=np.int64))]
