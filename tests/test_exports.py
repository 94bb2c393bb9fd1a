"""Exports that load and score in the tools users use: pycocotools and label-studio-sdk."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlmjobs.eval.data import coco_truth
from vlmjobs.exports import image_url, labelstudio_config, to_coco, to_labelstudio

GT = {
    "images": [
        {"id": 7, "file_name": "val/a.png", "width": 200, "height": 100},
        {"id": 9, "file_name": "val/b.png", "width": 50, "height": 40},
    ],
    "categories": [{"id": 3, "name": "red square"}, {"id": 5, "name": "blue bar"}],
    "annotations": [
        {
            "id": 1,
            "image_id": 7,
            "category_id": 3,
            "bbox": [10, 20, 100, 50],
            "area": 5000,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 7,
            "category_id": 5,
            "bbox": [150, 5, 40, 90],
            "area": 3600,
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 9,
            "category_id": 5,
            "bbox": [5, 5, 20, 30],
            "area": 600,
            "iscrowd": 0,
        },
    ],
}


def output(source: str, regions: list[tuple[list[float], str, float | None]]) -> dict:
    return {
        "key": source,
        "source": source,
        "status": "ok",
        "image_w": 200,
        "image_h": 100,
        "regions": [{"bbox": b, "phrase": p, "score": s} for b, p, s in regions],
    }


PERFECT = [
    output("/data/set/val/b.png", [([5, 5, 25, 35], "Blue bar.", 0.8)]),
    output(
        "/data/set/val/a.png",
        [([10, 20, 110, 70], "a red square", 0.9), ([150, 5, 190, 95], "the blue bar", None)],
    ),
]


def coco_ap(gt: dict, dets: list[dict], tmp_path: Path, use_cats: bool = True) -> float:
    """pycocotools run the way its users run it: files, COCO(), loadRes, COCOeval."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.params.useCats = int(use_cats)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def test_coco_against_truth_uses_its_ids_and_scores_perfectly(tmp_path: Path) -> None:
    doc = to_coco(PERFECT, truth=coco_truth(GT))
    assert [(i["id"], i["file_name"]) for i in doc["images"]] == [
        (7, "val/a.png"),
        (9, "val/b.png"),
    ]
    assert doc["categories"] == [{"id": 3, "name": "red square"}, {"id": 5, "name": "blue bar"}]
    assert sorted((a["image_id"], a["category_id"]) for a in doc["annotations"]) == [
        (7, 3),
        (7, 5),
        (9, 5),
    ]
    assert all("score" in a for a in doc["annotations"])
    assert coco_ap(GT, doc["annotations"], tmp_path) == pytest.approx(1.0)


def test_coco_against_truth_reports_what_it_left_out() -> None:
    extra = [*PERFECT, output("/elsewhere/c.png", []), output("/data/set/val/d.png", [])]
    extra[0] = output("/data/set/val/b.png", [([5, 5, 25, 35], "green dot", 0.8)])
    info = to_coco(extra, truth=coco_truth(GT))["info"]
    assert info["images_unmatched"] == ["/data/set/val/d.png", "/elsewhere/c.png"]
    assert info["images_matched"] == 2 and info["regions_with_unknown_phrase"] == 1


def test_class_agnostic_keeps_the_phrase_and_scores_in_pycocotools(tmp_path: Path) -> None:
    doc = to_coco(PERFECT, class_agnostic=True)
    assert doc["categories"] == [{"id": 1, "name": "region", "supercategory": "region"}]
    assert [a["caption"] for a in doc["annotations"]] == [
        "a red square",
        "the blue bar",
        "Blue bar.",
    ]
    against = to_coco(PERFECT, truth=coco_truth(GT), class_agnostic=True)
    assert coco_ap(GT, against["annotations"], tmp_path, use_cats=False) == pytest.approx(1.0)


def test_zero_predictions_export_is_valid_coco(tmp_path: Path) -> None:
    doc = to_coco([output("/x/a.png", [])])
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(doc))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    assert coco.getImgIds() == [1] and coco.getAnnIds() == []
    # pycocotools itself cannot loadRes an empty list (it reads anns[0]): a known limit of
    # the library that `vlmjobs eval` works around; this row fails when pycocotools fixes it.
    with pytest.raises(IndexError):
        coco.loadRes([])


def test_zero_predictions_export_loads_with_loadres_of_faster_coco_eval(tmp_path: Path) -> None:
    """faster-coco-eval's loadRes (the `eval` extra) reads the empty detections list that
    pycocotools' cannot, and its COCOeval agrees with `vlmjobs eval` on the same file."""
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster

    from vlmjobs.eval.coco import STAT_NAMES
    from vlmjobs.eval.data import load_predictions
    from vlmjobs.eval.score import score

    doc = to_coco(
        [output("/data/set/val/a.png", []), output("/data/set/val/b.png", [])], truth=coco_truth(GT)
    )
    assert doc["annotations"] == [] and doc["info"]["images_matched"] == 2
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "empty.coco.json").write_text(json.dumps(doc))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = FasterCOCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval_faster(gt, gt.loadRes(doc["annotations"]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    truth = coco_truth(GT)
    (ranked, _) = score(truth, load_predictions(tmp_path / "empty.coco.json", truth), "coco")
    assert [ranked.metrics[k] for k in STAT_NAMES] == pytest.approx(list(evaluator.stats[:12]))
    assert ranked.metrics["AP"] == 0.0


def labelstudio_errors(config: str, tasks: list[dict]) -> list:
    interface = LabelInterface(config)
    return [e for t in tasks for e in interface.validate_prediction(t["predictions"][0], True)]


def test_labelstudio_captions_validate_with_the_sdk() -> None:
    tasks = to_labelstudio(
        PERFECT, "m", url=lambda s: image_url(s, "/data/set", "/data/local-files/?d=")
    )
    assert labelstudio_errors(labelstudio_config("captions"), tasks) == []
    rect, text = tasks[1]["predictions"][0]["result"][:2]
    assert rect["id"] == text["id"] and text["value"]["text"] == ["a red square"]
    assert rect["value"]["rectanglelabels"] == ["region"]
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=val/b.png"


def test_labelstudio_labels_need_every_phrase_in_the_config() -> None:
    tasks = to_labelstudio(PERFECT, "m", mode="labels")
    phrases = ["a red square", "the blue bar", "Blue bar."]
    assert labelstudio_errors(labelstudio_config("labels", phrases), tasks) == []
    assert labelstudio_errors(labelstudio_config("labels", phrases[:2]), tasks) != []
    captions = to_labelstudio(PERFECT, "m")  # captions against a label set: invalid
    assert labelstudio_errors(labelstudio_config("labels", phrases), captions) != []


@pytest.mark.parametrize(
    "source, root, base, want",
    [
        ("/d/img/a b.png", "/d", "http://h/files/", "http://h/files/img/a%20b.png"),  # case: quoted
        ("/d/a.png", "/d", "http://h/files", "http://h/files/a.png"),  # case: slash added
        ("/d/a.png", "/d/", "/data/local-files/?d=", "/data/local-files/?d=a.png"),  # case: query
        ("/e/a.png", "/d", "http://h/", ValueError),  # case: outside the root
    ],
)
def test_image_url(source: str, root: str, base: str, want: object) -> None:
    if want is ValueError:
        with pytest.raises(ValueError, match="/e/a.png"):
            image_url(source, root, base)
    else:
        assert image_url(source, root, base) == want
