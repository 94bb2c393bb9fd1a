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
from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, TextIO
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

from vlmjobs.eval.coco import coco_annotation, coco_inputs
from vlmjobs.eval.data import Truth, predictions_from_outputs
from vlmjobs.eval.images import match_images

FORMATS = ("jsonl", "coco", "labelstudio", "csv")
LS_MODES = ("captions", "labels")
CSV_FIELDS = [
    "key", "source", "image_w", "image_h", "x1", "y1", "x2", "y2", "phrase", "score",
    "t_start", "t_end",
]  # fmt: skip


def frame_name(out: dict[str, Any]) -> str:
    """An image's source; a video row's ``<source>#t=<t_start>``, the name ``make-shapes
    --video`` gives that frame in its truth.jsonl."""
    t = out.get("t_start")
    return str(out["source"]) if t is None else f"{out['source']}#t={t:.3f}"


def jsonl_lines(outputs: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One JSON line per image or video row (failed ones too, with their error); a video's
    rows carry ``t_start`` / ``t_end`` (seconds)."""
    for out in outputs:
        yield json.dumps(out, ensure_ascii=False)


def to_coco(
    outputs: Iterable[dict[str, Any]], *, truth: Truth | None = None, class_agnostic: bool = False
) -> dict[str, Any]:
    """A COCO detection document: images, categories, annotations with ``bbox`` [x, y, w, h],
    ``area`` and ``score`` (1.0 where a region has none). Loads in pycocotools' COCO().

    With ``truth`` (a ground truth read by ``vlmjobs.eval.data.load_truth``) image ids, file
    names and categories are the truth's, images matched by file name and phrases by
    normalised name, so the annotations score against it in COCOeval; predictions that
    match no image or no category are left out and counted in ``info``. Without it images
    are numbered by sorted path and there is a category per distinct phrase, sorted.
    ``class_agnostic``: one category, "region", with each phrase kept in ``caption`` (with a
    COCO truth: the truth's first category, as COCOeval's ``useCats=0`` needs a known id).
    An empty ``annotations`` list is valid COCO: faster-coco-eval's ``loadRes`` and
    ``vlmjobs eval`` read it; pycocotools' ``loadRes`` fails on any empty list.
    """
    ok = sorted(
        (o for o in outputs if o["status"] == "ok"),
        key=lambda o: (str(o["source"]), o.get("t_start") or 0.0),
    )
    if truth is not None:
        return _coco_against(ok, truth, class_agnostic)
    # A video's sampled frame is an image of its own: file name <video>#t=<seconds>.
    images = [
        {"id": i, "file_name": frame_name(o), "width": o["image_w"], "height": o["image_h"]}
        | ({} if o.get("t_start") is None else {"video": o["source"], "t": o["t_start"]})
        for i, o in enumerate(ok, start=1)
    ]
    names = (
        ["region"] if class_agnostic else sorted({r["phrase"] for o in ok for r in o["regions"]})
    )
    category = {name: i for i, name in enumerate(names, start=1)}
    annotations: list[dict[str, Any]] = []
    for image, out in zip(images, ok, strict=True):
        for r in out["regions"]:
            cat = category["region" if class_agnostic else r["phrase"]]
            ann = _coco_annotation(len(annotations) + 1, image["id"], cat, r)
            if class_agnostic:
                ann["caption"] = r["phrase"]
            annotations.append(ann)
    return {
        "info": {"description": "vlmjobs infer predictions"},
        "images": images,
        "categories": [
            {"id": i, "name": n, "supercategory": "region"} for n, i in category.items()
        ],
        "annotations": annotations,
    }


def _coco_annotation(ann_id: int, image_id: int, category_id: int, region: dict) -> dict[str, Any]:
    score = 1.0 if region["score"] is None else region["score"]
    return coco_annotation(ann_id, image_id, category_id, region["bbox"]) | {"score": score}


def _coco_against(ok: list[dict[str, Any]], truth: Truth, class_agnostic: bool) -> dict[str, Any]:
    preds = predictions_from_outputs(ok, "export")
    match = match_images(preds.names, truth.names)
    inputs = coco_inputs(truth, preds, match, class_agnostic=class_agnostic)
    categories = inputs.gt["categories"]
    if class_agnostic and truth.categories:
        # COCOeval with useCats=0 still reads only the truth's category ids: use its first.
        first = min(truth.categories)
        categories = [{"id": i, "name": n} for i, n in truth.categories.items()]
        inputs.dt = [{**d, "category_id": first} for d in inputs.dt]
    return {
        "info": {
            "description": "vlmjobs infer predictions, ids and categories of the ground truth",
            "images_matched": len(match.pairs),
            "images_unmatched": sorted(match.unmatched_pred + match.ambiguous),
            "regions_with_unknown_phrase": sum(inputs.unknown.values()),
        },
        "images": inputs.gt["images"],
        "categories": categories,
        "annotations": inputs.dt,
    }


def labelstudio_config(mode: str = "captions", phrases: Iterable[str] = ()) -> str:
    """The Label Studio labeling config that ``to_labelstudio(..., mode=mode)`` fits.

    captions: one "region" label and a per-region TextArea holding the phrase (dense
    captioning: any phrase is valid). labels: a Label per phrase (a fixed label set).
    """
    if mode == "captions":
        controls = (
            '  <RectangleLabels name="label" toName="image">\n'
            '    <Label value="region"/>\n'
            "  </RectangleLabels>\n"
            '  <TextArea name="caption" toName="image" perRegion="true" editable="true"'
            ' maxSubmissions="1" placeholder="phrase"/>\n'
        )
    elif mode == "labels":
        labels = "".join(
            f'    <Label value="{xml_escape(p, {chr(34): "&quot;"})}"/>\n'
            for p in sorted(set(phrases))
        )
        controls = (
            f'  <RectangleLabels name="label" toName="image">\n{labels}  </RectangleLabels>\n'
        )
    else:
        raise ValueError(f"Label Studio mode {mode!r} is not one of {', '.join(LS_MODES)}")
    return f'<View>\n  <Image name="image" value="$image" zoom="true"/>\n{controls}</View>\n'


def image_url(source: str, root: str, base_url: str) -> str:
    """``base_url`` + ``source``'s path under ``root``, URL-quoted: what Label Studio serves
    (e.g. base "/data/local-files/?d=photos/"). ValueError when ``source`` is not under root."""
    rel = PurePosixPath(source).relative_to(PurePosixPath(root)).as_posix()
    joiner = "" if base_url.endswith(("/", "=")) else "/"
    return base_url + joiner + quote(rel)


def to_labelstudio(
    outputs: Iterable[dict[str, Any]],
    model_version: str,
    *,
    mode: str = "captions",
    url: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Label Studio tasks with predictions: rectangles in PERCENT of the original image, per-
    region score; the prediction's score is the mean region score. captions mode pairs each
    rectangle with a TextArea result by region id; labels mode labels it with the phrase.
    ``url(source)`` turns paths into URLs Label Studio can show (default: paths as they are)."""
    if mode not in LS_MODES:
        raise ValueError(f"Label Studio mode {mode!r} is not one of {', '.join(LS_MODES)}")
    tasks = []
    for out in outputs:
        if out["status"] != "ok":
            continue
        w, h = out["image_w"], out["image_h"]
        result = []
        for i, r in enumerate(out["regions"]):
            result += _ls_region(i, r, w, h, mode)
        scores = [r["score"] for r in out["regions"] if r["score"] is not None]
        source = out["source"]
        tasks.append(
            {
                "data": {"image": url(source) if url else source, "key": out["key"]},
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


def _ls_region(i: int, region: dict[str, Any], w: int, h: int, mode: str) -> list[dict[str, Any]]:
    x1, y1, x2, y2 = region["bbox"]
    geometry = {
        "x": 100.0 * x1 / w,
        "y": 100.0 * y1 / h,
        "width": 100.0 * (x2 - x1) / w,
        "height": 100.0 * (y2 - y1) / h,
        "rotation": 0,
    }
    common = {"id": f"r{i}", "to_name": "image", "original_width": w, "original_height": h}
    common |= {"image_rotation": 0, "score": region["score"]}
    label = "region" if mode == "captions" else region["phrase"]
    rect = {**common, "type": "rectanglelabels", "from_name": "label"}
    rect["value"] = {**geometry, "rectanglelabels": [label]}
    if mode == "labels":
        return [rect]
    text = {**common, "type": "textarea", "from_name": "caption"}
    text["value"] = {**geometry, "text": [region["phrase"]]}
    return [rect, text]


# Cell starts a spreadsheet runs as a formula (OWASP "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell that cannot run as a formula: one starting with = + - @ tab or CR gets a
    leading ' (OWASP's advice); numbers and other text pass unchanged. Model output and
    file names reach these cells, so they are untrusted."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


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
                    "key": csv_safe(out["key"]),
                    "source": csv_safe(out["source"]),
                    "image_w": out["image_w"],
                    "image_h": out["image_h"],
                    **{"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                    "phrase": csv_safe(r["phrase"]),
                    "score": "" if r["score"] is None else r["score"],
                    "t_start": "" if out.get("t_start") is None else out["t_start"],
                    "t_end": "" if out.get("t_end") is None else out["t_end"],
                }
            )
            rows += 1
    return rows


def export(
    outputs: Iterable[dict[str, Any]],
    fmt: str,
    stream: TextIO,
    model_version: str,
    *,
    truth: Truth | None = None,
    class_agnostic: bool = False,
    ls_mode: str = "captions",
    url: Callable[[str], str] | None = None,
) -> None:
    """Write ``outputs`` to ``stream`` in ``fmt`` (one of FORMATS); the keywords are
    :func:`to_coco`'s and :func:`to_labelstudio`'s."""
    if fmt == "jsonl":
        for line in jsonl_lines(outputs):
            stream.write(line + "\n")
    elif fmt == "csv":
        write_csv(outputs, stream)
    elif fmt == "coco":
        doc = to_coco(outputs, truth=truth, class_agnostic=class_agnostic)
        json.dump(doc, stream, ensure_ascii=False)
    elif fmt == "labelstudio":
        tasks = to_labelstudio(outputs, model_version, mode=ls_mode, url=url)
        json.dump(tasks, stream, ensure_ascii=False)
    else:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
