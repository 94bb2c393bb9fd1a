"""Task metrics: pure functions (prediction, target) -> score, shared by train's eval and infer.

Regions: a predicted region is a true positive when it overlaps an unmatched target
region at IoU >= 0.5 AND their phrases match after normalisation; matching is one-to-one,
greedy by IoU. Counts add up over images (micro-averaged P/R/F1).

JSON: normalised edit distance between canonical serialisations (0 = identical, 1 =
nothing in common), and field accuracy: the share of the target's leaf fields that the
prediction has at the same path with the same (normalised) value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

IOU_THRESHOLD = 0.5
_ARTICLES = re.compile(r"^(a|an|the)\s+")
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


@dataclass(frozen=True)
class RegionCounts:
    """True positives, predictions and targets; add them over images for micro-averaged scores."""

    tp: int = 0
    n_pred: int = 0
    n_gold: int = 0

    def __add__(self, other: RegionCounts) -> RegionCounts:
        return RegionCounts(
            self.tp + other.tp, self.n_pred + other.n_pred, self.n_gold + other.n_gold
        )

    @property
    def precision(self) -> float:
        # No predictions: perfect only if there was nothing to find.
        return self.tp / self.n_pred if self.n_pred else float(self.n_gold == 0)

    @property
    def recall(self) -> float:
        return self.tp / self.n_gold if self.n_gold else float(self.n_pred == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def normalise_phrase(phrase: str) -> str:
    """Lower case, punctuation to spaces, one leading article dropped, spaces collapsed."""
    text = re.sub(r"[^\w\s]", " ", phrase.lower())
    text = " ".join(text.split())
    return _ARTICLES.sub("", text)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4), xyxy -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_regions(
    pred_boxes: np.ndarray,
    pred_phrases: list[str],
    gold_boxes: np.ndarray,
    gold_phrases: list[str],
    iou_threshold: float = IOU_THRESHOLD,
) -> RegionCounts:
    """Counts for one image; boxes (N, 4) xyxy in one frame (original pixels), phrases parallel."""
    if len(pred_phrases) != len(np.asarray(pred_boxes).reshape(-1, 4)) or len(gold_phrases) != len(
        np.asarray(gold_boxes).reshape(-1, 4)
    ):
        raise ValueError("each box needs exactly one phrase: boxes and phrases differ in length")
    iou = box_iou(pred_boxes, gold_boxes)
    same = np.array(
        [[normalise_phrase(p) == normalise_phrase(g) for g in gold_phrases] for p in pred_phrases],
        dtype=bool,
    ).reshape(iou.shape)
    candidates = np.argwhere(same & (iou >= iou_threshold))
    # Greedy one-to-one by IoU, highest first: a target is found at most once.
    order = np.argsort(-iou[candidates[:, 0], candidates[:, 1]], kind="stable")
    used_pred: set[int] = set()
    used_gold: set[int] = set()
    for i, j in candidates[order]:
        if i not in used_pred and j not in used_gold:
            used_pred.add(int(i))
            used_gold.add(int(j))
    return RegionCounts(len(used_pred), len(pred_phrases), len(gold_phrases))


def parse_json(text: str) -> tuple[bool, Any]:
    """(ok, value): the JSON in a model's answer, with an optional ```json fence stripped."""
    fenced = _FENCE.match(text)
    try:
        return True, json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return False, None


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, unicode kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1 each); O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def json_edit_distance(pred_text: str, gold: Any) -> float:
    """Normalised edit distance in [0, 1] between the prediction and the target, both canonical.

    An unparseable prediction is compared as its raw text, so near-misses still score.
    """
    ok, value = parse_json(pred_text)
    pred = canonical_json(value) if ok else pred_text.strip()
    target = canonical_json(gold)
    longest = max(len(pred), len(target))
    return edit_distance(pred, target) / longest if longest else 0.0


def flatten_json(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by path: {"a": {"b": [1, 2]}} -> {"a.b[0]": 1, "a.b[1]": 2}."""
    if isinstance(value, dict | list) and not value:
        return {prefix: value}  # an empty container is a leaf: the target says "nothing here"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten_json(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten_json(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def _normalise_value(value: Any) -> Any:
    # Tagged so that True never equals 1 (Python says it does).
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    return canonical_json(value)  # empty dict / list leaves


def json_field_accuracy(pred_text: str, gold: Any) -> float:
    """Share of the target's leaf fields present in the prediction with an equal value.

    Strings compare case- and whitespace-insensitively, numbers as floats (1 == 1.0).
    An unparseable prediction scores 0.
    """
    ok, value = parse_json(pred_text)
    if not ok:
        return 0.0
    gold_fields = flatten_json(gold)
    pred_fields = flatten_json(value)
    hits = sum(
        path in pred_fields and _normalise_value(pred_fields[path]) == _normalise_value(v)
        for path, v in gold_fields.items()
    )
    return hits / len(gold_fields)
