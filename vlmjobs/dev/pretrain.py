"""Teach a freshly built small model the shapes task, on CPU, in a few minutes.

A random-weight model never writes a box, so a demo that fine-tunes one shows only
empty overlays. ``pretrain_on_shapes`` trains every weight of the ``demo``
architecture on an endless stream of demo-style shapes images (dev/shapes.py),
with exactly the chat records that clean writes for them: the same system message,
prompt, pixel frame, reading order and target format. The demo's own train job
then fine-tunes a LoRA adapter on top, and its held-out scores are measured, not
assumed.

Deterministic: the images come from (seed, index) and torch is seeded, so the same
seed gives the same weights on the same torch build and thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmjobs.dev.shapes import make_image
from vlmjobs.recipes.clean.records import region_target
from vlmjobs.vision.family import get_family
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.tasks import DEFAULT_SYSTEM

# The demo's pixel frame (Qwen3-VL: 32 px per image token): its 100-124 px images
# become 96-128 px a side, 9-16 image tokens.
DEMO_MIN_PIXELS = 9 * 32 * 32
DEMO_MAX_PIXELS = 25 * 32 * 32
# A short prompt: every prompt token costs as much compute as an answer token.
DEMO_PROMPT = "Locate every shape."
# Pre-training images come from this offset of the seed, apart from any data set that
# `vlmjobs dev make-shapes --seed S` writes for small S.
SEED_OFFSET = 1_000


@dataclass(frozen=True)
class PretrainPlan:
    """How long and how hard to train. The defaults take ~2-3 minutes on 2 CPU cores.

    Measured on held-out demo shapes: batch 16 at lr 3e-3 localised far better than
    batch 8 at 2e-3 or 5e-3, or batch 4 for twice the steps."""

    steps: int = 900
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 30
    seed: int = 0
    min_pixels: int = DEMO_MIN_PIXELS
    max_pixels: int = DEMO_MAX_PIXELS
    prompt: str = DEMO_PROMPT
    family: str = "qwen3_vl"  # sets the frame factor and how boxes are written


def shapes_stream(plan: PretrainPlan) -> Iterator[tuple[Image.Image, str]]:
    """(image, target) pairs of demo-style shapes, endless and deterministic."""
    family = get_family(plan.family)
    index = 0
    while True:
        index += 1
        image, regions = make_image(SEED_OFFSET + plan.seed, index, "demo")
        frame = family.input_size(image.size, plan.min_pixels, plan.max_pixels)
        boxes = np.array([r["bbox"] for r in regions], dtype=np.float64).reshape(-1, 4)
        phrases = [r["phrase"] for r in regions]
        yield image, region_target(boxes, phrases, image.size, frame, family.convention)


def lr_at(step: int, plan: PretrainPlan) -> float:
    """Linear warm-up to ``plan.lr``, then cosine to a tenth of it."""
    if step < plan.warmup:
        return plan.lr * (step + 1) / plan.warmup
    progress = (step - plan.warmup) / max(1, plan.steps - plan.warmup)
    return plan.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


class ShapesBatches(torch.utils.data.IterableDataset):
    """``plan.steps`` ready model batches of the shapes stream, in order.

    Drawing the images and running the processor cost about as much as a training step
    of the demo model, so a DataLoader worker prepares them on the second core."""

    def __init__(self, processor: Any, plan: PretrainPlan) -> None:
        self.processor, self.plan = processor, plan

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        torch.set_num_threads(1)  # the worker's one core; the trainer has its own
        stream = shapes_stream(self.plan)
        for _ in range(self.plan.steps):
            pairs = [next(stream) for _ in range(self.plan.batch_size)]
            batch = build_inputs(
                self.processor,
                [image for image, _ in pairs],
                [self.plan.prompt] * len(pairs),
                system=DEFAULT_SYSTEM,
                answers=[target for _, target in pairs],
            )
            yield dict(batch)


def pretrain_on_shapes(
    model: Any,
    processor: Any,
    plan: PretrainPlan,
    log: Callable[[str], None] = print,
    curve: list[tuple[int, str, float]] | None = None,
) -> float:
    """Train all of ``model``'s weights on demo shapes for ``plan.steps`` steps, in place.

    Returns the mean loss of the last 20 steps (answer tokens, nats). ``curve``, when given,
    gets (step, "loss" | "lr", value) per step: the metric rows a train job writes.
    """
    torch.manual_seed(plan.seed)
    # One worker keeps the batches in stream order: the same seed gives the same weights.
    batches = torch.utils.data.DataLoader(
        ShapesBatches(processor, plan), batch_size=None, num_workers=1, prefetch_factor=4
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.01)
    model.train()
    losses: list[float] = []
    started = time.monotonic()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, plan)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if curve is not None:
            curve += [(step + 1, "loss", losses[-1]), (step + 1, "lr", lr_at(step, plan))]
        if (step + 1) % 50 == 0 or step + 1 == plan.steps:
            log(
                f"pretrain step {step + 1}/{plan.steps} loss {np.mean(losses[-50:]):.3f} "
                f"({time.monotonic() - started:.0f} s)"
            )
    model.eval()
    return float(np.mean(losses[-20:]))
