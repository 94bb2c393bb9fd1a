"""Coordinate frames: smart_resize against transformers, conversions, clip/order/valid."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    smart_resize as hf_smart_resize,
)

from vlmjobs.vision import frames

MIN, MAX = 256 * 28 * 28, 1280 * 28 * 28


def _random_sizes(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:  # ordinary photos
            sizes.append((rng.randint(1, 4000), rng.randint(1, 4000)))
        elif kind < 0.8:  # extreme aspect ratios, below the 200 limit
            short = rng.randint(1, 60)
            sizes.append((short, min(short * 200, rng.randint(short, short * 200))))
        else:  # tiny images
            sizes.append((rng.randint(1, 40), rng.randint(1, 40)))
    return sizes


@pytest.mark.parametrize("min_pixels,max_pixels", [(MIN, MAX), (4 * 784, 64 * 784), (784, 784)])
def test_smart_resize_equals_transformers_on_random_sizes(min_pixels, max_pixels):
    for w, h in _random_sizes(3000, seed=min_pixels + max_pixels):
        if max(w, h) / min(w, h) > 200:
            continue
        want = hf_smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
        assert frames.smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels) == want


@pytest.mark.parametrize(
    "size",
    [
        (517, 383),  # case: ordinary, not multiples of 28
        (28, 28),  # case: exactly one merged patch
        (1, 1),  # case: one pixel
        (3, 500),  # case: tall sliver, aspect 167
        (600, 3),  # case: wide sliver, aspect 200 exactly
        (4000, 3000),  # case: above max_pixels
        (30, 20),  # case: below min_pixels
        (1036, 756),  # case: already multiples of 28
    ],
)
def test_input_size_equals_processor_grid(size):
    """The processor's own image_grid_thw * 14 is the frame the model sees."""
    proc = Qwen2VLImageProcessorPil(min_pixels=64 * 784, max_pixels=256 * 784)
    out = proc(images=[Image.new("RGB", size)], return_tensors="np")
    _, gh, gw = out["image_grid_thw"][0]
    assert frames.input_size(size, 64 * 784, 256 * 784) == (gw * 14, gh * 14)


@pytest.mark.parametrize(
    "size,message",
    [
        ((201, 1), "aspect ratio"),  # case: wide beyond 200
        ((1, 1000), "aspect ratio"),  # case: tall beyond 200
        ((0, 100), "positive"),  # case: zero width
        ((100, -5), "positive"),  # case: negative height
    ],
)
def test_input_size_rejects_bad_sizes(size, message):
    with pytest.raises(ValueError, match=message) as err:
        frames.input_size(size, MIN, MAX)
    assert f"{size[0]}x{size[1]}" in str(err.value)


BOX = np.array([[10.0, 20.0, 110.0, 220.0]])


@pytest.mark.parametrize(
    "fn,args,want",
    [
        (frames.to_input_frame, ((200, 400), (100, 100)), [[5, 5, 55, 55]]),  # case: shrink
        (frames.from_input_frame, ((100, 100), (200, 400)), [[20, 80, 220, 880]]),  # case: grow
        (frames.to_unit, ((200, 400),), [[0.05, 0.05, 0.55, 0.55]]),  # case: unit
        (frames.from_unit, ((2, 4),), [[20, 80, 220, 880]]),  # case: from unit
        (frames.to_1000, ((200, 400),), [[50, 50, 550, 550]]),  # case: 0-1000
        (frames.from_1000, ((1000, 2000),), [[10, 40, 110, 440]]),  # case: from 0-1000
        (frames.clip_boxes, ((100, 100),), [[10, 20, 100, 100]]),  # case: clip right/bottom
        (frames.order_corners, (), [[10, 20, 110, 220]]),  # case: already ordered
    ],
)
def test_conversions(fn, args, want):
    np.testing.assert_allclose(fn(BOX, *args), want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trips_are_identities(seed):
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 500, size=(50, 4))
    size, inp = (517, 383), frames.input_size((517, 383), MIN, MAX)
    back = frames.from_input_frame(frames.to_input_frame(boxes, size, inp), inp, size)
    np.testing.assert_allclose(back, boxes)
    np.testing.assert_allclose(frames.from_1000(frames.to_1000(boxes, size), size), boxes)
    np.testing.assert_allclose(frames.from_unit(frames.to_unit(boxes, size), size), boxes)


@pytest.mark.parametrize(
    "boxes,want",
    [
        ([[5, 5, 1, 1]], [[1, 1, 5, 5]]),  # case: both corners swapped
        ([[5, 1, 1, 5]], [[1, 1, 5, 5]]),  # case: x swapped only
        ([], np.zeros((0, 4))),  # case: empty
    ],
)
def test_order_corners(boxes, want):
    np.testing.assert_array_equal(frames.order_corners(boxes), want)


@pytest.mark.parametrize(
    "boxes,min_size,want",
    [
        ([[0, 0, 10, 10]], 1.0, [True]),  # case: ordinary box
        ([[0, 0, 0.5, 10]], 1.0, [False]),  # case: too narrow
        ([[0, 0, 10, 0]], 1.0, [False]),  # case: zero height
        ([[5, 5, 1, 1]], 1.0, [False]),  # case: inverted corners are not valid
        ([[0, 0, np.nan, 10]], 1.0, [False]),  # case: NaN coordinate
        ([[0, 0, 3, 3]], 4.0, [False]),  # case: below a larger min_size
        ([], 1.0, []),  # case: empty
    ],
)
def test_valid_mask(boxes, min_size, want):
    assert frames.valid_mask(boxes, min_size).tolist() == want


@pytest.mark.parametrize(
    "boxes,size,want",
    [
        ([[-5, -5, 50, 50]], (40, 30), [[0, 0, 40, 30]]),  # case: outside on all sides
        ([[1, 2, 3, 4]], (40, 30), [[1, 2, 3, 4]]),  # case: inside, unchanged
    ],
)
def test_clip_boxes(boxes, size, want):
    np.testing.assert_array_equal(frames.clip_boxes(boxes, size), want)


def test_bad_box_shape_is_named():
    with pytest.raises(ValueError, match=r"\(N, 4\).*\(3,\)"):
        frames.order_corners([1, 2, 3])
