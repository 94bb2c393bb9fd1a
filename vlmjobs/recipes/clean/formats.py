"""Input readers of the clean job: every format becomes a stream of :class:`Item`.

| format  | file                                     | boxes from                     |
| ------- | ---------------------------------------- | ------------------------------ |
| vg      | region_descriptions.json (+ image_data.json beside it for sizes) | x, y, width, height |
| coco    | instances_*.json / captions_*.json       | bbox [x, y, w, h]; crowd boxes dropped |
| regions | regions.jsonl (what make-shapes writes)  | bbox [x1, y1, x2, y2]          |
| jsonl   | {"image", "prefix", "suffix"} per line   | none: the suffix is the target |

A bad record (unparseable line, no image field) becomes an Item with ``problem``
set: the job skips, counts and lists it. A bad region inside a good record is
dropped and counted in ``Item.malformed``. Only a file that is unreadable as a
whole raises :class:`~vlmjobs.errors.DataError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmjobs.errors import DataError

# Looked for, in this order, when the input is a directory.
KNOWN_FILES = {"regions.jsonl": "regions", "region_descriptions.json": "vg"}


@dataclass
class Item:
    """One image's annotations. ``boxes`` (N, 4) float64 xyxy in ORIGINAL pixels."""

    key: str  # unique within the source: the image id or the record's image path
    image: Path
    size: tuple[int, int] | None = None  # declared (w, h); None: read from the file
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    phrases: list[str] = field(default_factory=list)
    prompt: str | None = None  # jsonl: the record's prefix
    target: str | None = None  # jsonl: the record's suffix, as text
    malformed: int = 0  # regions dropped because a field was missing or not a number
    problem: str | None = None  # set: the whole record is skipped with this reason


@dataclass
class Source:
    """What a reader found: the format, the default task, and the items (lazily)."""

    format: str
    task: str  # the default task for this data (dense_caption, detect, caption, ...)
    content: str  # regions: boxes + phrases; captions: phrases only; targets: ready text
    total: int  # number of items the iterator will yield
    items: Iterator[Item]
    path: Path = Path()
    labels: list[str] = field(default_factory=list)  # detect: every category name


def open_source(path: Path, fmt: str = "auto", images_dir: Path | None = None) -> Source:
    """Detect the format (unless named) and return a :class:`Source` for ``path``."""
    path = _resolve_file(path, fmt)
    if fmt == "auto":
        fmt = detect_format(path)
    readers: dict[str, Callable[..., Source]] = {
        "vg": read_vg,
        "coco": read_coco,
        "regions": read_regions,
        "jsonl": read_jsonl,
    }
    if fmt not in readers:
        raise DataError(f"format {fmt!r} is not one of auto, {', '.join(readers)}")
    if fmt in ("vg", "coco"):
        return readers[fmt](path, images_dir or path.parent)
    return readers[fmt](path)


def _resolve_file(path: Path, fmt: str) -> Path:
    """The annotation file of ``path`` (a file, or a directory holding a known one)."""
    if not path.is_dir():
        return path
    for name, known in KNOWN_FILES.items():
        if fmt in ("auto", known) and (path / name).is_file():
            return path / name
    found = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl"))
    if len(found) == 1:
        return found[0]
    raise DataError(
        f"input directory {str(path)!r} holds {len(found)} .json/.jsonl files and none of "
        f"{', '.join(KNOWN_FILES)}: give the annotation file itself as input"
    )


def detect_format(path: Path) -> str:
    """vg | coco | regions | jsonl, from the file's first record; DataError when unsure."""
    if path.suffix == ".jsonl":
        first = _first_json_line(path)
        if "regions" in first:
            return "regions"
        if "suffix" in first or "prefix" in first:
            return "jsonl"
        raise DataError(
            f"{path}: first record has keys {sorted(first)}, neither regions.jsonl "
            "(image, regions) nor prompt JSONL (image, prefix, suffix): set format"
        )
    head = path.open("rb").read(4096).lstrip()
    if head.startswith(b"["):
        return "vg"
    if head.startswith(b"{") and (
        b'"images"' in head or b'"info"' in head or b'"annotations"' in head
    ):
        return "coco"
    if path.name.startswith("region_descriptions"):
        return "vg"
    raise DataError(f"{path}: cannot tell VG from COCO by its start: set format: vg or coco")


def _first_json_line(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: first line is not JSON ({e}): fix it") from e
                if isinstance(record, dict):
                    return record
                raise DataError(f"{path}: first line is a {type(record).__name__}, not an object")
    raise DataError(f"{path} is empty: nothing to clean")


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({e}): check the file") from e


def _xywh_boxes(raw: list[Any]) -> tuple[np.ndarray, list[int]]:
    """[[x, y, w, h], ...] -> ((M, 4) xyxy, indices of the M rows that were numbers)."""
    rows, ok = [], []
    for i, b in enumerate(raw):
        try:
            x, y, w, h = (float(v) for v in b)
        except (TypeError, ValueError):
            continue
        rows.append((x, y, x + w, y + h))
        ok.append(i)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4), ok


def _phrase(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# ---- Visual Genome ---------------------------------------------------------------------


def read_vg(path: Path, images_dir: Path) -> Source:
    """region_descriptions.json: [{"id", "regions": [{"x", "y", "width", "height", "phrase"}]}]."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: Visual Genome region_descriptions is a list, got {type(data)}")
    meta = _vg_image_data(path.parent / "image_data.json")
    return Source(
        "vg", "dense_caption", "regions", len(data), _vg_items(data, meta, images_dir), path
    )


def _vg_image_data(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [m for m in _load_json(path) if isinstance(m, dict)]
    return {int(m.get("image_id", m.get("id")) or 0): m for m in rows}


def _vg_path(image_id: int, meta: dict[str, Any], images_dir: Path) -> Path:
    """VG ships images in VG_100K/ and VG_100K_2/; image_data's url names which."""
    url = str(meta.get("url") or "")
    tail = url.split("/")[-2:] if url else []
    candidates = [images_dir.joinpath(*tail)] if len(tail) == 2 else []
    candidates += [images_dir / f"{image_id}.jpg"]
    candidates += [images_dir / d / f"{image_id}.jpg" for d in ("VG_100K", "VG_100K_2")]
    return next((c for c in candidates if c.is_file()), candidates[0])


def _vg_items(data: list[Any], meta: dict[int, dict[str, Any]], images_dir: Path) -> Iterator[Item]:
    for n, rec in enumerate(data):
        image_id = rec.get("id", rec.get("image_id")) if isinstance(rec, dict) else None
        if image_id is None or not isinstance(rec.get("regions"), list):
            yield Item(f"#{n}", Path(), problem=f"record {n}: no id or regions list")
            continue
        m = meta.get(int(image_id), {})
        regions = [r for r in rec["regions"] if isinstance(r, dict)]
        xywh = [[r.get("x"), r.get("y"), r.get("width"), r.get("height")] for r in regions]
        boxes, ok = _xywh_boxes(xywh)
        phrases = [_phrase(regions[i].get("phrase")) for i in ok]
        keep = [j for j, p in enumerate(phrases) if p is not None]
        size = (int(m["width"]), int(m["height"])) if "width" in m and "height" in m else None
        yield Item(
            key=str(image_id),
            image=_vg_path(int(image_id), m, images_dir).resolve(),
            size=size,
            boxes=boxes[keep],
            phrases=[phrases[j] for j in keep],  # type: ignore[misc]
            malformed=len(rec["regions"]) - len(keep),
        )


# ---- COCO --------------------------------------------------------------------------------


def read_coco(path: Path, images_dir: Path) -> Source:
    """COCO instances (bbox + category_id) or captions (caption) JSON."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: COCO JSON needs an 'images' list: check the file")
    anns = [a for a in data.get("annotations", []) if isinstance(a, dict)]
    captions = bool(anns) and "caption" in anns[0] and "bbox" not in anns[0]
    names = {c.get("id"): str(c.get("name")) for c in data.get("categories", [])}
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)
    images = [im for im in data["images"] if isinstance(im, dict)]
    items = _coco_items(images, by_image, names, images_dir, captions)
    labels = [] if captions else sorted(set(names.values()))
    task, content = ("caption", "captions") if captions else ("detect", "regions")
    return Source("coco", task, content, len(images), items, path, labels)


def _coco_items(
    images: list[dict[str, Any]],
    by_image: dict[Any, list[dict[str, Any]]],
    names: dict[Any, str],
    images_dir: Path,
    captions: bool,
) -> Iterator[Item]:
    for im in images:
        if im.get("id") is None or not im.get("file_name"):
            yield Item(f"#{im.get('id')}", Path(), problem="image entry without id or file_name")
            continue
        anns = by_image.get(im["id"], [])
        size = (
            (int(im["width"]), int(im["height"])) if im.get("width") and im.get("height") else None
        )
        item = Item(str(im["id"]), (images_dir / im["file_name"]).resolve(), size)
        if captions:
            item.phrases = [p for p in (_phrase(a.get("caption")) for a in anns) if p]
            item.malformed = len(anns) - len(item.phrases)
        else:
            # Crowd boxes cover many instances at once; detection training ignores them.
            anns = [a for a in anns if not a.get("iscrowd")]
            boxes, ok = _xywh_boxes([a.get("bbox") for a in anns])
            labels = [names.get(anns[i].get("category_id")) for i in ok]
            keep = [j for j, label in enumerate(labels) if label]
            item.boxes, item.phrases = boxes[keep], [labels[j] for j in keep]  # type: ignore[misc]
            item.malformed = len(anns) - len(keep)
        yield item


# ---- JSONL formats ---------------------------------------------------------------------


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, record) or (line number, reason) for every non-empty line."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                yield n, f"line {n}: not JSON ({e.msg})"
                continue
            if not isinstance(record, dict) or not isinstance(record.get("image"), str):
                yield n, f"line {n}: not an object with an 'image' path"
                continue
            yield n, record


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _image_path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def read_regions(path: Path) -> Source:
    """regions.jsonl: {"image", "width", "height", "regions": [{"bbox", "phrase"}]} a line."""
    return Source(
        "regions", "dense_caption", "regions", _count_lines(path), _regions_items(path), path
    )


def _regions_items(path: Path) -> Iterator[Item]:
    for n, rec in _jsonl_records(path):
        if isinstance(rec, str):
            yield Item(f"line {n}", Path(), problem=rec)
            continue
        regions = [r for r in rec.get("regions") or [] if isinstance(r, dict)]
        rows, phrases = [], []
        for r in regions:
            bbox, phrase = r.get("bbox"), _phrase(r.get("phrase"))
            try:
                row = [float(v) for v in bbox]  # type: ignore[union-attr]
            except (TypeError, ValueError):
                continue
            if len(row) == 4 and phrase:
                rows.append(row)
                phrases.append(phrase)
        w, h = rec.get("width"), rec.get("height")
        yield Item(
            key=rec["image"],
            image=_image_path(path.parent, rec["image"]),
            size=(int(w), int(h)) if isinstance(w, int) and isinstance(h, int) else None,
            boxes=np.asarray(rows, dtype=np.float64).reshape(-1, 4),
            phrases=phrases,
            malformed=len(rec.get("regions") or []) - len(rows),
        )


def read_jsonl(path: Path) -> Source:
    """{"image", "prefix", "suffix"} a line; suffix a string or a JSON object (extraction)."""
    first = _first_json_line(path)
    suffix = first.get("suffix")
    task = "extract_json" if isinstance(suffix, dict | list) or _is_json_text(suffix) else "custom"
    return Source("jsonl", task, "targets", _count_lines(path), _jsonl_items(path), path)


def _is_json_text(value: Any) -> bool:
    if not isinstance(value, str) or not value.lstrip().startswith(("{", "[")):
        return False
    try:
        json.loads(value)
    except json.JSONDecodeError:
        return False
    return True


def _jsonl_items(path: Path) -> Iterator[Item]:
    for n, rec in _jsonl_records(path):
        if isinstance(rec, str):
            yield Item(f"line {n}", Path(), problem=rec)
            continue
        suffix = rec.get("suffix")
        if isinstance(suffix, dict | list):
            suffix = json.dumps(suffix, ensure_ascii=False)
        if not isinstance(suffix, str) or not suffix.strip():
            yield Item(f"line {n}", Path(), problem=f"line {n}: no suffix (the target text)")
            continue
        prefix = rec.get("prefix")
        yield Item(
            key=f"line {n}",
            image=_image_path(path.parent, rec["image"]),
            prompt=prefix if isinstance(prefix, str) and prefix.strip() else None,
            target=suffix,
        )
