"""Coordinate frames: the ONLY place where boxes change frame.

Four frames, all boxes ``(N, 4)`` float64 ``xyxy``:

- original: pixels of the image on disk (what vlmjobs stores everywhere);
- input: pixels of the image after the processor's ``smart_resize`` (what
  Qwen2.5-VL reads and writes in its text);
- unit: 0-1 of the image width/height;
- 1000: 0-1000 of the image width/height (Qwen-VL / Qwen2-VL / Qwen3-VL convention).

What a model writes in its text is one of two conventions (``vision/family.py`` says
which per model family): ``absolute`` (input-frame pixels, Qwen2.5-VL) or ``1000``;
:func:`to_model_frame` / :func:`from_model_frame` convert between original pixels and it.

Sizes are always ``(width, height)`` tuples, except in :func:`smart_resize`,
which keeps transformers' ``(height, width)`` argument order.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

# Qwen2.5-VL: 14 px patches merged 2x2, so the resized image is a multiple of 28.
FACTOR = 28
# transformers raises beyond this aspect ratio; we raise first with the size named.
MAX_ASPECT = 200

Size = tuple[int, int]
# How a model writes boxes in its text: input-frame pixels, or 0-1000 of the image.
Convention = Literal["absolute", "1000"]
CONVENTIONS: tuple[Convention, ...] = ("absolute", "1000")


def smart_resize(
    height: int, width: int, *, min_pixels: int, max_pixels: int, factor: int = FACTOR
) -> tuple[int, int]:
    """Return ``(h, w)`` of the processor's resize: multiples of ``factor``, pixels in range.

    The same arithmetic as ``transformers.models.qwen2_vl.image_processing_qwen2_vl
    .smart_resize`` (tests compare the two on many sizes). Raises ``ValueError`` for
    non-positive sizes and aspect ratios above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size {width}x{height} (WxH) must be positive in both dimensions")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(
            f"image size {width}x{height} (WxH) has aspect ratio above {MAX_ASPECT}, "
            "which Qwen-VL processors reject: crop or pad the image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def input_size(image_size: Size, min_pixels: int, max_pixels: int, *, factor: int = FACTOR) -> Size:
    """``(w, h)`` of the frame the model sees for an original ``(w, h)`` image.

    ``factor``: the family's patch x merge (28 for Qwen2/2.5-VL, 32 for Qwen3-VL).
    """
    w, h = image_size
    rh, rw = smart_resize(
        int(h), int(w), min_pixels=min_pixels, max_pixels=max_pixels, factor=factor
    )
    return rw, rh


def as_boxes(boxes: np.ndarray | list) -> np.ndarray:
    """Any ``(N, 4)``-shaped input (list of lists, empty list) as float64 ``(N, 4)``."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def _check_size(size: Size, what: str) -> None:
    if len(size) != 2 or size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{what} {size!r} must be (width, height) with both positive")


def _scale(boxes: np.ndarray, to: Size, frm: Size) -> np.ndarray:
    """Boxes * to / frm per axis. Multiplying before dividing keeps integer inputs exact
    (28 * 100 / 1000 is 2.8, where 28 * (100 / 1000) is 2.8000000000000003)."""
    num = np.array([to[0], to[1], to[0], to[1]], dtype=np.float64)
    den = np.array([frm[0], frm[1], frm[0], frm[1]], dtype=np.float64)
    return as_boxes(boxes) * num / den


def to_input_frame(boxes: np.ndarray, image_size: Size, input_size: Size) -> np.ndarray:
    """Original pixels -> input-frame pixels (float; round only when writing text)."""
    _check_size(image_size, "image_size")
    _check_size(input_size, "input_size")
    return _scale(boxes, input_size, image_size)


def from_input_frame(boxes: np.ndarray, input_size: Size, image_size: Size) -> np.ndarray:
    """Input-frame pixels (what the model wrote) -> original pixels."""
    _check_size(image_size, "image_size")
    _check_size(input_size, "input_size")
    return _scale(boxes, image_size, input_size)


def to_unit(boxes: np.ndarray, size: Size) -> np.ndarray:
    """Pixels of an image of ``size`` (w, h) -> 0-1."""
    _check_size(size, "size")
    return _scale(boxes, (1, 1), size)


def from_unit(boxes: np.ndarray, size: Size) -> np.ndarray:
    """0-1 -> pixels of an image of ``size`` (w, h)."""
    _check_size(size, "size")
    return _scale(boxes, size, (1, 1))


def to_1000(boxes: np.ndarray, size: Size) -> np.ndarray:
    """Pixels of an image of ``size`` (w, h) -> 0-1000 (Qwen2-VL convention)."""
    _check_size(size, "size")
    return _scale(boxes, (1000, 1000), size)


def from_1000(boxes: np.ndarray, size: Size) -> np.ndarray:
    """0-1000 (Qwen2-VL convention) -> pixels of an image of ``size`` (w, h)."""
    _check_size(size, "size")
    return _scale(boxes, size, (1000, 1000))


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} must be one of {', '.join(CONVENTIONS)}")


def to_model_frame(
    boxes: np.ndarray, image_size: Size, input_size: Size, convention: Convention
) -> np.ndarray:
    """Original pixels -> what the model writes: input-frame pixels or 0-1000 of the image.

    ``input_size`` is used only by ``absolute``; it is asked for always so that a caller
    cannot forget it when switching families.
    """
    _check_convention(convention)
    if convention == "absolute":
        return to_input_frame(boxes, image_size, input_size)
    return to_1000(boxes, image_size)


def from_model_frame(
    boxes: np.ndarray, input_size: Size, image_size: Size, convention: Convention
) -> np.ndarray:
    """What the model wrote (input-frame pixels or 0-1000) -> original pixels."""
    _check_convention(convention)
    if convention == "absolute":
        return from_input_frame(boxes, input_size, image_size)
    _check_size(input_size, "input_size")
    return from_1000(boxes, image_size)


def clip_boxes(boxes: np.ndarray, size: Size) -> np.ndarray:
    """Clip to ``[0, w] x [0, h]`` of ``size`` (w, h); returns a new array."""
    _check_size(size, "size")
    out = as_boxes(boxes).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[1])
    return out


def order_corners(boxes: np.ndarray) -> np.ndarray:
    """Swap corners so that ``x1 <= x2`` and ``y1 <= y2`` (models sometimes flip them)."""
    b = as_boxes(boxes)
    return np.stack(
        [
            np.minimum(b[:, 0], b[:, 2]),
            np.minimum(b[:, 1], b[:, 3]),
            np.maximum(b[:, 0], b[:, 2]),
            np.maximum(b[:, 1], b[:, 3]),
        ],
        axis=1,
    )


def valid_mask(boxes: np.ndarray, min_size: float = 1.0) -> np.ndarray:
    """``(N,)`` bool: finite boxes at least ``min_size`` px wide AND high; degenerate: False."""
    b = as_boxes(boxes)
    finite = np.isfinite(b).all(axis=1)
    with np.errstate(invalid="ignore"):
        big = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return finite & big
