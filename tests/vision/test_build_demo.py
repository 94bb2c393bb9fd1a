"""The demo model's build: a Qwen3-VL with a sine/cosine position grid, loadable like a real
checkpoint at the demo's pinned pixel budget."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from vlmjobs.dev.build_demo import GRID, make_demo_model, random_demo_model, sincos_grid
from vlmjobs.dev.pretrain import PretrainPlan
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.family import family_of
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model


def test_grid_codes_tell_every_cell_apart_and_neighbours_are_nearest() -> None:
    code = sincos_grid(GRID, 128)
    assert code.shape == (GRID * GRID, 128)
    dist = torch.cdist(code, code)
    dist.fill_diagonal_(float("inf"))
    assert dist.min() > 0.5  # no two cells share a code
    cells = torch.tensor([(i // GRID, i % GRID) for i in range(GRID * GRID)])
    nearest = cells[dist.argmin(dim=1)]
    # a cell's closest code is an adjacent cell's: the code is smooth in both directions
    assert ((nearest - cells).abs().sum(dim=1) == 1).all()


def test_random_model_is_a_small_qwen3vl_with_the_grid_and_seeded() -> None:
    model = random_demo_model(seed=1)
    assert model.config.model_type == "qwen3_vl"
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 3e6
    assert torch.equal(model.model.visual.pos_embed.weight, sincos_grid(GRID, 128))
    again, other = random_demo_model(seed=1), random_demo_model(seed=2)
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[q], again.state_dict()[q])
    assert not torch.equal(model.state_dict()[q], other.state_dict()[q])


def test_checkpoint_loads_as_qwen3vl_at_the_pinned_budget(tmp_path: Path) -> None:
    plan = PretrainPlan(steps=1, batch_size=1, warmup=1)
    path = make_demo_model(tmp_path / "demo", plan=plan, log=lambda line: None)
    assert family_of(path).name == "qwen3_vl"
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    assert (cfg["min_pixels"], cfg["max_pixels"]) == (plan.min_pixels, plan.max_pixels)
    spec = ModelSpec(path=str(path), dtype="fp32", min_pixels=plan.min_pixels,
                     max_pixels=plan.max_pixels)  # fmt: skip
    model, processor = load_model(spec)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    batch = build_inputs(processor, [Image.new("RGB", (124, 100), "white")], [plan.prompt])
    assert batch["image_grid_thw"].tolist() == [[1, 6, 8]]  # 128 x 96 px: 4 x 3 tokens
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert not text.startswith("<|im_start|>system")  # Qwen3-VL's template adds none
