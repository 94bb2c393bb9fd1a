"""Grounding accuracy, region F1, JSON field accuracy / exact match, and text edit distance.

Each takes (prediction, ground truth) pairs, one per ground-truth image; a prediction
of None (the image was not predicted) scores as wrong. Train's periodic evaluation calls
``region_f1_metrics`` too, so its ``region_f1`` and an eval job's are one computation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from vlmjobs.eval.answers import (
    RegionCounts,
    canonical_json,
    json_field_accuracy,
    match_regions,
    normalized_edit_distance,
    parse_json,
)
from vlmjobs.vision.regions import Regions, iou_matrix, same_phrase

GROUNDING_IOU = 0.5  # RefCOCO's convention


def grounding_metrics(pairs: Iterable[tuple[Regions | None, Regions]]) -> dict[str, float]:
    """``acc@0.5``: the share of ground-truth regions (each a referring phrase) whose
    best-scored predicted box with the same normalised phrase overlaps it at IoU >= 0.5.
    A prediction with one region answers its image's single query whatever its phrase."""
    correct = total = 0
    for pred, gold in pairs:
        total += len(gold)
        if pred is None or not len(pred) or not len(gold):
            continue
        scores = pred.scores if pred.scores is not None else np.ones(len(pred))
        iou = iou_matrix(pred.boxes, gold.boxes)
        same = same_phrase(pred.phrases, gold.phrases)
        if len(gold) == 1 and len(pred) == 1:
            same[:] = True  # one query, one answer: the model need not repeat the phrase
        for j in range(len(gold)):
            candidates = np.flatnonzero(same[:, j])
            if len(candidates):
                top = candidates[np.argmax(scores[candidates])]
                correct += bool(iou[top, j] >= GROUNDING_IOU)
    return {"acc@0.5": correct / total if total else float("nan"), "queries": float(total)}


def region_f1_metrics(pairs: Iterable[tuple[Regions | None, Regions]]) -> dict[str, float]:
    """``region_precision``, ``region_recall``, ``region_f1``: micro-averaged over images; a
    prediction is right when it overlaps an unclaimed truth box at IoU >= 0.5 with the same
    normalised phrase (``answers.match_regions``). Confidence plays no part."""
    counts = RegionCounts()
    for pred, gold in pairs:
        pred = pred if pred is not None else Regions.empty()
        counts += match_regions(pred.boxes, pred.phrases, gold.boxes, gold.phrases)
    return {
        "region_precision": counts.precision,
        "region_recall": counts.recall,
        "region_f1": counts.f1,
    }


def json_metrics(pairs: Iterable[tuple[str | None, str]]) -> dict[str, float]:
    """``field_accuracy`` (mean share of the target's leaf fields right), ``exact_match``
    (same value once canonical), ``parse_rate`` over (answer text, target text) pairs."""
    fields, exact, parsed, n = [], 0, 0, 0
    for answer, target in pairs:
        n += 1
        ok, gold = parse_json(target)
        if not ok:
            raise ValueError(f"target {target[:80]!r} is not JSON: use --metric text for free text")
        if answer is None:
            fields.append(0.0)
            continue
        got_ok, got = parse_json(answer)
        parsed += got_ok
        fields.append(json_field_accuracy(answer, gold))
        exact += got_ok and canonical_json(got) == canonical_json(gold)
    return {
        "field_accuracy": float(np.mean(fields)) if n else float("nan"),
        "exact_match": exact / n if n else float("nan"),
        "parse_rate": parsed / n if n else float("nan"),
    }


def text_metrics(pairs: Iterable[tuple[str | None, str]]) -> dict[str, float]:
    """``edit_distance``: mean normalised Levenshtein distance (0 = identical, rapidfuzz) and
    ``exact_match`` after collapsing whitespace; a missing answer counts as distance 1."""
    distances, exact = [], 0
    for answer, target in pairs:
        if answer is None:
            distances.append(1.0)
            continue
        a, t = " ".join(answer.split()), " ".join(target.split())
        distances.append(normalized_edit_distance(a, t))
        exact += a == t
    n = len(distances)
    return {
        "edit_distance": float(np.mean(distances)) if n else float("nan"),
        "exact_match": exact / n if n else float("nan"),
    }
