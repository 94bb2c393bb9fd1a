"""What the clean job writes: chat records, region targets, the seeded split.

Region order in a target is top-to-bottom, then left-to-right (the box as the model
writes it, rounded: y1, then x1, then y2, x2, phrase). The order matters because the
training loss is per token: a fixed reading order makes the target a function
of the image, not of the annotation file's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmjobs.specs.clean import SplitSpec
from vlmjobs.vision.frames import Convention, to_model_frame
from vlmjobs.vision.parse import format_regions

SPLITS = ("train", "val", "test")


def reading_order(boxes_in: np.ndarray, phrases: list[str]) -> list[int]:
    """Indices of (N, 4) input-frame boxes sorted top-to-bottom, then left-to-right."""
    r = np.rint(boxes_in).astype(np.int64)
    return sorted(range(len(phrases)), key=lambda i: (*r[i, [1, 0, 3, 2]].tolist(), phrases[i]))


def region_target(
    boxes: np.ndarray,
    phrases: list[str],
    image_size: tuple[int, int],
    frame: tuple[int, int],
    convention: Convention = "absolute",
) -> str:
    """The assistant's text for (N, 4) ORIGINAL-pixel boxes, in reading order: input-frame
    pixels (``absolute``, Qwen2.5-VL) or 0-1000 of the image (``1000``, Qwen2/Qwen3-VL)."""
    boxes_in = to_model_frame(boxes, image_size, frame, convention)
    order = reading_order(boxes_in, phrases)
    return format_regions(boxes_in[order], [phrases[i] for i in order])


def chat_record(
    image: Path,
    prompt: str,
    target: str,
    system: str,
    image_size: tuple[int, int],
    frame: tuple[int, int],
) -> dict[str, Any]:
    """One line of train/val/test.jsonl (ARCHITECTURE.md's record format)."""
    return {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": str(image)},
                    {"type": "text", "text": prompt},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": target}]},
        ],
        "image_size": [int(image_size[0]), int(image_size[1])],
        "input_size": [int(frame[0]), int(frame[1])],
    }


def split_counts(total: int, split: SplitSpec) -> dict[str, int]:
    """Images per split: val and test rounded, at least 1 each when asked for and possible."""
    counts = {"val": round(total * split.val), "test": round(total * split.test)}
    for name in ("val", "test"):
        if getattr(split, name) > 0 and counts[name] == 0 and total > 1 + sum(counts.values()):
            counts[name] = 1
    counts["train"] = total - counts["val"] - counts["test"]
    return counts


def assign_splits(total: int, split: SplitSpec, seed: int) -> list[str]:
    """The split of each input item, by position: a seeded permutation, cut by the shares.

    Assigned before any image is read, so a skipped image never shifts the others.
    """
    counts = split_counts(total, split)
    perm = np.random.default_rng(seed).permutation(total)
    names = np.full(total, "train", dtype=object)
    names[perm[: counts["val"]]] = "val"
    names[perm[counts["val"] : counts["val"] + counts["test"]]] = "test"
    return names.tolist()


def cap_regions(
    indices: list[int], cluster_sizes: list[int], boxes: np.ndarray, limit: int | None
) -> list[int]:
    """At most ``limit`` of ``indices``: the largest clusters first, then the largest boxes.

    A region many annotators described (a big cluster) is the one worth its tokens.
    """
    if limit is None or len(indices) <= limit:
        return indices
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else None
    rank = sorted(
        range(len(indices)),
        key=lambda j: (
            -cluster_sizes[j],
            -(area[indices[j]] if area is not None else 0.0),
            indices[j],
        ),
    )
    return sorted(indices[j] for j in rank[:limit])
