"""The COCO export loads in supervision (`sv.DetectionDataset.from_coco`), run for real on
make-shapes images: with and without a ground truth, class-aware and class-agnostic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from vlmjobs.dev.shapes import make_shapes
from vlmjobs.eval.data import coco_truth
from vlmjobs.exports import to_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], list[dict]]:
    """6 make-shapes images, their truth rows, and the truth replayed as infer outputs
    (absolute sources, as infer records them; the last image's boxes dropped)."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=6, seed=5)
    rows = [json.loads(line) for line in (root / "truth.jsonl").read_text().splitlines()]
    outputs = [
        {
            "key": str(i),
            "source": str(root / row["image"]),
            "status": "ok",
            "image_w": row["width"],
            "image_h": row["height"],
            "regions": [{**r, "score": 0.5} for r in row["regions"]] if i < 5 else [],
        }
        for i, row in enumerate(rows)
    ]
    return root, rows, outputs


def load(doc: dict, root: Path, tmp_path: Path) -> sv.DetectionDataset:
    path = tmp_path / "preds.coco.json"
    path.write_text(json.dumps(doc))
    # The README's one-liner.
    return sv.DetectionDataset.from_coco(
        images_directory_path=str(root), annotations_path=str(path)
    )


def boxes_and_names(ds: sv.DetectionDataset, path: Path) -> tuple[np.ndarray, list[str]]:
    detections = ds.annotations[str(path.resolve())]
    assert detections.class_id is not None
    return detections.xyxy, [ds.classes[c] for c in detections.class_id]


def test_export_without_truth_loads_with_phrases_as_classes(shapes, tmp_path: Path) -> None:
    root, rows, outputs = shapes
    ds = load(to_coco(outputs), root, tmp_path)
    assert len(ds) == 6
    assert ds.classes == sorted({r["phrase"] for row in rows[:5] for r in row["regions"]})
    for row in rows:
        xyxy, names = boxes_and_names(ds, root / row["image"])
        want = row["regions"] if row is not rows[-1] else []
        want_xyxy = np.array([r["bbox"] for r in want], dtype=float).reshape(-1, 4)
        np.testing.assert_allclose(xyxy, want_xyxy, atol=1e-3)
        assert names == [r["phrase"] for r in want]
    image_path, image, _ = ds[0]  # the image itself loads (supervision reads the file)
    assert image.shape[:2] == (rows[0]["height"], rows[0]["width"])


def test_export_against_truth_loads_with_its_categories(shapes, tmp_path: Path) -> None:
    root, rows, outputs = shapes
    kinds = sorted({r["phrase"].split()[-1] for row in rows for r in row["regions"]})
    cat = {k: 10 + 5 * i for i, k in enumerate(kinds)}  # ids neither 1-based nor dense
    gt = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": k} for k, i in cat.items()],
    }
    for n, row in enumerate(rows, start=1):
        gt["images"].append(
            {
                "id": 100 + n,
                "file_name": row["image"],
                "width": row["width"],
                "height": row["height"],
            }
        )
        for r in row["regions"]:
            x1, y1, x2, y2 = r["bbox"]
            ann = {
                "id": len(gt["annotations"]) + 1,
                "image_id": 100 + n,
                "category_id": cat[r["phrase"].split()[-1]],
            }
            gt["annotations"].append(
                {
                    **ann,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    named = [
        {**o, "regions": [{**r, "phrase": r["phrase"].split()[-1]} for r in o["regions"]]}
        for o in outputs
    ]
    doc = to_coco(named, truth=coco_truth(gt))
    assert [i["file_name"] for i in doc["images"]] == [row["image"] for row in rows]  # relative
    ds = load(doc, root, tmp_path)
    assert ds.classes == kinds and len(ds) == 6
    for row in rows[:5]:
        xyxy, names = boxes_and_names(ds, root / row["image"])
        np.testing.assert_allclose(xyxy, [r["bbox"] for r in row["regions"]], atol=1e-3)
        assert names == [r["phrase"].split()[-1] for r in row["regions"]]


def test_class_agnostic_export_loads_as_one_class(shapes, tmp_path: Path) -> None:
    root, rows, outputs = shapes
    ds = load(to_coco(outputs, class_agnostic=True), root, tmp_path)
    n_regions = sum(len(row["regions"]) for row in rows[:5])
    assert ds.classes == ["region"]
    assert sum(len(d) for d in ds.annotations.values()) == n_regions
