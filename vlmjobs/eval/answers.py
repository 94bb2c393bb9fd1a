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
from rapidfuzz.distance import Levenshtein

from vlmjobs.vision import parse
from vlmjobs.vision.regions import Regions, iou_matrix, match_pairs, same_phrase

IOU_THRESHOLD = 0.5
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


def match_regions(
    pred_boxes: np.ndarray,
    pred_phrases: list[str],
    gold_boxes: np.ndarray,
    gold_phrases: list[str],
    iou_threshold: float = IOU_THRESHOLD,
) -> RegionCounts:
    """Counts for one image; boxes (N, 4) xyxy in one frame (original pixels), phrases parallel.
    Matching (greedy one-to-one by IoU, same normalised phrase) is ``vision.regions``', the
    same rule infer's dedup and clean use for "the same phrase"."""
    pred = Regions(pred_boxes, pred_phrases)
    gold = Regions(gold_boxes, gold_phrases)
    iou = iou_matrix(pred.boxes, gold.boxes)
    pairs = match_pairs(iou, same_phrase(pred.phrases, gold.phrases), iou_threshold)
    return RegionCounts(len(pairs), len(pred), len(gold))


def parse_json(text: str) -> tuple[bool, Any]:
    """(ok, value): the JSON in a model's answer as infer reads it (``vision.parse.parse_json``:
    fences, prose around it, repaired quoting and trailing commas); a bare scalar (``null``,
    a number) too. A truncated answer is not ok: scoring it as written would be a guess."""
    value, status = parse.parse_json(text)
    if status in ("ok", "repaired"):
        return True, value
    fenced = _FENCE.match(text)
    try:
        return True, json.loads(fenced.group(1) if fenced else text)
    except json.JSONDecodeError:
        return False, None


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, unicode kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute: cost 1 each), by rapidfuzz (C++)."""
    return int(Levenshtein.distance(a, b))


def normalized_edit_distance(a: str, b: str) -> float:
    """Edit distance over the longer length, in [0, 1] (0 = identical; two empty strings: 0)."""
    return float(Levenshtein.normalized_distance(a, b))


def json_edit_distance(pred_text: str, gold: Any) -> float:
    """Normalised edit distance in [0, 1] between the prediction and the target, both canonical.

    An unparseable prediction is compared as its raw text, so near-misses still score.
    """
    ok, value = parse_json(pred_text)
    pred = canonical_json(value) if ok else pred_text.strip()
    return normalized_edit_distance(pred, canonical_json(gold))


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
