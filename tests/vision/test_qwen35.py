"""Qwen3.5 (hybrid gated delta-net + attention) on the tiny build: its frame and template, the
generate fallback (reason logged, batch size, OOM recovery, stop tokens, greedy = one at a
time), LoRA's reach into the delta-net layers, and the memory arithmetic against real sizes."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from vlmjobs.dev.build import make_model
from vlmjobs.dev.build_family import model_config
from vlmjobs.errors import ModelLoadError, PreflightError
from vlmjobs.recipes.train.memory import architecture, lora_params
from vlmjobs.recipes.train.model import prepare_model
from vlmjobs.recipes.train.preflight import preflight
from vlmjobs.specs.common import ModelSpec
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.family import FAMILIES, family_of
from vlmjobs.vision.generate import Generator, slow_kernels
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model
from vlmjobs.vision.parse import parse_regions

NEW = 10
PROMPTS = ["Describe the image.", "Find the circle.", "Caption"]


@pytest.fixture(scope="module")
def tiny35(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("q35") / "m", "tiny-qwen35", seed=0)


@pytest.fixture(scope="module")
def loaded(tiny35: Path) -> tuple[Any, Any, list[Image.Image]]:
    """fp32 model with noise added (random init repeats one token), processor, 3 images."""
    model, processor = load_model(ModelSpec(path=str(tiny35), dtype="fp32"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    images = [Image.new("RGB", (64 + 60 * i, 150 - 30 * i), (50 * i, 90, 9)) for i in range(3)]
    return model, processor, images


@pytest.fixture
def rows_seen(loaded) -> Iterator[list[int]]:
    """Rows of every language-model forward (prefill and decode steps)."""
    seen: list[int] = []
    embed = loaded[0].model.language_model.embed_tokens
    handle = embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    yield seen
    handle.remove()


def test_tiny_qwen35_is_the_hybrid_family_with_a_pinned_frame(tiny35: Path, loaded) -> None:
    model, processor, _ = loaded
    family = family_of(tiny35)
    assert (family.name, family.factor, family.convention) == ("qwen3_5", 32, "1000")
    assert type(model).__name__ == "Qwen3_5ForConditionalGeneration"
    assert model.config.text_config.layer_types == ["linear_attention", "full_attention"]
    lo, hi = 4 * 32**2, 16 * 32**2
    _, pinned = load_model(ModelSpec(path=str(tiny35), dtype="fp32", min_pixels=lo,
                                     max_pixels=hi))  # fmt: skip
    batch = build_inputs(pinned, [Image.new("RGB", (300, 41))], ["Locate every object."])
    _, gh, gw = batch["image_grid_thw"][0].tolist()
    assert (gw * 16, gh * 16) == family.input_size((300, 41), lo, hi)
    # Thinking is switched off: the answer follows an empty thinking block.
    text = processor.tokenizer.decode(build_inputs(processor, [_img()], ["x"])["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def _img() -> Image.Image:
    return Image.new("RGB", (64, 64), "blue")


def test_fallback_logs_why_and_equals_one_at_a_time_generate(loaded, rows_seen, caplog) -> None:
    model, processor, images = loaded
    with caplog.at_level(logging.WARNING, logger="vlmjobs.vision.generate"):
        generator = Generator(model, processor, max_batch=2, engine="static")
    assert generator.engine == "hf"
    assert "Qwen3.5" in caplog.text and "recurrent state" in caplog.text
    out = generator.generate(build_inputs(processor, images, PROMPTS), max_new_tokens=NEW)
    # batch size honoured: a slice of 2 rows, then 1 (prefill and each decode step)
    assert sorted(set(rows_seen)) == [1, 2] and rows_seen[0] == 2
    single = [
        Generator(model, processor, engine="hf").generate(
            build_inputs(processor, [im], [p]), max_new_tokens=NEW
        )[0]
        for im, p in zip(images, PROMPTS, strict=True)
    ]
    assert [g.token_ids for g in out] == [g.token_ids for g in single]  # left padding is inert
    for a, b in zip(out, single, strict=True):
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
    assert len({t for g in out for t in g.token_ids}) >= 5  # not one repeated token


def test_fallback_recovers_from_out_of_memory(loaded) -> None:
    model, processor, images = loaded
    batch = build_inputs(processor, images, PROMPTS)
    expected = Generator(model, processor, engine="hf").generate(batch, max_new_tokens=NEW)

    def oom(module: Any, args: tuple) -> None:  # what CUDA raises when 2+ rows do not fit
        if args[0].shape[0] > 1:
            raise torch.OutOfMemoryError(f"simulated: {args[0].shape[0]} rows")

    handle = model.model.language_model.embed_tokens.register_forward_pre_hook(oom)
    try:
        generator = Generator(model, processor, engine="static", max_batch=3)
        heard: list[str] = []
        out = generator.generate(batch, max_new_tokens=NEW, on_oom=heard.append)
    finally:
        handle.remove()
    assert [g.token_ids for g in out] == [g.token_ids for g in expected]
    assert len(heard) == 1 and "batch 3" in heard[0] and "continuing at batch 1" in heard[0]
    assert generator.max_batch == 1


def test_fallback_stops_at_the_stop_tokens(loaded) -> None:
    model, processor, images = loaded
    batch = build_inputs(processor, images, PROMPTS)
    free = Generator(model, processor, engine="hf").generate(batch, max_new_tokens=NEW)
    stop = free[0].token_ids[3]  # made a stop token: row 0 must end there
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [*saved, stop]
    try:
        out = Generator(model, processor, engine="static").generate(batch, max_new_tokens=NEW)
    finally:
        model.generation_config.eos_token_id = saved
    assert out[0].token_ids == free[0].token_ids[: free[0].token_ids.index(stop) + 1]
    for got, full in zip(out, free, strict=True):  # every row: cut after its first stop token
        ids = full.token_ids
        cut = ids[: ids.index(stop) + 1] if stop in ids else ids
        assert (got.token_ids, got.finished) == (cut, stop in ids or full.finished)


def _train_spec(path: Path, targets: list[str], quantization: str = "none") -> TrainSpec:
    data = path / "config.json"  # any existing file: the data is not read here
    return TrainSpec.model_validate({
        "model": {"path": str(path), "quantization": quantization},
        "data": {"path": str(data)}, "lora": {"r": 4, "targets": targets},
    })  # fmt: skip


@pytest.mark.parametrize(
    "targets",
    [
        pytest.param(["q_proj", "in_proj_qkv", "out_proj", "gate_proj"], id="mixed"),
        pytest.param(["all-linear"], id="all-linear"),
        pytest.param(["v_proj"], id="attention-layer-only"),
    ],
)
def test_lora_reaches_the_delta_net_and_the_estimate_counts_it(tiny35: Path, targets) -> None:
    spec = _train_spec(tiny35, targets, quantization="nf4")
    model, _ = load_model(spec.model, for_training=True)
    peft_model = prepare_model(model, spec)
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and not any(".visual." in n for n in trainable)
    if targets[0] != "v_proj":
        assert any("layers.0.linear_attn.in_proj_qkv.lora_A" in n for n in trainable)
    assert not any("conv1d" in n or "A_log" in n for n in trainable)
    arch = architecture(model_config("tiny-qwen35"))
    assert sum(trainable.values()) == lora_params(arch, targets, 4)
    loss = peft_model(**_one_batch(tiny35)).loss  # an nf4 QLoRA step on the CPU
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for p in peft_model.parameters() if p.requires_grad
    )


def _one_batch(path: Path) -> Any:
    _, processor = load_model(ModelSpec(path=str(path)))
    return build_inputs(processor, [_img()], ["Find it."], answers=['[{"bbox_2d": [1, 2, 3, 4]}]'])


@pytest.mark.parametrize(
    "arch,targets,refused",
    [
        pytest.param("tiny", ["q_proj", "in_proj_qkv"], True, id="qwen2.5-vl-has-no-delta-net"),
        pytest.param("tiny", ["q_proj", "all-linear"], False, id="all-linear-anywhere"),
        pytest.param("tiny-qwen35", ["in_proj_z", "out_proj"], False, id="qwen3.5"),
    ],
)
def test_train_preflight_refuses_targets_the_family_lacks(
    tmp_path: Path, arch: str, targets: list[str], refused: bool
) -> None:
    _img().save(tmp_path / "a.png")
    (tmp_path / "t.jsonl").write_text('{"image": "a.png", "prefix": "p", "suffix": "s"}\n')
    spec = TrainSpec.model_validate({
        "model": {"path": str(make_model(tmp_path / arch, arch, seed=0))},
        "data": {"path": str(tmp_path / "t.jsonl")}, "lora": {"targets": targets},
    })  # fmt: skip
    if not refused:
        assert preflight(spec).estimate is not None  # went on to the memory plan
        return
    with pytest.raises(PreflightError, match=r"\['in_proj_qkv'\].*Qwen2.5-VL"):
        preflight(spec)


def test_the_9b_build_has_the_published_size_and_the_arithmetic_matches_it() -> None:
    """Qwen3.5-9B: 9.65 B parameters with its multi-token-prediction layer (~0.24 B), which
    transformers does not build; the estimate's weight terms must add up to the model."""
    config = model_config("qwen35-9b")
    with torch.device("meta"):
        model = FAMILIES["qwen3_5"].load_class()(config)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 9.41e9) / 9.41e9 < 0.02, f"{n / 1e9:.3f} B"
    arch = architecture(config)
    linear = sum(
        m.weight.numel()
        for name, m in model.model.language_model.named_modules()
        if isinstance(m, torch.nn.Linear)
    )
    assert arch["lm_linear"] == linear
    assert (arch["full_layers"], arch["linear_layers"]) == (8, 24)


ANSWER = '[{"bbox_2d": [100, 200, 300, 400], "label": "a red circle"}]'


@pytest.mark.parametrize(
    "text,status,n",
    [
        pytest.param(f"<think>\nbox [1, 2] first\n</think>\n\n{ANSWER}", "ok", 1, id="reasoned"),
        pytest.param(f"<think>\n\n</think>\n\n{ANSWER}", "ok", 1, id="thinking-off"),
        pytest.param("<think>\n\n</think>\n\n[]", "empty", 0, id="nothing-found"),
        pytest.param("<think>\nthe circle at [1, 2", "truncated", 0, id="cut-while-thinking"),
        pytest.param(ANSWER, "ok", 1, id="no-thinking-block"),
    ],
)
def test_parse_skips_a_thinking_block(text: str, status: str, n: int) -> None:
    got = parse_regions(text, input_size=(640, 480), image_size=(640, 480), convention="1000")
    assert (got.status, len(got.regions), got.dropped) == (status, n, 0)
    if n:
        assert got.regions.boxes.tolist() == [[64.0, 96.0, 192.0, 192.0]]


@pytest.mark.parametrize(
    "device,names_packages",
    [
        pytest.param("cuda", True, id="gpu-without-fast-kernels"),
        pytest.param("cpu", False, id="cpu-reference-kernels-are-the-point"),
    ],
)
def test_a_gpu_without_the_delta_net_kernels_is_told_what_to_install(
    loaded, device: str, names_packages: bool
) -> None:
    note = slow_kernels(loaded[0], device)  # neither package is installed here
    assert (note is not None) == names_packages
    if note:
        assert "flash-linear-attention" in note and "causal-conv1d" in note


def test_the_moe_variant_decodes_with_generate_and_is_sized(tmp_path: Path, caplog) -> None:
    """Qwen3.5-MoE (inference only): the fallback runs, batched = one at a time, and the
    memory estimate counts every expert, router and shared expert of its language model."""
    path = make_model(tmp_path / "moe", "tiny-qwen35moe", seed=0)
    assert family_of(path).name == "qwen3_5_moe"
    model, processor = load_model(ModelSpec(path=str(path), dtype="fp32"))
    with caplog.at_level(logging.WARNING, logger="vlmjobs.vision.generate"):
        generator = Generator(model, processor, max_batch=2, engine="static")
    assert generator.engine == "hf" and "Qwen3.5-MoE" in caplog.text
    images = [Image.new("RGB", (64 + 60 * i, 150 - 30 * i), (50 * i, 90, 9)) for i in range(3)]
    out = generator.generate(build_inputs(processor, images, PROMPTS), max_new_tokens=6)
    single = [
        generator.generate(build_inputs(processor, [im], [p]), max_new_tokens=6)[0]
        for im, p in zip(images, PROMPTS, strict=True)
    ]
    assert [g.token_ids for g in out] == [g.token_ids for g in single]
    arch = architecture(model.config)
    lm = model.model.language_model
    weights = sum(p.numel() for n, p in lm.layers.named_parameters() if n.endswith(_MATRICES))
    assert arch["lm_linear"] == weights


# Weight matrices of a language-model layer: linear weights and the experts' stacked ones.
_MATRICES = ("proj.weight", "in_proj_qkv.weight", "in_proj_z.weight", "in_proj_a.weight",
             "in_proj_b.weight", "gate.weight", "gate_up_proj",
             "experts.down_proj")  # fmt: skip


def test_a_transformers_without_the_family_class_is_a_clear_error() -> None:
    older = dataclasses.replace(FAMILIES["qwen3_5"], model_class="Qwen3_5NotInThisRelease")
    with pytest.raises(ModelLoadError, match=r"Qwen3.5 \(qwen3_5\) needs .*pip install -U"):
        older.load_class()
