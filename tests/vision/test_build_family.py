"""Tiny and real-size Qwen2-VL / Qwen3-VL builds: family, pinned frame, template, sizes,
and the engine fallback for families the static engine does not run."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlmjobs.dev.build import make_model
from vlmjobs.dev.build_family import model_config
from vlmjobs.specs.common import ModelSpec
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


def _spread_weights(model: torch.nn.Module) -> None:
    """Random init gives a tiny model that repeats one token; noise makes every step differ,
    so an engine that got one layer wrong (a missing q/k norm) shows in the tokens."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)


def _images_and_batch(processor):
    images = [Image.new("RGB", (64 + 60 * i, 150 - 30 * i), (50 * i, 90, 9)) for i in range(3)]
    prompts = ["Describe the image.", "Find the circle.", "Caption"]
    return images, build_inputs(processor, images, prompts)


def test_static_engine_equals_generate_greedy(tiny: Path) -> None:
    """Qwen2-VL and Qwen3-VL (q/k norms, interleaved MRoPE, DeepStack in the prefill)."""
    model, processor = load_model(ModelSpec(path=str(tiny), dtype="fp32"))
    _spread_weights(model)
    images, batch = _images_and_batch(processor)
    hf = Generator(model, processor, engine="hf").generate(batch, max_new_tokens=10)
    static = Generator(model, processor, engine="static", max_batch=2)
    assert static.engine == "static" and static.engine_note is None
    for _ in range(2):  # the second batch reuses the cache
        out = static.generate(batch, max_new_tokens=10)
        assert [g.token_ids for g in out] == [g.token_ids for g in hf]
        for a, b in zip(out, hf, strict=True):
            torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
    assert len({t for g in hf for t in g.token_ids}) >= 5  # not one repeated token
    single = [
        Generator(model, processor, engine="hf").generate(
            build_inputs(processor, [im], [p]), max_new_tokens=10
        )[0]
        for im, p in zip(
            images, ["Describe the image.", "Find the circle.", "Caption"], strict=True
        )
    ]
    assert [g.token_ids for g in single] == [g.token_ids for g in hf]  # left padding is inert


def test_an_engine_it_cannot_run_falls_back_with_a_reason(tmp_path: Path, caplog) -> None:
    moe = make_model(tmp_path / "moe", "tiny-qwen3vlmoe", seed=0)
    model, processor = load_model(ModelSpec(path=str(moe), dtype="fp32"))
    with caplog.at_level(logging.WARNING, logger="vlmjobs.vision.generate"):
        generator = Generator(model, processor, max_batch=2, engine="static")
    assert generator.engine == "hf"
    assert "Qwen3-VL-MoE" in caplog.text and "generate" in caplog.text
    _, batch = _images_and_batch(processor)
    out = generator.generate(batch, max_new_tokens=4)
    assert [len(g.token_ids) for g in out] == [4, 4, 4] or all(g.finished for g in out)


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
