"""COCO bbox AP/AR of predictions against ground truth, computed by pycocotools' COCOeval.

Categories are matched by normalised name (``vision.regions.normalize_phrase``). A
predicted phrase that names no ground-truth category (an open-vocabulary model's "purple
blob") is always counted and reported; ``unmatched`` decides what the score does with it:

- ``exclude`` (default): left out, as detectors' "unknown class" outputs usually are.
- ``fp``: a false positive of the category of the ground-truth box it overlaps most in its
  image (else the one whose centre is nearest): the class the model failed to name. Its
  box is moved beside the image's truth, size and score kept, so that it can match nothing
  whatever its rank. In an image without ground truth it is a false positive of every
  category. (COCOeval averages per category: an error that belongs to no category changes
  no AP, so it has to be charged to one.)

``class_agnostic`` puts every region in one category (any phrase may find any box).
Detections are ranked by vlmjobs' region confidence.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmjobs.eval.data import Predictions, Truth
from vlmjobs.eval.images import ImageMatch
from vlmjobs.vision.regions import iou_matrix, normalize_phrase

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


UNMATCHED = ("exclude", "fp")


@dataclass
class CocoInputs:
    """What COCOeval gets: a ground-truth document and a detections list; ``unknown`` counts
    the regions whose phrase named no category (left out, or charged as false positives)."""

    gt: dict[str, Any]
    dt: list[dict[str, Any]]
    unknown: Counter[str] = field(default_factory=Counter)


@dataclass
class _Unknown:
    """A detection whose phrase named no category: its image, xyxy box and score."""

    image_id: int
    box: list[float]
    score: float


def coco_inputs(
    truth: Truth,
    preds: Predictions,
    match: ImageMatch,
    *,
    class_agnostic: bool = False,
    unmatched: str = "exclude",
) -> CocoInputs:
    """Build COCOeval's inputs; image ids are the truth's (COCO) or its names sorted.
    ``unmatched``: what regions with a phrase that names no category become (module doc)."""
    if unmatched not in UNMATCHED:
        raise ValueError(f"unmatched {unmatched!r} is not one of {', '.join(UNMATCHED)}")
    ids = truth.image_ids or {name: i for i, name in enumerate(sorted(truth.regions), start=1)}
    cat_names = _categories(truth, class_agnostic)
    by_key = {normalize_phrase(n): i for i, n in cat_names.items()}

    def category(phrase: str) -> int | None:
        return 1 if class_agnostic else by_key.get(normalize_phrase(phrase))

    inputs = CocoInputs(_truth_document(truth, ids, cat_names, category), [])
    unknown: list[_Unknown] = []
    for pred_name, gt_name in match.pairs.items():
        regions = preds.regions.get(pred_name)
        if regions is None:
            continue
        scores = regions.scores if regions.scores is not None else np.ones(len(regions))
        for box, phrase, score in zip(
            regions.boxes.tolist(), regions.phrases, scores.tolist(), strict=True
        ):
            cat = category(phrase)
            if cat is None:
                inputs.unknown[normalize_phrase(phrase)] += 1
                unknown.append(_Unknown(ids[gt_name], box, score))
                continue
            ann = coco_annotation(len(inputs.dt) + 1, ids[gt_name], cat, box)
            ann["score"] = score
            if class_agnostic:
                ann["caption"] = phrase  # the phrase survives the single category
            inputs.dt.append(ann)
    if unmatched == "fp":
        _add_false_positives(inputs, unknown)
    return inputs


def _truth_document(
    truth: Truth,
    ids: dict[str, int],
    cat_names: dict[int, str],
    category: Callable[[str], int | None],
) -> dict[str, Any]:
    """The truth as a COCO instances document, images in sorted name order."""
    names = sorted(truth.regions)
    anns: list[dict[str, Any]] = []
    for name in names:
        gold = truth.regions[name]
        for box, phrase in zip(gold.boxes.tolist(), gold.phrases, strict=True):
            anns.append(coco_annotation(len(anns) + 1, ids[name], category(phrase) or 0, box))
    return {
        "images": [_image(ids[n], n, truth.sizes.get(n, (0, 0))) for n in names],
        "categories": [{"id": i, "name": n} for i, n in cat_names.items()],
        "annotations": [a for a in anns if a["category_id"]],
    }


def _categories(truth: Truth, class_agnostic: bool) -> dict[int, str]:
    """Category id -> name: one "region", the truth's (COCO), or its phrases sorted."""
    if class_agnostic:
        return {1: "region"}
    if truth.categories is not None:
        return truth.categories
    phrases = sorted({normalize_phrase(p) for r in truth.regions.values() for p in r.phrases})
    return {i: p for i, p in enumerate(phrases, start=1)}


def _image(image_id: int, name: str, size: tuple[int, int]) -> dict[str, Any]:
    return {"id": image_id, "file_name": name, "width": size[0], "height": size[1]}


def _add_false_positives(inputs: CocoInputs, unknown: list[_Unknown]) -> None:
    """Charge each unknown-phrase detection to a category as a detection that cannot match:
    the category of the truth box it overlaps most (else whose centre is nearest), or every
    category in an image without truth. Its box moves left of every truth box of the image
    (same width, height and area, so the same size range and rank)."""
    truth_boxes: dict[int, list[tuple[list[float], int]]] = {}
    for ann in inputs.gt["annotations"]:
        x, y, w, h = ann["bbox"]
        truth_boxes.setdefault(ann["image_id"], []).append(
            ([x, y, x + w, y + h], ann["category_id"])
        )
    every = [c["id"] for c in inputs.gt["categories"]]
    for det in unknown:
        present = truth_boxes.get(det.image_id, [])
        cats = [_nearest_category(det.box, present)] if present else every
        x1, y1, x2, y2 = det.box
        left = min([0.0, *(b[0] for b, _ in present)]) - (x2 - x1) - 1.0
        for cat in cats:
            ann = coco_annotation(
                len(inputs.dt) + 1, det.image_id, cat, [left, y1, left + x2 - x1, y2]
            )
            inputs.dt.append(ann | {"score": det.score})


def _nearest_category(box: list[float], present: list[tuple[list[float], int]]) -> int:
    """The category of the truth box that ``box`` overlaps most; no overlap: nearest centre."""
    boxes = np.array([b for b, _ in present], dtype=np.float64)
    overlap = iou_matrix(np.array([box], dtype=np.float64), boxes)[0]
    if overlap.max() > 0:
        return present[int(overlap.argmax())][1]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    here = (np.array(box[:2]) + np.array(box[2:])) / 2
    return present[int(np.linalg.norm(centres - here, axis=1).argmin())][1]


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
