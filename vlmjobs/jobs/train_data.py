"""Training data: samples from clean's output or a JSONL file; a seeded, length-grouped order.

Two record formats, one line each:

- clean's chat format: ``{"messages": [system, user(image, prompt), assistant(target)],
  "image_size": [w, h], ...}`` (image paths absolute);
- the seeds' format: ``{"image": "a.jpg", "prefix": prompt, "suffix": target}``
  (image paths relative to the JSONL file).

The batch order of an epoch is a pure function of (lengths, micro-batch size, seed,
epoch): a resumed run recomputes nothing, it reads the order from its checkpoint,
and an uninterrupted run computes the same one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlmjobs.errors import DataError
from vlmjobs.vision.frames import FACTOR, input_size

# Batches sorted by length are formed inside windows of this many micro-batches, so
# that grouping cuts padding while the order stays random across the epoch.
GROUP_WINDOW = 16


@dataclass(frozen=True)
class Sample:
    """One training example: an image, the user prompt and the assistant's target text."""

    image: Path
    prompt: str
    answer: str
    system: str | None = None
    image_size: tuple[int, int] | None = None  # (w, h) original pixels, when the record says


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a bad line is a DataError naming the file and line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{number}: not JSON ({error.msg}): fix or drop the line"
                ) from error
    return records


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _image(content: str | list[dict[str, Any]]) -> str | None:
    if isinstance(content, str):
        return None
    for part in content:
        if part.get("type") == "image":
            return str(part.get("image") or part.get("path") or part.get("url") or "")
    return None


def to_sample(record: dict[str, Any], base: Path, system: str | None) -> Sample:
    """One record in either format -> Sample; ``base`` resolves relative image paths."""
    size = tuple(record["image_size"]) if "image_size" in record else None
    if "messages" in record:
        by_role = {m["role"]: m["content"] for m in record["messages"]}
        if "user" not in by_role or "assistant" not in by_role:
            raise ValueError("messages need a user and an assistant turn")
        image = _image(by_role["user"])
        if not image:
            raise ValueError("the user turn has no image part")
        own_system = _text(by_role["system"]) if "system" in by_role else system
        return Sample(
            base / image, _text(by_role["user"]), _text(by_role["assistant"]), own_system, size
        )  # type: ignore[arg-type]
    if {"image", "prefix", "suffix"} <= record.keys():
        return Sample(base / record["image"], record["prefix"], record["suffix"], system, size)  # type: ignore[arg-type]
    raise ValueError(
        f"record has keys {sorted(record)}: expected 'messages' or 'image', 'prefix', 'suffix'"
    )


def read_samples(path: Path, system: str | None = None) -> list[Sample]:
    """All samples of a JSONL file; errors name the file and line."""
    samples = []
    for number, record in enumerate(read_jsonl(path), 1):
        try:
            sample = to_sample(record, path.parent, system)
        except (KeyError, ValueError, TypeError) as error:
            raise DataError(f"{path}: record {number}: {error}") from error
        if not sample.image.is_file():
            raise DataError(f"{path}: record {number}: image {sample.image} does not exist")
        samples.append(sample)
    if not samples:
        raise DataError(f"{path} has no records: point data.path at a non-empty dataset")
    return samples


def split_off(
    samples: list[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """(train, val): a seeded share ``fraction`` held out (at least one when fraction > 0)."""
    if fraction <= 0 or len(samples) < 2:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = max(1, round(len(samples) * fraction))
    val_ids = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_ids]
    return train, [s for i, s in enumerate(samples) if i in val_ids]


def image_tokens(sample: Sample, min_pixels: int, max_pixels: int) -> int:
    """Tokens the image becomes: one per 28x28 patch of the resized frame (header read only)."""
    size = sample.image_size
    if size is None:
        with Image.open(sample.image) as image:
            size = image.size
    w, h = input_size(size, min_pixels, max_pixels)
    return (w // FACTOR) * (h // FACTOR)


def epoch_batches(
    lengths: list[int], micro_batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """The epoch's micro-batches as lists of sample indices; same arguments -> same batches.

    With ``group_by_length``, samples are sorted by length inside windows of
    GROUP_WINDOW micro-batches (less padding), the batches are shuffled, and the
    longest batch goes first so that an out-of-memory error shows at step 1.
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size {micro_batch_size} must be >= 1")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    if not group_by_length:
        return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    window = micro_batch_size * GROUP_WINDOW
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
        batches += [chunk[i : i + micro_batch_size] for i in range(0, len(chunk), micro_batch_size)]
    batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
    longest = max(range(len(batches)), key=lambda b: (max(lengths[i] for i in batches[b]), -b))
    batches.insert(0, batches.pop(longest))
    return batches


def split_batches(batches: list[list[int]]) -> list[list[int]]:
    """Halve every batch (after an out-of-memory step): same samples, same order."""
    out: list[list[int]] = []
    for batch in batches:
        half = math.ceil(len(batch) / 2)
        out += [part for part in (batch[:half], batch[half:]) if part]
    return out
