"""Boxes and phrases drawn so that people can read them: infer overlays and clean panels.

Placement follows supervision's label annotator: each label is a filled tag in the
box's colour with black or white text, whichever contrasts more; it sits above the
box's top-left corner, or inside the box, or below it, whichever of these stays in
the image and covers the fewest other boxes and labels. A legend under the image
lists every region with its score, highest first. Small images are drawn enlarged
(to ``MIN_SIDE`` px) so that text stays legible without covering the whole image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

MIN_SIDE = 480  # draw small images at least this large (the demo's are ~128 px)
KEPT = (40, 170, 80)
DROPPED = (215, 50, 50)
Box = tuple[float, float, float, float]


def colour_of(phrase: str) -> tuple[int, int, int]:
    """A stable, saturated colour per phrase (same phrase, same colour, in every image)."""
    d = hashlib.sha256(phrase.encode()).digest()
    r, g, b = d[0], d[1], d[2]
    lo = min(r, g, b)
    return (r - lo + 40, g - lo + 40, b - lo + 40)


def text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with ``fill`` (WCAG relative luminance)."""

    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    lum = 0.2126 * channel(fill[0]) + 0.7152 * channel(fill[1]) + 0.0722 * channel(fill[2])
    # Contrast with black (lum + 0.05) / 0.05 against white 1.05 / (lum + 0.05).
    return (0, 0, 0) if (lum + 0.05) ** 2 > 0.05 * 1.05 else (255, 255, 255)


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def place_label(
    box: Box, size: tuple[float, float], image: tuple[int, int], taken: Sequence[Box]
) -> Box:
    """Where a ``size`` (w, h) tag for ``box`` goes: above, inside the top, or below the
    box, shifted into the ``image`` (w, h); the candidate covering least of ``taken``
    (other boxes' areas and placed tags) wins, ties to the earlier candidate."""
    w, h = size
    x1, y1, x2, y2 = box
    candidates = [(x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h)]
    best: tuple[float, Box] | None = None
    for x, y in candidates:
        x = min(max(0.0, x), max(0.0, image[0] - w))
        y = min(max(0.0, y), max(0.0, image[1] - h))
        tag = (x, y, x + w, y + h)
        cost = sum(_overlap(tag, t) for t in taken)
        if best is None or cost < best[0]:
            best = (cost, tag)
    assert best is not None
    return best[1]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _label(r: dict[str, Any]) -> str:
    return r["phrase"] if r.get("score") is None else f"{r['phrase']} {r['score']:.2f}"


def _enlarged(image: Image.Image) -> tuple[Image.Image, float]:
    scale = max(1.0, MIN_SIDE / min(image.size))
    if scale == 1.0:
        return image.convert("RGB"), 1.0
    size = (round(image.width * scale), round(image.height * scale))
    return image.convert("RGB").resize(size, Image.Resampling.NEAREST), scale


def draw_boxes(
    image: Image.Image,
    regions: list[dict[str, Any]],
    colours: list[tuple[int, int, int]] | None = None,
) -> tuple[Image.Image, float]:
    """``image`` (enlarged when small) with each region's box and label tag drawn.

    regions: ``{"bbox": [x1, y1, x2, y2] original px, "phrase", "score" (or None)}``.
    Returns the drawing and the scale applied to original pixels.
    """
    out, scale = _enlarged(image)
    draw = ImageDraw.Draw(out)
    line = max(2, min(out.size) // 200)
    font = _font(max(12, min(out.size) // 32))
    boxes = [tuple(v * scale for v in r["bbox"]) for r in regions]
    colours = colours or [colour_of(r["phrase"]) for r in regions]
    for box, colour in zip(boxes, colours, strict=True):
        draw.rectangle(box, outline=colour, width=line)
    taken: list[Box] = []
    for i, (r, box, colour) in enumerate(zip(regions, boxes, colours, strict=True)):
        text = _label(r)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = 3
        size = (right - left + 2 * pad, bottom - top + 2 * pad)
        others = [b for j, b in enumerate(boxes) if j != i]
        tag = place_label(box, size, out.size, [*others, *taken])  # type: ignore[arg-type]
        taken.append(tag)
        draw.rectangle(tag, fill=colour)
        draw.text(
            (tag[0] + pad - left, tag[1] + pad - top), text, fill=text_colour(colour), font=font
        )
    return out, scale


def legend(width: int, rows: list[tuple[tuple[int, int, int], str]], title: str) -> Image.Image:
    """A white strip ``width`` px wide: a title line, then one swatch + text line per row."""
    font = _font(14)
    line_h = 20
    strip = Image.new("RGB", (width, 8 + line_h * (len(rows) + 1)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    draw.text((8, 4), title, fill=(0, 0, 0), font=font)
    for n, (colour, text) in enumerate(rows, start=1):
        y = 4 + n * line_h
        draw.rectangle((8, y + 3, 22, y + 15), fill=colour)
        draw.text((30, y), text, fill=(0, 0, 0), font=font)
    return strip


def stack(top: Image.Image, bottom: Image.Image) -> Image.Image:
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out


def draw_regions(image: Image.Image, regions: list[dict[str, Any]]) -> Image.Image:
    """An infer overlay: boxes with label tags, and a legend of the regions by score."""
    drawn, _ = draw_boxes(image, regions)
    # Highest score first; regions without a score last.
    ranked = sorted(regions, key=lambda r: (r.get("score") is None, -float(r.get("score") or 0.0)))
    scores = [r["score"] for r in regions if r.get("score") is not None]
    span = f", scores {min(scores):.2f}-{max(scores):.2f}" if scores else ""
    rows = [(colour_of(r["phrase"]), _label(r)) for r in ranked]
    title = f"{len(regions)} region(s){span}" if regions else "no regions found"
    return stack(drawn, legend(drawn.width, rows, title))


def draw_panel(
    image: Image.Image,
    before: list[dict[str, Any]],
    kept: list[bool],
    after: list[dict[str, Any]],
    title: str,
) -> Image.Image:
    """Clean's before | after panel: left every annotated region, kept ones green and
    dropped ones (merged or removed) red; right the regions written; a legend below."""
    colours = [KEPT if k else DROPPED for k in kept]
    left, _ = draw_boxes(image, before, colours)
    right, _ = draw_boxes(image, after, [KEPT] * len(after))
    gap = 12
    both = Image.new("RGB", (left.width + gap + right.width, left.height), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width + gap, 0))
    rows = [(KEPT if k else DROPPED, ("kept: " if k else "dropped: ") + r["phrase"])
            for r, k in zip(before, kept, strict=True)]  # fmt: skip
    head = f"{title}: {len(before)} annotated (left) -> {len(after)} kept (right)"
    return stack(both, legend(both.width, rows, head))
