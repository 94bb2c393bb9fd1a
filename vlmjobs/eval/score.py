"""One entry point for every metric: ground truth + predictions -> rows of scores.

Region metrics are computed twice: ranked by the model's confidence, and with every
confidence set to 1.0 (the common convention for VLM output, where AP then depends on
output order); the difference is what the confidence buys.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vlmjobs.eval.coco import coco_inputs, coco_metrics
from vlmjobs.eval.data import Predictions, Truth
from vlmjobs.eval.densecap import Embed, densecap_metrics, minilm_embed
from vlmjobs.eval.images import ImageMatch, match_images
from vlmjobs.eval.tasks import (
    grounding_metrics,
    json_metrics,
    region_f1_metrics,
    text_metrics,
)
from vlmjobs.vision.regions import Regions

METRICS = ("coco", "densecap", "grounding", "json", "text")
REGION_METRICS = ("coco", "densecap", "grounding")
RANKINGS = ("ranked", "confidence=1")


@dataclass
class Row:
    """One model's scores under one ranking, with how its images and phrases matched."""

    label: str
    ranking: str
    metrics: dict[str, float]
    match: ImageMatch
    unknown_phrases: Counter[str] = field(default_factory=Counter)


def default_metric(truth: Truth) -> str:
    """coco for COCO truth, densecap for phrases, json when every target parses, else text."""
    if truth.kind == "coco":
        return "coco"
    if truth.kind == "regions":
        return "densecap"
    from vlmjobs.eval.answers import parse_json

    return "json" if all(parse_json(t)[0] for t in truth.texts.values()) else "text"


def score(
    truth: Truth,
    preds: Predictions,
    metric: str,
    *,
    class_agnostic: bool = False,
    unmatched: str = "exclude",
    embed: Embed | None = None,
) -> list[Row]:
    """Rows for ``preds`` (one per ranking for region metrics). ValueError when the truth
    cannot be scored by ``metric`` (e.g. text targets for a box metric). ``unmatched``
    (coco): regions whose phrase names no category are left out, or charged as false
    positives (``vlmjobs.eval.coco``)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    wants_regions = metric in REGION_METRICS
    if wants_regions == (truth.kind == "text"):
        has = "boxes" if truth.kind != "text" else "text answers ({image, suffix})"
        raise ValueError(f"--metric {metric} does not fit this ground truth, which has {has}")
    match = match_images(preds.names, truth.names)
    by_gold = {g: p for p, g in match.pairs.items()}
    if not wants_regions:
        texts = [(preds.texts.get(by_gold.get(g, "")), t) for g, t in truth.texts.items()]
        fn = json_metrics if metric == "json" else text_metrics
        return [Row(preds.label, "-", fn(texts), match)]
    rows = []
    for ranking in RANKINGS:
        ranked = preds if ranking == "ranked" else confidence_one(preds)
        if metric == "coco":
            inputs = coco_inputs(
                truth, ranked, match, class_agnostic=class_agnostic, unmatched=unmatched
            )
            rows.append(Row(preds.label, ranking, coco_metrics(inputs), match, inputs.unknown))
            continue
        pairs = [(ranked.regions.get(by_gold.get(g, "")), r) for g, r in truth.regions.items()]
        if metric == "grounding":
            rows.append(Row(preds.label, ranking, grounding_metrics(pairs), match))
        else:
            embed = embed or minilm_embed()
            # F1 at IoU 0.5 beside the mAP: the number train's periodic eval reports.
            found = densecap_metrics(pairs, embed) | region_f1_metrics(pairs)
            rows.append(Row(preds.label, ranking, found, match))
    return rows


def confidence_one(preds: Predictions) -> Predictions:
    """The same predictions with every region's confidence 1.0 (ties keep output order)."""
    regions = {n: Regions(r.boxes, r.phrases, np.ones(len(r))) for n, r in preds.regions.items()}
    return Predictions(preds.label, regions, preds.texts, preds.failed)
