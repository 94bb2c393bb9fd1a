"""Exports of infer outputs: jsonl, COCO, Label Studio and csv, as pure functions.

Each takes output dicts (what ``vlmjobs results`` reads from the database), boxes in
ORIGINAL image pixels:

    {"key", "source", "status", "parse_status", "raw_text", "error", "image_w", "image_h",
     "input_w", "input_h", "prompt_tokens", "generated_tokens", "latency_ms", "extra",
     "regions": [{"bbox": [x1, y1, x2, y2], "phrase": str, "score": float | None}]}

jsonl and csv stream; COCO and Label Studio are one JSON document each, built in memory.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

FORMATS = ("jsonl", "coco", "labelstudio", "csv")
CSV_FIELDS = ["key", "source", "image_w", "image_h", "x1", "y1", "x2", "y2", "phrase", "score"]


def jsonl_lines(outputs: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One JSON line per image (failed ones too, with their error)."""
    for out in outputs:
        yield json.dumps(out, ensure_ascii=False)


def to_coco(outputs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A COCO detection document: images (ok ones), categories (one per distinct phrase, sorted),
    annotations with ``bbox`` [x, y, w, h] and ``score``. Loads in pycocotools' COCO(); its
    ``annotations`` list is also a valid ``loadRes`` input."""
    images: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []
    for out in outputs:
        if out["status"] != "ok":
            continue
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": out["source"],
                "width": out["image_w"],
                "height": out["image_h"],
            }
        )
        pending += [(image_id, r) for r in out["regions"]]
    names = sorted({r["phrase"] for _, r in pending})
    category = {name: i + 1 for i, name in enumerate(names)}
    annotations = []
    for n, (image_id, r) in enumerate(pending, start=1):
        x1, y1, x2, y2 = r["bbox"]
        w, h = x2 - x1, y2 - y1
        annotations.append(
            {
                "id": n,
                "image_id": image_id,
                "category_id": category[r["phrase"]],
                "bbox": [x1, y1, w, h],
                "area": w * h,
                "iscrowd": 0,
                "score": 1.0 if r["score"] is None else r["score"],
            }
        )
    return {
        "info": {"description": "vlmjobs infer predictions"},
        "images": images,
        "categories": [
            {"id": i, "name": n, "supercategory": "region"} for n, i in category.items()
        ],
        "annotations": annotations,
    }


def to_labelstudio(outputs: Iterable[dict[str, Any]], model_version: str) -> list[dict[str, Any]]:
    """Label Studio tasks with predictions: rectangles in PERCENT of the original image,
    labels = phrases, per-region score; the prediction's score is the mean region score."""
    tasks = []
    for out in outputs:
        if out["status"] != "ok":
            continue
        w, h = out["image_w"], out["image_h"]
        result = [_ls_rect(i, r, w, h) for i, r in enumerate(out["regions"])]
        scores = [r["score"] for r in out["regions"] if r["score"] is not None]
        tasks.append(
            {
                "data": {"image": out["source"], "key": out["key"]},
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": sum(scores) / len(scores) if scores else None,
                        "result": result,
                    }
                ],
            }
        )
    return tasks


def _ls_rect(i: int, region: dict[str, Any], w: int, h: int) -> dict[str, Any]:
    x1, y1, x2, y2 = region["bbox"]
    return {
        "id": f"r{i}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "score": region["score"],
        "value": {
            "x": 100.0 * x1 / w,
            "y": 100.0 * y1 / h,
            "width": 100.0 * (x2 - x1) / w,
            "height": 100.0 * (y2 - y1) / h,
            "rotation": 0,
            "rectanglelabels": [region["phrase"]],
        },
    }


def write_csv(outputs: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """One row per region (images without regions have no row); returns the row count."""
    writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    rows = 0
    for out in outputs:
        for r in out["regions"]:
            x1, y1, x2, y2 = r["bbox"]
            writer.writerow(
                {
                    "key": out["key"],
                    "source": out["source"],
                    "image_w": out["image_w"],
                    "image_h": out["image_h"],
                    **{"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                    "phrase": r["phrase"],
                    "score": "" if r["score"] is None else r["score"],
                }
            )
            rows += 1
    return rows


def export(outputs: Iterable[dict[str, Any]], fmt: str, stream: TextIO, model_version: str) -> None:
    """Write ``outputs`` to ``stream`` in ``fmt`` (one of FORMATS)."""
    if fmt == "jsonl":
        for line in jsonl_lines(outputs):
            stream.write(line + "\n")
    elif fmt == "csv":
        write_csv(outputs, stream)
    elif fmt == "coco":
        json.dump(to_coco(outputs), stream, ensure_ascii=False)
    elif fmt == "labelstudio":
        json.dump(to_labelstudio(outputs, model_version), stream, ensure_ascii=False)
    else:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
