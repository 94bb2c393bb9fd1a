"""Image checks and before/after panels of the clean job.

A missing, unreadable or mis-sized image is a reason string, never an
exception: the job skips the image, counts it and lists it in the report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmjobs import render, settings
from vlmjobs.specs.common import outside_roots
from vlmjobs.vision.regions import iou_matrix

# What PIL raises on files that are not images, truncated or absurdly large.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def check_image(
    path: Path, declared: tuple[int, int] | None, mode: str = "header"
) -> tuple[tuple[int, int] | None, tuple[str, str] | None]:
    """``((w, h), None)`` for a usable image, ``(None, (kind, message))`` otherwise.

    kind: outside_roots | missing | unreadable | wrong_size.
    ``mode`` header reads only the header (~0.2 ms); decode decodes the pixels too,
    which also finds truncated files (~10 ms for a VG-sized JPEG).
    """
    refused = outside_roots(path, settings.allowed_roots(), "image")
    if refused:  # annotations may name any path; VLMJOBS_ALLOWED_ROOTS holds per image too
        return None, ("outside_roots", refused)
    if not path.is_file():
        return None, ("missing", f"no file at {path}")
    try:
        with Image.open(path) as im:
            size = (int(im.size[0]), int(im.size[1]))
            if mode == "decode":
                im.load()
    except IMAGE_ERRORS as e:
        return None, ("unreadable", f"{path}: {type(e).__name__}: {e}")
    if declared is not None and tuple(declared) != size:
        return None, (
            "wrong_size",
            f"{path} is {size[0]}x{size[1]} but the annotations say "
            f"{declared[0]}x{declared[1]}: its boxes would be in the wrong frame",
        )
    return size, None


def safe_name(key: str) -> str:
    """A file-name-safe form of an item key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:80] or "item"


def kept_mask(
    before: tuple[np.ndarray, list[str]], kept: tuple[np.ndarray, list[str]]
) -> list[bool]:
    """For each annotated region (boxes (N, 4), phrases), whether it is one of the kept
    ones: same phrase and the same box up to clipping (IoU above 0.99)."""
    boxes, phrases = before
    kept_boxes, kept_phrases = kept
    iou = iou_matrix(np.asarray(boxes, dtype=float), np.asarray(kept_boxes, dtype=float))
    return [
        any(iou[i, j] > 0.99 and kept_phrases[j] == phrase for j in range(len(kept_phrases)))
        for i, phrase in enumerate(phrases)
    ]


def draw_panel(
    image_path: Path,
    before: tuple[np.ndarray, list[str]],
    kept: tuple[np.ndarray, list[str]],
    out: Path,
) -> Path | None:
    """Save a PNG: every annotated region (left; dropped ones red, with their phrases) and
    the regions kept (right). Boxes (N, 4) in ORIGINAL pixels; None when the image cannot
    be decoded."""
    try:
        with Image.open(image_path) as im:
            image = im.convert("RGB")
    except IMAGE_ERRORS:
        return None

    def regions(boxes: np.ndarray, phrases: list[str]) -> list[dict[str, Any]]:
        rows = np.asarray(boxes, dtype=float).reshape(-1, 4).tolist()
        return [{"bbox": b, "phrase": p, "score": None} for b, p in zip(rows, phrases, strict=True)]

    panel = render.draw_panel(
        image, regions(*before), kept_mask(before, kept), regions(*kept), image_path.name
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    panel.save(out)
    return out
