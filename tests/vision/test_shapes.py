"""make_shapes: exact boxes, both annotation layouts, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmjobs.dev.shapes import COLOURS, SHAPES, STYLES, make_image, make_shapes, size_word
from vlmjobs.dev.shapes_score import matched_ious

N = 40


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "s", n=N, seed=3, duplicates=0.5)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_boxes_are_the_exact_extent_of_the_drawn_shape(shapes):
    phrase = re.compile(rf"^a (small|medium|large) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})$")
    for row in _rows(shapes / "truth.jsonl"):
        pixels = np.asarray(Image.open(shapes / row["image"]).convert("RGB")).astype(int)
        assert pixels.shape == (row["height"], row["width"], 3)
        for region in row["regions"]:
            size, colour, _ = phrase.match(region["phrase"]).groups()
            x1, y1, x2, y2 = region["bbox"]
            assert size == size_word(region["bbox"], row["width"], row["height"])
            # look 3 px around the box: the colour must fill exactly up to the box edges
            ox, oy = max(0, x1 - 3), max(0, y1 - 3)
            window = pixels[oy : y2 + 3, ox : x2 + 3]
            ys, xs = np.nonzero((window == COLOURS[colour]).all(axis=2))
            assert [xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1] == [
                x1, y1, x2, y2,
            ], (row["image"], region)  # fmt: skip


def test_sizes_are_varied_and_never_multiples_of_28(shapes):
    rows = _rows(shapes / "truth.jsonl")
    sizes = {(r["width"], r["height"]) for r in rows}
    assert len(sizes) == N
    assert all(200 <= s <= 700 and s % 28 for size in sizes for s in size)
    counts = {len(r["regions"]) for r in rows}
    assert counts <= {1, 2, 3, 4, 5} and len(counts) >= 4


def test_visual_genome_layout_matches_regions_jsonl(shapes):
    rows = _rows(shapes / "regions.jsonl")
    vg = json.loads((shapes / "region_descriptions.json").read_text())
    images = json.loads((shapes / "image_data.json").read_text())
    assert [v["id"] for v in vg] == [i["image_id"] for i in images] == list(range(1, N + 1))
    ids = [r["region_id"] for v in vg for r in v["regions"]]
    assert len(ids) == len(set(ids))
    for row, v, info in zip(rows, vg, images, strict=True):
        assert (info["width"], info["height"], info["url"]) == (
            row["width"],
            row["height"],
            row["image"],
        )
        got = [
            {
                "bbox": [r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"]],
                "phrase": r["phrase"],
            }
            for r in v["regions"]
        ]
        assert got == row["regions"]


def test_duplicates_are_extra_near_copies(shapes):
    truth, raw = _rows(shapes / "truth.jsonl"), _rows(shapes / "regions.jsonl")
    extra = 0
    for t, r in zip(truth, raw, strict=True):
        assert r["regions"][: len(t["regions"])] == t["regions"]
        for dup in r["regions"][len(t["regions"]) :]:
            extra += 1
            near = [
                g
                for g in t["regions"]
                if max(abs(a - b) for a, b in zip(g["bbox"], dup["bbox"], strict=True)) <= 3
            ]
            assert near and dup["phrase"].split()[-1] == near[0]["phrase"].split()[-1]
    assert 5 <= extra <= 35  # about half of 40 images with duplicates=0.5


def test_deterministic_by_seed_and_prefix_stable(shapes, tmp_path):
    again = make_shapes(tmp_path / "again", n=N, seed=3, duplicates=0.5)
    assert _digest(again) == _digest(shapes)
    other = make_shapes(tmp_path / "other", n=5, seed=4)
    assert _rows(other / "truth.jsonl") != _rows(shapes / "truth.jsonl")[:5]
    prefix = make_shapes(tmp_path / "prefix", n=5, seed=3, duplicates=0.5)
    assert _rows(prefix / "regions.jsonl") == _rows(shapes / "regions.jsonl")[:5]


def test_zero_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n=0"):
        make_shapes(tmp_path, n=0)


def test_demo_style_is_small_plain_and_one_shape_of_few_kinds(tmp_path):
    root = make_shapes(tmp_path / "demo", n=30, seed=1, duplicates=0.0, style="demo")
    look = STYLES["demo"]
    lefts, sides = set(), set()
    for row in _rows(root / "truth.jsonl"):
        assert look.min_side <= min(row["width"], row["height"]) <= row["width"] <= look.max_side
        (region,) = row["regions"]
        _, size, colour, shape = region["phrase"].split()
        assert colour in look.colours and shape in look.shapes
        pixels = np.asarray(Image.open(root / row["image"]).convert("RGB")).astype(int)
        x1, y1, x2, y2 = region["bbox"]
        outside = np.ones(pixels.shape[:2], dtype=bool)
        outside[y1:y2, x1:x2] = False
        assert (pixels[outside] == 255).all()  # a plain white background
        assert (pixels[y1:y2, x1:x2] == COLOURS[colour]).all(axis=2).any()  # the shape is there
        short = min(row["width"], row["height"])
        # a star spans ~95% of its box: allow 10%
        assert 0.9 * look.min_share * short <= x2 - x1 <= look.max_share * short
        lefts.add(x1), sides.add(x2 - x1)
    assert len(lefts) > 15 and len(sides) > 10  # places and sizes are not snapped to a grid


def test_demo_style_gives_a_constant_box_no_pass():
    """The demo's target (mean IoU and F1 at IoU 0.5 both >= 0.5) must take real localising:
    the best box that ignores the image stays far below it on the demo style."""
    best_mean, best_hits = 0.0, 0.0
    for margin in np.linspace(0.1, 0.45, 15):
        ious = []
        for index in range(1, 201):
            image, regions = make_image(1, index, "demo")
            w, h = image.size
            box = np.array([[margin * w, margin * h, (1 - margin) * w, (1 - margin) * h]])
            ious += matched_ious(box, np.array([r["bbox"] for r in regions], dtype=float))
        best_mean = max(best_mean, float(np.mean(ious)))
        best_hits = max(best_hits, float(np.mean(np.array(ious) >= 0.5)))
    assert best_mean < 0.4 and best_hits < 0.25


def test_unknown_style_is_named(tmp_path):
    with pytest.raises(ValueError, match="style 'huge' is not one of full, demo"):
        make_shapes(tmp_path / "x", n=1, style="huge")
