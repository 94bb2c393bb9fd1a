"""COCO bbox AP/AR of predictions against ground truth, computed by pycocotools' COCOeval.

Categories are matched by normalised name (``vision.regions.normalize_phrase``): a
predicted phrase that names no ground-truth category is left out and reported, since
COCOeval has nowhere to count it. ``class_agnostic`` puts every region in one category
(any phrase may find any box). Detections are ranked by vlmjobs' region confidence.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmjobs.eval.data import Predictions, Truth
from vlmjobs.eval.images import ImageMatch
from vlmjobs.vision.regions import normalize_phrase

# COCOeval.stats in its own order; --json uses these names. -1 means "no ground truth here".
STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


@dataclass
class CocoInputs:
    """What COCOeval gets: a ground-truth document and a detections list, plus what was left out."""

    gt: dict[str, Any]
    dt: list[dict[str, Any]]
    unknown: Counter[str] = field(default_factory=Counter)


def coco_inputs(
    truth: Truth, preds: Predictions, match: ImageMatch, *, class_agnostic: bool = False
) -> CocoInputs:
    """Build COCOeval's inputs; image ids are the truth's (COCO) or its names sorted."""
    names = sorted(truth.regions)
    ids = truth.image_ids or {name: i for i, name in enumerate(names, start=1)}
    if class_agnostic:
        cat_names: dict[int, str] = {1: "region"}
    elif truth.categories is not None:
        cat_names = truth.categories
    else:
        phrases = sorted({normalize_phrase(p) for r in truth.regions.values() for p in r.phrases})
        cat_names = {i: p for i, p in enumerate(phrases, start=1)}
    by_key = {normalize_phrase(n): i for i, n in cat_names.items()}

    def category(phrase: str) -> int | None:
        return 1 if class_agnostic else by_key.get(normalize_phrase(phrase))

    gt_anns: list[dict[str, Any]] = []
    for name in names:
        regions = truth.regions[name]
        for box, phrase in zip(regions.boxes.tolist(), regions.phrases, strict=True):
            gt_anns.append(coco_annotation(len(gt_anns) + 1, ids[name], category(phrase) or 0, box))
    width_height = {n: truth.sizes.get(n, (0, 0)) for n in names}
    gt = {
        "images": [
            {
                "id": ids[n],
                "file_name": n,
                "width": width_height[n][0],
                "height": width_height[n][1],
            }
            for n in names
        ],
        "categories": [{"id": i, "name": n} for i, n in cat_names.items()],
        "annotations": [a for a in gt_anns if a["category_id"]],
    }
    inputs = CocoInputs(gt, [])
    for pred_name, gt_name in match.pairs.items():
        found = preds.regions.get(pred_name)
        if found is None:
            continue
        regions = found
        scores = regions.scores if regions.scores is not None else np.ones(len(regions))
        for box, phrase, score in zip(
            regions.boxes.tolist(), regions.phrases, scores.tolist(), strict=True
        ):
            cat = category(phrase)
            if cat is None:
                inputs.unknown[normalize_phrase(phrase)] += 1
                continue
            ann = coco_annotation(len(inputs.dt) + 1, ids[gt_name], cat, box)
            ann["score"] = score
            if class_agnostic:
                ann["caption"] = phrase  # the phrase survives the single category
            inputs.dt.append(ann)
    return inputs


def coco_annotation(
    ann_id: int, image_id: int, category_id: int, box: list[float]
) -> dict[str, Any]:
    """One COCO annotation from an xyxy box in original pixels (COCO wants x, y, w, h)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": 0,
    }


def coco_engine() -> str:
    """faster-coco-eval (C++, same numbers as pycocotools to 1e-4) when installed, else
    pycocotools: on 5,000 images x 50 regions pycocotools takes minutes."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return "pycocotools"
    return "faster-coco-eval"


def coco_metrics(inputs: CocoInputs, engine: str | None = None) -> dict[str, float]:
    """``STAT_NAMES`` -> value from COCOeval (bbox) of ``engine`` (default: ``coco_engine()``).
    No detections at all is a valid answer (every AP 0), which pycocotools' own ``loadRes``
    cannot read: the detections are indexed directly."""
    engine = engine or coco_engine()
    if engine == "faster-coco-eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    elif engine == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        raise ValueError(f"COCO engine {engine!r} is not pycocotools or faster-coco-eval")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = inputs.gt
        gt.createIndex()
        dt = COCO()
        dt.dataset = {"images": inputs.gt["images"], "categories": inputs.gt["categories"]}
        dt.dataset["annotations"] = inputs.dt
        dt.createIndex()
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[: len(STAT_NAMES)]]
    return dict(zip(STAT_NAMES, stats, strict=True))


def with_confidence_one(inputs: CocoInputs) -> CocoInputs:
    """The same detections with every score set to 1.0 (the common convention for VLM output)."""
    return CocoInputs(inputs.gt, [{**d, "score": 1.0} for d in inputs.dt], inputs.unknown)
