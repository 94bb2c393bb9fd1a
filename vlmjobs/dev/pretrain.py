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
from vlmjobs.vision.frames import input_size
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.tasks import DEFAULT_SYSTEM

# The demo's pixel frame: its 100-124 px images become 112 x 112 (16 image tokens).
DEMO_MIN_PIXELS = 9 * 28 * 28
DEMO_MAX_PIXELS = 25 * 28 * 28
# A short prompt: every prompt token costs as much compute as an answer token.
DEMO_PROMPT = "Locate every shape."
# Pre-training images come from this offset of the seed, apart from any data set that
# `vlmjobs dev make-shapes --seed S` writes for small S.
SEED_OFFSET = 1_000


@dataclass(frozen=True)
class PretrainPlan:
    """How long and how hard to train. The defaults take ~2-3 minutes on 2 busy CPU cores."""

    steps: int = 900
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 30
    seed: int = 0
    min_pixels: int = DEMO_MIN_PIXELS
    max_pixels: int = DEMO_MAX_PIXELS
    prompt: str = DEMO_PROMPT


def shapes_stream(plan: PretrainPlan) -> Iterator[tuple[Image.Image, str]]:
    """(image, target) pairs of demo-style shapes, endless and deterministic."""
    index = 0
    while True:
        index += 1
        image, regions = make_image(SEED_OFFSET + plan.seed, index, "demo")
        frame = input_size(image.size, plan.min_pixels, plan.max_pixels)
        boxes = np.array([r["bbox"] for r in regions], dtype=np.float64).reshape(-1, 4)
        yield image, region_target(boxes, [r["phrase"] for r in regions], image.size, frame)


def lr_at(step: int, plan: PretrainPlan) -> float:
    """Linear warm-up to ``plan.lr``, then cosine to a tenth of it."""
    if step < plan.warmup:
        return plan.lr * (step + 1) / plan.warmup
    progress = (step - plan.warmup) / max(1, plan.steps - plan.warmup)
    return plan.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def pretrain_on_shapes(
    model: Any, processor: Any, plan: PretrainPlan, log: Callable[[str], None] = print
) -> float:
    """Train all of ``model``'s weights on demo shapes for ``plan.steps`` steps, in place.

    Returns the mean loss of the last 20 steps (answer tokens, nats).
    """
    torch.manual_seed(plan.seed)
    stream = shapes_stream(plan)
    prompt = plan.prompt
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.01)
    model.train()
    losses: list[float] = []
    started = time.monotonic()
    for step in range(plan.steps):
        pairs = [next(stream) for _ in range(plan.batch_size)]
        batch = build_inputs(
            processor,
            [image for image, _ in pairs],
            [prompt] * len(pairs),
            system=DEFAULT_SYSTEM,
            answers=[target for _, target in pairs],
        )
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, plan)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == plan.steps:
            log(
                f"pretrain step {step + 1}/{plan.steps} loss {np.mean(losses[-50:]):.3f} "
                f"({time.monotonic() - started:.0f} s)"
            )
    model.eval()
    return float(np.mean(losses[-20:]))
