"""Image checks and before/after panels of the clean job.

A missing, unreadable or mis-sized image is a reason string, never an
exception: the job skips the image, counts it and lists it in the report.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlmjobs import settings
from vlmjobs.specs.common import outside_roots

# What PIL raises on files that are not images, truncated or absurdly large.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

BEFORE_COLOUR = (230, 60, 60)
AFTER_COLOUR = (40, 190, 80)
PANEL_WIDTH = 512  # px per half of a panel


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


def _draw_half(image: Image.Image, boxes: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    scale = PANEL_WIDTH / image.width
    half = image.resize((PANEL_WIDTH, max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(half)
    for x1, y1, x2, y2 in np.asarray(boxes, dtype=float).reshape(-1, 4) * scale:
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
    return half


def draw_panel(
    image_path: Path, before: np.ndarray, after: np.ndarray, out: Path, title: str = ""
) -> Path | None:
    """Save a PNG: the image with boxes before (left, red) and after (right, green).

    Boxes (N, 4) in ORIGINAL pixels. Returns None when the image cannot be decoded.
    """
    try:
        with Image.open(image_path) as im:
            image = im.convert("RGB")
    except IMAGE_ERRORS:
        return None
    left = _draw_half(image, before, BEFORE_COLOUR)
    right = _draw_half(image, after, AFTER_COLOUR)
    panel = Image.new("RGB", (2 * PANEL_WIDTH, left.height + 16), (255, 255, 255))
    panel.paste(left, (0, 16))
    panel.paste(right, (PANEL_WIDTH, 16))
    caption = f"{title}  before: {len(before)}  after: {len(after)}"
    ImageDraw.Draw(panel).text((4, 2), caption, fill=(0, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    panel.save(out)
    return out
