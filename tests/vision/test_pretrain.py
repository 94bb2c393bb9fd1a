"""The demo model's pre-training: targets as clean writes them, and a few real steps."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch

from vlmjobs.dev.build import make_tokenizer, random_model
from vlmjobs.dev.pretrain import PretrainPlan, pretrain_on_shapes, shapes_stream
from vlmjobs.dev.shapes import make_image
from vlmjobs.vision.frames import input_size
from vlmjobs.vision.model import load_processor
from vlmjobs.vision.parse import parse_regions


def test_stream_targets_parse_back_to_the_true_boxes() -> None:
    plan = PretrainPlan()
    for index, (image, target) in enumerate(itertools.islice(shapes_stream(plan), 5), 1):
        _, regions = make_image(1_000 + plan.seed, index, "demo")
        frame = input_size(image.size, plan.min_pixels, plan.max_pixels)
        assert frame == (112, 112)  # 100-124 px images: 16 image tokens each
        parsed = parse_regions(target, input_size=frame, image_size=image.size)
        assert parsed.status == "ok" and parsed.regions.phrases == [r["phrase"] for r in regions]
        # integer pixels of the 112 px frame: back in original pixels within a pixel
        assert np.abs(parsed.regions.boxes - [r["bbox"] for r in regions]).max() <= 1.0


def test_a_few_steps_train_every_weight(tmp_path: Path) -> None:
    from vlmjobs.dev.build import _save_preprocessor

    plan = PretrainPlan(steps=3, batch_size=2, warmup=1)
    model = random_model("demo")
    model.config.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    _save_preprocessor(tmp_path, plan.min_pixels, plan.max_pixels)
    processor = load_processor(tmp_path, min_pixels=plan.min_pixels, max_pixels=plan.max_pixels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = pretrain_on_shapes(model, processor, plan, log=lambda line: None)
    assert math.isfinite(loss) and 0 < loss < 10
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "model.visual.patch_embed.proj.weight" in changed
    assert len(changed) == len(before)  # full training, vision tower included
