"""The demo model's pre-training: targets as clean writes them, and a few real steps."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration

from vlmjobs.dev.build_demo import FAMILY, make_demo_model, random_demo_model
from vlmjobs.dev.pretrain import PretrainPlan, pretrain_on_shapes, shapes_stream
from vlmjobs.dev.shapes import make_image
from vlmjobs.vision.model import load_processor
from vlmjobs.vision.parse import parse_regions


def test_stream_targets_parse_back_to_the_true_boxes() -> None:
    plan = PretrainPlan()
    for index, (image, target) in enumerate(itertools.islice(shapes_stream(plan), 5), 1):
        _, regions = make_image(1_000 + plan.seed, index, "demo")
        frame = FAMILY.input_size(image.size, plan.min_pixels, plan.max_pixels)
        assert 96 <= min(frame) and max(frame) <= 128  # 100-124 px images: 9-16 image tokens
        parsed = parse_regions(target, input_size=frame, image_size=image.size, convention="1000")
        assert parsed.status == "ok" and parsed.regions.phrases == [r["phrase"] for r in regions]
        # integers of 0-1000: back in original pixels within a tenth of a pixel
        assert np.abs(parsed.regions.boxes - [r["bbox"] for r in regions]).max() <= 0.1
        assert '"bbox_2d": [' in target and max(map(max, parsed.regions.boxes)) <= 124


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A demo checkpoint after 3 pre-training steps of 2 images, and its log."""
    lines: list[str] = []
    out = tmp_path_factory.mktemp("demo") / "m"
    make_demo_model(out, plan=PretrainPlan(steps=3, batch_size=2, warmup=1), log=lines.append)
    return out, lines


def test_a_few_steps_train_every_weight(built: tuple[Path, list[str]]) -> None:
    path, lines = built
    assert lines[-1].startswith("pretrain step 3/3 loss ")
    loss = float(lines[-1].split()[4])
    assert math.isfinite(loss) and 0 < loss < 10
    before = dict(random_demo_model().named_parameters())
    after = dict(Qwen3VLForConditionalGeneration.from_pretrained(path).named_parameters())
    assert after.keys() == before.keys()
    changed = [n for n, p in after.items() if not torch.equal(p, before[n])]
    assert "model.visual.pos_embed.weight" in changed  # the absolute positions learn too
    assert len(changed) == len(before)  # full training, vision tower included


def test_the_pretraining_curve_is_written_beside_the_model(built: tuple[Path, list[str]]) -> None:
    """What the demo shows as its falling loss: every step's loss and lr, and their PNG."""
    import csv

    path, lines = built
    rows = list(csv.DictReader((path / "pretrain_metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert all(0 < float(r["loss"]) < 10 and float(r["lr"]) > 0 for r in rows)
    assert (path / "pretrain-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pretraining_is_deterministic_per_seed(built: tuple[Path, list[str]]) -> None:
    """Same seed, same weights: the images come from (seed, index), torch is seeded."""
    plan = PretrainPlan(steps=2, batch_size=2, warmup=1, seed=3)
    processor = load_processor(built[0], min_pixels=plan.min_pixels, max_pixels=plan.max_pixels)
    weights = []
    for _ in range(2):
        model = random_demo_model(seed=3)
        pretrain_on_shapes(model, processor, plan, log=lambda line: None)
        weights.append(model.model.visual.pos_embed.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], random_demo_model(seed=3).model.visual.pos_embed.weight)
