"""vlmjobs' COCO numbers against pycocotools run directly, the way its users run it.

Each case: a hand-built COCO ground truth, detections written by hand in COCO's own
results format (ids of the truth), and the same detections as vlmjobs infer outputs
(absolute paths, free phrases). Both must give the same 12 numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlmjobs.eval.coco import STAT_NAMES, coco_inputs, coco_metrics
from vlmjobs.eval.data import coco_truth, predictions_from_outputs
from vlmjobs.eval.images import match_images
from vlmjobs.eval.score import score

CATS = {1: "cat", 2: "dog"}
GT = {
    "images": [
        {"id": 10, "file_name": "a.jpg", "width": 640, "height": 480},
        {"id": 20, "file_name": "sub/b.jpg", "width": 640, "height": 480},
    ],
    "categories": [{"id": i, "name": n} for i, n in CATS.items()],
    "annotations": [
        {
            "id": 1,
            "image_id": 10,
            "category_id": 1,
            "bbox": [10, 10, 100, 80],
            "area": 8000,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 10,
            "category_id": 2,
            "bbox": [300, 200, 150, 150],
            "area": 22500,
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 20,
            "category_id": 1,
            "bbox": [50, 60, 40, 30],
            "area": 1200,
            "iscrowd": 0,
        },
    ],
}
PERFECT = [
    (10, 1, [10, 10, 100, 80], 0.9),
    (10, 2, [300, 200, 150, 150], 0.8),
    (20, 1, [50, 60, 40, 30], 0.7),
]


def direct(dets: list[tuple], tmp_path: Path, gt: dict = GT) -> list[float]:
    """pycocotools alone: COCO(file), loadRes(list), COCOeval bbox."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    results = [{"image_id": i, "category_id": c, "bbox": b, "score": s} for i, c, b, s in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(x) for x in evaluator.stats]


def as_outputs(dets: list[tuple], phrase_of: dict[int, str] = CATS) -> list[dict]:
    """The same detections as vlmjobs outputs: absolute paths, xyxy boxes, phrases
    (category 3, or any id not in ``phrase_of``, is the phrase "zebra": no category)."""
    names = {10: "/data/coco/a.jpg", 20: "/data/coco/sub/b.jpg", 30: "/data/coco/c.jpg"}
    wanted = [i for i in names if i != 30 or any(d[0] == 30 for d in dets)]
    by_image: dict[int, list[dict]] = {i: [] for i in wanted}
    for i, c, (x, y, w, h), s in dets:
        by_image[i].append(
            {"bbox": [x, y, x + w, y + h], "phrase": phrase_of.get(c, "zebra"), "score": s}
        )
    return [{"source": names[i], "status": "ok", "regions": r} for i, r in by_image.items()]


@pytest.mark.parametrize(
    "dets, ap",
    [
        pytest.param(PERFECT, 1.0, id="perfect"),
        pytest.param(
            [(i, c, [x + 12, y + 6, w, h], s) for i, c, (x, y, w, h), s in PERFECT],
            None,
            id="shifted",
        ),
        pytest.param(PERFECT[:2], None, id="missing-image"),
        pytest.param([*PERFECT, (20, 2, [400, 300, 50, 50], 0.95)], None, id="extra-class"),
        pytest.param(
            [(10, 1, [10, 10, 100, 80], 0.2), (10, 1, [12, 10, 100, 80], 0.9), *PERFECT[1:]],
            None,
            id="duplicate",
        ),
        pytest.param([], 0.0, id="no-detections"),
    ],
)
@pytest.mark.parametrize("engine, tolerance", [("pycocotools", 1e-9), ("faster-coco-eval", 1e-4)])
def test_coco_matches_pycocotools(
    dets: list[tuple], ap: float | None, engine: str, tolerance: float, tmp_path: Path
) -> None:
    truth = coco_truth(GT)
    preds = predictions_from_outputs(as_outputs(dets), "p")
    inputs = coco_inputs(truth, preds, match_images(preds.names, truth.names))
    metrics = coco_metrics(inputs, engine)
    ours = [metrics[k] for k in STAT_NAMES]
    if dets:
        np.testing.assert_allclose(ours, direct(dets, tmp_path), atol=tolerance)
    if ap is not None:
        assert ours[0] == pytest.approx(ap)


def test_engines_agree_on_a_random_set() -> None:
    """60 images, up to 3 categories, jittered and random boxes: faster-coco-eval within 1e-4."""
    rng = np.random.default_rng(0)
    gt: dict = {"images": [], "categories": GT["categories"], "annotations": []}
    dets = []
    for i in range(1, 61):
        gt["images"].append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for _ in range(rng.integers(0, 6)):
            x, y, w, h = (*rng.uniform(0, 400, 2), *rng.uniform(4, 200, 2))
            c = int(rng.integers(1, 3))
            ann = {"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": c}
            gt["annotations"].append({**ann, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            if rng.random() < 0.8:
                jx, jy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
                dets.append((i, c, [x + jx, y + jy, w, h], float(rng.random())))
        dets.append((i, int(rng.integers(1, 3)), [10.0, 10.0, 30.0, 30.0], float(rng.random())))
    from vlmjobs.eval.coco import CocoInputs

    results = [
        {
            "id": n,
            "image_id": i,
            "category_id": c,
            "bbox": b,
            "area": b[2] * b[3],
            "iscrowd": 0,
            "score": s,
        }
        for n, (i, c, b, s) in enumerate(dets, start=1)
    ]
    inputs = CocoInputs(gt, results)
    slow, fast = coco_metrics(inputs, "pycocotools"), coco_metrics(inputs, "faster-coco-eval")
    assert 0.2 < slow["AP"] < 0.95
    np.testing.assert_allclose(list(fast.values()), list(slow.values()), atol=1e-4)


def test_unknown_phrases_are_left_out_and_counted(tmp_path: Path) -> None:
    dets = [*PERFECT, (20, 3, [400, 300, 50, 50], 0.95)]
    (row, _) = score(coco_truth(GT), predictions_from_outputs(as_outputs(dets), "p"), "coco")
    assert row.unknown_phrases == {"zebra": 1}
    assert row.metrics["AP"] == pytest.approx(direct(PERFECT, tmp_path)[0])


def test_class_agnostic_lets_any_phrase_find_any_box() -> None:
    swapped = [(i, 3 - c, b, s) for i, c, b, s in PERFECT]  # every label wrong
    preds = predictions_from_outputs(as_outputs(swapped), "p")
    assert score(coco_truth(GT), preds, "coco")[0].metrics["AP"] == 0.0
    assert score(coco_truth(GT), preds, "coco", class_agnostic=True)[0].metrics[
        "AP"
    ] == pytest.approx(1.0)


def test_confidence_one_row_ranks_by_output_order() -> None:
    # The wrong box comes first in output but has the lower score: confidence helps.
    dets = [(10, 1, [200, 200, 50, 50], 0.1), (10, 1, [10, 10, 100, 80], 0.9), *PERFECT[1:]]
    ranked, flat = score(coco_truth(GT), predictions_from_outputs(as_outputs(dets), "p"), "coco")
    assert (ranked.ranking, flat.ranking) == ("ranked", "confidence=1")
    assert ranked.metrics["AP"] > flat.metrics["AP"]


# An image with no ground truth at all, for a region that can be charged to no box.
GT_EMPTY_IMAGE = {
    **GT,
    "images": [*GT["images"], {**GT["images"][0], "id": 30, "file_name": "c.jpg"}],
}
FAR = -10_000.0  # pycocotools side: a false positive is a box that overlaps nothing


@pytest.mark.parametrize(
    "dets, as_false_positives, ap_fp",
    [
        pytest.param(
            [*PERFECT, (10, 3, [302, 198, 150, 150], 0.95)],
            [(10, 2, [FAR, 198, 150, 150], 0.95)],
            None,
            id="zebra-on-the-dog-outranks-it",
        ),
        pytest.param(
            [*PERFECT, (20, 3, [500, 400, 20, 20], 0.8)],
            [(20, 1, [FAR, 400, 20, 20], 0.8)],  # no overlap: the nearest box's class (cat)
            None,
            id="zebra-on-background-nearest-box",
        ),
        pytest.param(
            [*PERFECT, (10, 3, [FAR, 0, 10, 10], 0.1)],
            [(10, 1, [FAR, 0, 10, 10], 0.1)],
            1.0,
            id="zebra-ranked-last-costs-nothing",
        ),
        pytest.param(
            [*PERFECT, (30, 3, [0, 0, 100, 100], 0.99)],
            [(30, 1, [FAR, 0, 100, 100], 0.99), (30, 2, [FAR, 0, 100, 100], 0.99)],
            None,
            id="zebra-in-an-image-without-truth-every-category",
        ),
    ],
)
def test_unmatched_phrases_excluded_or_false_positives(
    dets: list[tuple], as_false_positives: list[tuple], ap_fp: float | None, tmp_path: Path
) -> None:
    """exclude scores as pycocotools on the known detections alone; fp as pycocotools with
    each unknown one turned into a box of its charged category that overlaps nothing."""
    truth = coco_truth(GT_EMPTY_IMAGE)
    preds = predictions_from_outputs(as_outputs(dets), "p")
    known = [d for d in dets if d[1] in CATS]
    excluded, _ = score(truth, preds, "coco")
    charged, _ = score(truth, preds, "coco", unmatched="fp")
    assert excluded.unknown_phrases == charged.unknown_phrases == {"zebra": len(dets) - len(known)}
    ours = {
        k: [row.metrics[s] for s in STAT_NAMES] for k, row in (("x", excluded), ("fp", charged))
    }
    np.testing.assert_allclose(ours["x"], direct(known, tmp_path, GT_EMPTY_IMAGE), atol=1e-9)
    want_fp = direct(known + as_false_positives, tmp_path, GT_EMPTY_IMAGE)
    np.testing.assert_allclose(ours["fp"], want_fp, atol=1e-9)
    if ap_fp is None:
        assert ours["fp"][0] < ours["x"][0]  # the case is built so that the error costs AP
    else:
        assert ours["fp"][0] == pytest.approx(ap_fp)


def test_unmatched_mode_is_checked() -> None:
    preds = predictions_from_outputs(as_outputs(PERFECT), "p")
    with pytest.raises(ValueError, match="'maybe' is not one of exclude, fp"):
        score(coco_truth(GT), preds, "coco", unmatched="maybe")
