"""A synthetic dense-captioning data set with exact ground truth: coloured shapes on backgrounds.

``make_shapes(out, n=500, seed=0)`` writes::

    out/images/000001.png ...      200-700 px a side, never a multiple of 28
    out/regions.jsonl              {"image", "width", "height", "regions": [{"bbox", "phrase"}]}
    out/region_descriptions.json   Visual Genome layout: [{"id", "regions": [{"region_id",
                                   "image_id", "phrase", "x", "y", "width", "height"}]}]
    out/image_data.json            [{"image_id", "width", "height", "url"}] (url: relative path)
    out/truth.jsonl                as regions.jsonl, without the duplicate annotations

Each image holds 1-5 shapes ("a small red circle", "a large blue triangle"; the size
word comes from the box's share of the image area). Boxes are the exact pixel extent
of what was drawn, xyxy in original pixels. Like Visual Genome, about ``duplicates``
of the images carry a second, slightly shifted annotation of one shape with a
reworded phrase, which clean's de-duplication should remove (truth.jsonl has none).
Image i depends only on (seed, i), so the first k images are the same for any n >= k.

``style="demo"`` draws what a model small enough to train on two CPU cores in minutes
can learn: ~112 px images, a white background, one big shape (35-60% of the short
side, at a random place) of four kinds in four colours. ``style="full"`` (the default)
is the set above.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from vlmjobs.vision.frames import FACTOR

SHAPES = ("square", "rectangle", "circle", "ellipse", "triangle", "diamond", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "orange": (245, 130, 20),
    "purple": (140, 50, 170),
    "pink": (240, 120, 190),
    "brown": (120, 70, 25),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
    "gray": (128, 128, 128),
    "cyan": (30, 200, 220),
}
# Box area as a share of the image area -> size word.
SIZE_WORDS = ((0.02, "small"), (0.08, "medium"), (1.01, "large"))
MIN_SIDE, MAX_SIDE = 200, 700


@dataclass(frozen=True)
class Style:
    """What images of a data set look like: sizes, background, how many shapes, which."""

    min_side: int
    max_side: int
    max_shapes: int
    background: str  # graded (random colours) | ramp (light, brighter to the right and down)
    # | plain (white)
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    min_share: float  # smallest shape side as a share of the short image side
    max_share: float = 0.45  # largest one


STYLES = {
    "full": Style(MIN_SIDE, MAX_SIDE, 5, "graded", SHAPES, tuple(COLOURS), 0.06),
    # Few kinds, big shapes on white, ~112 px images (9-16 image tokens): learnable by the
    # demo model. Not so big that a box in the middle of every image would score: sides of
    # 35-60% leave a constant box at mean IoU ~0.34 (tests/vision/test_shapes.py).
    "demo": Style(
        min_side=100,
        max_side=124,
        max_shapes=1,
        background="plain",
        shapes=("square", "circle", "triangle", "star"),
        colours=("red", "green", "blue", "black"),
        min_share=0.35,
        max_share=0.6,
    ),
}


def size_word(box: list[int], width: int, height: int) -> str:
    """small | medium | large from the box's share of the image area."""
    share = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
    return next(word for limit, word in SIZE_WORDS if share < limit)


def _image_size(rng: random.Random, style: Style) -> tuple[int, int]:
    """(w, h) in the style's range, never a multiple of 28, so the resize path always runs."""
    w, h = rng.randint(style.min_side, style.max_side), rng.randint(style.min_side, style.max_side)
    return w - (w % FACTOR == 0), h - (h % FACTOR == 0)


def _background(
    rng: random.Random, size: tuple[int, int], kind: str
) -> tuple[Image.Image, np.ndarray]:
    """A solid or vertically graded background of random colours, or a light ``ramp``
    (red rises left to right, green top to bottom: every pixel's colour says where it is,
    which a small model learns to read much sooner than positions); returns the image and
    its mean colour."""
    w, h = size
    if kind == "plain":
        return Image.new("RGB", size, (255, 255, 255)), np.full(3, 255.0)
    if kind == "ramp":
        x = np.linspace(150.0, 250.0, w)[None, :].repeat(h, axis=0)
        y = np.linspace(150.0, 250.0, h)[:, None].repeat(w, axis=1)
        pixels = np.stack([x, y, np.full((h, w), 235.0)], axis=2)
        return Image.fromarray(pixels.astype(np.uint8), "RGB"), pixels.mean(axis=(0, 1))
    top = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float64)
    bottom = top if rng.random() < 0.5 else np.array([rng.randint(0, 255) for _ in range(3)])
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    pixels = (top * (1 - t) + bottom * t).repeat(w, axis=1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), (top + bottom) / 2


def _pick_colour(rng: random.Random, background: np.ndarray, colours: tuple[str, ...]) -> str:
    """A colour name that stands out from the background (RGB distance above 120)."""
    names = [n for n in colours if np.linalg.norm(np.array(COLOURS[n]) - background) > 120]
    return rng.choice(names or list(colours))


def _polygon(shape: str, x: int, y: int, w: int, h: int) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape in the box at (x, y) of w x h; None for round shapes."""
    if shape in ("square", "rectangle"):
        return [(x, y), (x + w - 1, y), (x + w - 1, y + h - 1), (x, y + h - 1)]
    if shape == "triangle":
        return [(x + (w - 1) / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)]
    if shape == "diamond":
        return [(x + (w - 1) / 2, y), (x + w - 1, y + (h - 1) / 2), (x + (w - 1) / 2, y + h - 1),
                (x, y + (h - 1) / 2)]  # fmt: skip
    if shape == "star":
        cx, cy, r = x + (w - 1) / 2, y + (h - 1) / 2, (w - 1) / 2
        return [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]  # fmt: skip
    return None


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: list[int], colour: str) -> list[int]:
    """Draw ``shape`` filling ``box`` (x1, y1, x2, y2; x2/y2 exclusive); returns its exact
    pixel extent, which for polygons with rounded vertices can be a pixel smaller."""
    x, y, w, h = box[0], box[1], box[2] - box[0], box[3] - box[1]
    rgb = COLOURS[colour]
    points = _polygon(shape, x, y, w, h)
    if points is None:
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=rgb)
        return box
    pixels = [(round(px), round(py)) for px, py in points]
    draw.polygon(pixels, fill=rgb)
    xs, ys = [p[0] for p in pixels], [p[1] for p in pixels]
    return [min(xs), min(ys), max(xs) + 1, max(ys) + 1]


def _shape_box(rng: random.Random, shape: str, size: tuple[int, int], look: Style) -> list[int]:
    """A random box for ``shape``: side min_share-max_share of the short image side, at a
    random place inside the image."""
    w, h = size
    side = rng.randint(int(look.min_share * min(w, h)), int(look.max_share * min(w, h)))
    bw, bh = side, side
    if shape in ("rectangle", "ellipse"):  # never square, so the word stays true
        bh = max(8, int(side * rng.choice([0.45, 0.55, 1.7, 2.0])))
        bh = min(bh, h - 2)
    x, y = rng.randint(0, w - bw), rng.randint(0, h - bh)
    return [x, y, x + bw, y + bh]


def make_image(
    seed: int, index: int, style: str = "full"
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Image ``index`` of data set ``seed`` and its exact regions ({"bbox", "phrase"})."""
    look = STYLES[style]
    rng = random.Random(seed * 1_000_003 + index)
    size = _image_size(rng, look)
    image, mean = _background(rng, size, look.background)
    draw = ImageDraw.Draw(image)
    regions: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, look.max_shapes)):
        shape = rng.choice(look.shapes)
        for _try in range(20):
            box = _shape_box(rng, shape, size, look)
            if not any(_intersect(box, r["bbox"]) for r in regions):
                break
        else:
            continue  # no free space left for this one
        colour = _pick_colour(rng, mean, look.colours)
        extent = _draw(draw, shape, box, colour)
        phrase = f"a {size_word(extent, *size)} {colour} {shape}"
        regions.append({"bbox": extent, "phrase": phrase})
    return image, regions


def _intersect(a: list[int], b: list[int]) -> bool:
    """Boxes share pixels (x2/y2 exclusive). Shapes never do, so no shape hides another."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def duplicate_of(rng: random.Random, region: dict[str, Any], size: tuple[int, int]) -> dict:
    """A Visual-Genome-like second annotation: box shifted by up to 3 px, phrase reworded."""
    w, h = size
    x1, y1, x2, y2 = (v + rng.randint(-3, 3) for v in region["bbox"])
    box = [max(0, x1), max(0, y1), min(w, max(x2, x1 + 2)), min(h, max(y2, y1 + 2))]
    words = region["phrase"].split()  # "a <size> <colour> <shape>"
    phrase = rng.choice([" ".join(words[1:]), f"a {words[2]} {words[3]}", region["phrase"]])
    return {"bbox": box, "phrase": phrase}


def make_shapes(
    out: Path, n: int = 500, seed: int = 0, *, duplicates: float = 0.1, style: str = "full"
) -> Path:
    """Write ``n`` images and their annotations under ``out`` (layout in the module doc).

    Returns ``out``. Deterministic for (seed, n, style); about ``duplicates`` of the images
    get one extra near-duplicate annotation in regions.jsonl and the Visual Genome files.
    """
    if n < 1:
        raise ValueError(f"n={n}: need at least one image")
    if style not in STYLES:
        raise ValueError(f"style {style!r} is not one of {', '.join(STYLES)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, truth, vg_regions, vg_images = [], [], [], []
    region_id = 0
    for index in range(1, n + 1):
        image, regions = make_image(seed, index, style)
        name = f"images/{index:06d}.png"
        image.save(out / name, compress_level=1)
        w, h = image.size
        truth.append({"image": name, "width": w, "height": h, "regions": regions})
        rng = random.Random(seed * 7_919 + index)
        annotated = list(regions)
        if regions and rng.random() < duplicates:
            annotated.append(duplicate_of(rng, rng.choice(regions), (w, h)))
        rows.append({"image": name, "width": w, "height": h, "regions": annotated})
        vg = []
        for r in annotated:
            region_id += 1
            x1, y1, x2, y2 = r["bbox"]
            vg.append({"region_id": region_id, "image_id": index, "phrase": r["phrase"],
                       "x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1})  # fmt: skip
        vg_regions.append({"id": index, "regions": vg})
        vg_images.append({"image_id": index, "width": w, "height": h, "url": name})
    _write_jsonl(out / "regions.jsonl", rows)
    _write_jsonl(out / "truth.jsonl", truth)
    (out / "region_descriptions.json").write_text(json.dumps(vg_regions) + "\n")
    (out / "image_data.json").write_text(json.dumps(vg_images) + "\n")
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
