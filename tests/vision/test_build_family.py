"""Tiny and real-size Qwen2-VL / Qwen3-VL builds: family, pinned frame, template, sizes,
and the engine fallback for families the static engine does not run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.build import make_model
from vlmjobs.vision.build_family import model_config
from vlmjobs.vision.family import family_of
from vlmjobs.vision.generate import Generator
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model


@pytest.fixture(scope="module", params=["tiny-qwen2vl", "tiny-qwen3vl"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp(request.param) / "m", request.param, seed=0)


def test_tiny_loads_as_its_family_with_a_pinned_frame(tiny: Path) -> None:
    family = family_of(tiny)
    lo, hi = 4 * family.factor**2, 16 * family.factor**2
    model, processor = load_model(ModelSpec(path=str(tiny), dtype="fp32", min_pixels=lo,
                                            max_pixels=hi))  # fmt: skip
    assert type(model).__name__ == family.model_class
    image = Image.new("RGB", (300, 41), "red")
    batch = build_inputs(processor, [image], ["Locate every object."])
    _, gh, gw = batch["image_grid_thw"][0].tolist()
    # The checkpoint's preprocessor_config says the family's huge default; the spec's wins.
    assert (gw * family.patch_size, gh * family.patch_size) == family.input_size((300, 41), lo, hi)
    text = processor.tokenizer.decode(batch["input_ids"][0])
    # Qwen2-VL's template adds a default system message; Qwen3-VL's does not.
    assert text.startswith("<|im_start|>system\n") == (family.name == "qwen2_vl")
    assert text.endswith("<|im_start|>assistant\n")


def test_static_engine_falls_back_to_generate_with_a_reason(tiny: Path, caplog) -> None:
    model, processor = load_model(ModelSpec(path=str(tiny), dtype="fp32"))
    with caplog.at_level(logging.WARNING, logger="vlmjobs.vision.generate"):
        generator = Generator(model, processor, max_batch=2, engine="static")
    assert generator.engine == "hf"
    assert "static engine" in caplog.text and family_of(tiny).title.split()[0] in caplog.text
    images = [Image.new("RGB", (64 + 20 * i, 48), (50 * i, 90, 9)) for i in range(3)]
    batch = build_inputs(processor, images, ["Describe."] * 3)
    together = [g.token_ids for g in generator.generate(batch, max_new_tokens=6)]
    alone = [
        generator.generate(build_inputs(processor, [im], ["Describe."]), max_new_tokens=6)[0]
        for im in images
    ]
    assert together == [g.token_ids for g in alone]  # left padding changes nothing


@pytest.mark.parametrize(
    "arch,params",
    [
        pytest.param("qwen3vl-2b", 2.13e9, id="2b"),  # Qwen3-VL-2B-Instruct
        pytest.param("qwen3vl-4b", 4.44e9, id="4b"),  # Qwen3-VL-4B-Instruct
        pytest.param("qwen3vl-8b", 8.77e9, id="8b"),  # Qwen3-VL-8B-Instruct
    ],
)
def test_real_size_builds_have_the_published_parameter_counts(arch: str, params: float) -> None:
    config = model_config(arch)
    with torch.device("meta"):
        model = family_of_config(config)(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - params) / params < 0.02, f"{arch}: {n / 1e9:.3f} B parameters"


def family_of_config(config):
    from vlmjobs.vision.family import FAMILIES

    return FAMILIES[config.model_type].load_class()
