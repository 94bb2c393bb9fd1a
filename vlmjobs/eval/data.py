"""Ground truth and predictions, read into one shape whatever file they came from.

Ground truth (``load_truth``): COCO instances JSON, Visual Genome
``region_descriptions.json``, our ``regions.jsonl``, or ``{image, suffix}`` JSONL (the
expected answer of a JSON or text task). Predictions (``predictions_from_outputs`` /
``load_predictions``): infer outputs (a job, or its jsonl export) or a COCO file that
vlmjobs exported (a whole document, or a bare ``loadRes`` list when the truth is COCO).
Boxes are xyxy in original-image pixels, as everywhere in vlmjobs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vlmjobs.vision.regions import Regions

TruthKind = Literal["coco", "regions", "text"]


@dataclass
class Truth:
    """``regions`` and ``texts`` by image name (path relative to the truth's image root);
    ``categories`` (COCO truth only) maps category id -> name."""

    kind: TruthKind
    regions: dict[str, Regions] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    categories: dict[int, str] | None = None
    image_ids: dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.texts) if self.kind == "text" else list(self.regions)


@dataclass
class Predictions:
    """One model's answers by image name: regions (scores always set) and raw text."""

    label: str
    regions: dict[str, Regions] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.regions, *self.texts]))


def _xywh(box: list[float]) -> list[float]:
    x, y, w, h = box
    return [x, y, x + w, y + h]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not JSON ({e.msg}): one object a line") from e
    return rows


def load_truth(path: Path) -> Truth:
    """Read a ground-truth file, recognised by its shape; ValueError says what was expected."""
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
        if rows and all("suffix" in r and "image" in r for r in rows):
            return Truth("text", texts={str(r["image"]): str(r["suffix"]) for r in rows})
        if all("regions" in r and "image" in r for r in rows):
            return _regions_truth(rows)
    else:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and {"images", "annotations", "categories"} <= doc.keys():
            return coco_truth(doc)
        if isinstance(doc, list) and all(isinstance(d, dict) and "regions" in d for d in doc):
            return _visual_genome_truth(doc, path.parent / "image_data.json")
    raise ValueError(
        f"ground truth {str(path)!r} is none of: COCO instances JSON, Visual Genome "
        "region_descriptions.json, regions.jsonl ({image, regions: [{bbox, phrase}]}), "
        "or {image, suffix} JSONL"
    )


def _regions_truth(rows: list[dict[str, Any]]) -> Truth:
    truth = Truth("regions")
    for row in rows:
        name = str(row["image"])
        truth.regions[name] = Regions.from_json(row["regions"])
        if "width" in row and "height" in row:
            truth.sizes[name] = (int(row["width"]), int(row["height"]))
    return truth


def coco_truth(doc: dict[str, Any]) -> Truth:
    """A COCO instances document; crowd regions are kept out (pycocotools ignores them too)."""
    categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
    names = {int(i["id"]): str(i["file_name"]) for i in doc["images"]}
    truth = Truth("coco", categories=categories, image_ids={n: i for i, n in names.items()})
    truth.sizes = {str(i["file_name"]): (int(i["width"]), int(i["height"])) for i in doc["images"]}
    boxes: dict[str, list[list[float]]] = {n: [] for n in names.values()}
    phrases: dict[str, list[str]] = {n: [] for n in names.values()}
    for ann in doc["annotations"]:
        if ann.get("iscrowd"):
            continue
        name = names[int(ann["image_id"])]
        boxes[name].append(_xywh(ann["bbox"]))
        phrases[name].append(categories[int(ann["category_id"])])
    truth.regions = {
        n: Regions(np.array(boxes[n], dtype=np.float64).reshape(-1, 4), phrases[n])
        for n in names.values()
    }
    return truth


def _visual_genome_truth(doc: list[dict[str, Any]], image_data: Path) -> Truth:
    # Visual Genome names images by id; image_data.json beside it (when there) has the URL.
    urls: dict[int, str] = {}
    if image_data.is_file():
        urls = {int(d["image_id"]): str(d["url"]) for d in json.loads(image_data.read_text())}
    truth = Truth("regions")
    for entry in doc:
        image_id = int(entry.get("id", entry.get("image_id", 0)))
        name = urls.get(image_id, f"{image_id}.jpg")
        name = name.rsplit("://", 1)[-1]
        items = [
            {"bbox": _xywh([r["x"], r["y"], r["width"], r["height"]]), "phrase": r["phrase"]}
            for r in entry["regions"]
        ]
        truth.regions[name] = Regions.from_json(items)
    return truth


def predictions_from_outputs(outputs: Iterable[dict[str, Any]], label: str) -> Predictions:
    """Infer outputs (a job's, or its jsonl export) or regions.jsonl rows: regions of ok
    images, a region without a confidence ranked as 1.0 (what the COCO export writes)."""
    preds = Predictions(label)
    for n, out in enumerate(outputs, 1):
        if "source" not in out and "image" not in out:
            raise ValueError(
                f"prediction {n} has neither 'source' (infer output) nor 'image' (regions.jsonl)"
            )
        name = str(out.get("source", out.get("image")))
        if out.get("t_start") is not None:  # a video's sampled frame (make-shapes --video names)
            name += f"#t={float(out['t_start']):.3f}"
        if out.get("status", "ok") != "ok":
            preds.failed.append(name)
            continue
        items = out.get("regions") or []
        scores = [1.0 if r.get("score") is None else float(r["score"]) for r in items]
        regions = Regions.from_json(items)
        preds.regions[name] = Regions(regions.boxes, regions.phrases, np.array(scores))
        preds.texts[name] = str(out.get("raw_text") or "")
    return preds


def load_predictions(path: Path, truth: Truth) -> Predictions:
    """A file vlmjobs exported: infer jsonl, a COCO document, or a COCO results list."""
    label = path.name
    if path.suffix == ".jsonl":
        return predictions_from_outputs(_read_jsonl(path), label)
    doc = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(doc, dict) and {"images", "annotations"} <= doc.keys():
        names = {int(i["id"]): str(i["file_name"]) for i in doc["images"]}
        categories = {int(c["id"]): str(c["name"]) for c in doc.get("categories", [])}
        return _coco_predictions(doc["annotations"], names, categories, label)
    if isinstance(doc, list) and truth.kind == "coco" and truth.categories is not None:
        names = {i: n for n, i in truth.image_ids.items()}
        return _coco_predictions(doc, names, truth.categories, label)
    raise ValueError(
        f"predictions {str(path)!r} are none of: infer jsonl (`vlmjobs results ID`), a COCO "
        "document (`vlmjobs results ID --format coco`), or a COCO results list (with COCO --gt)"
    )


def _coco_predictions(
    anns: list[dict[str, Any]], names: dict[int, str], categories: dict[int, str], label: str
) -> Predictions:
    grouped: dict[str, list[dict[str, Any]]] = {n: [] for n in names.values()}
    for ann in anns:
        # --class-agnostic exports keep the phrase in `caption` under one category.
        phrase = ann.get("caption") or categories.get(int(ann["category_id"]), "")
        grouped[names[int(ann["image_id"])]].append(
            {"bbox": _xywh(ann["bbox"]), "phrase": phrase, "score": float(ann.get("score", 1.0))}
        )
    preds = Predictions(label)
    for name, items in grouped.items():
        regions = Regions.from_json(items)
        scores = np.array([i["score"] for i in items]) if items else np.zeros(0)
        preds.regions[name] = Regions(regions.boxes, regions.phrases, scores)
    return preds
