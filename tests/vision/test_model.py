"""load_model / load_processor on the tiny checkpoint, CPU: dtypes, 4-bit, adapters, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmjobs.dev.build import special_ids
from vlmjobs.errors import ModelLoadError
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision import frames
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import ImageOnlyProcessor, has_torchvision, load_model, load_processor

MIN, MAX = 16 * 784, 160 * 784


def _spec(path: Path, **kw) -> ModelSpec:
    return ModelSpec(path=str(path), min_pixels=MIN, max_pixels=MAX, **kw)


def _step(model, processor) -> float:
    """One forward+backward on a single labelled row; returns the loss."""
    batch = build_inputs(processor, [Image.new("RGB", (90, 70), "red")], ["hi"], answers=["ok"])
    loss = model(**batch).loss
    loss.backward()
    return loss.item()


@pytest.mark.parametrize(
    "dtype,quantization,weight_dtype",
    [
        ("fp32", "none", torch.float32),  # case: full precision
        ("bf16", "none", torch.bfloat16),  # case: bf16 stays bf16 on CPU
        ("bf16", "nf4", torch.uint8),  # case: QLoRA 4-bit, packed uint8 weights
        ("bf16", "int8", torch.int8),  # case: LLM.int8()
    ],
)
def test_load_dtypes_and_quantization(tiny_checkpoint, dtype, quantization, weight_dtype):
    model, processor = load_model(_spec(tiny_checkpoint, dtype=dtype, quantization=quantization))
    assert not model.training
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == weight_dtype
    # the vision tower and lm_head are never quantized (llm_int8_skip_modules)
    assert model.model.visual.blocks[0].attn.qkv.weight.dtype != torch.uint8
    assert model.lm_head.weight.dtype != torch.uint8
    batch = build_inputs(processor, [Image.new("RGB", (300, 200))], ["Describe."])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 3)


def test_nf4_trains_after_eval(tiny_checkpoint):
    """The AVX512-BF16 repack fix: an eval-mode no-grad pass first must not break training
    after it (without the fix this raises "a view of a leaf Variable ... in-place" on CPUs
    with AVX512-BF16, as this one has)."""
    from peft import LoraConfig, get_peft_model

    model, processor = load_model(_spec(tiny_checkpoint, quantization="nf4"))
    assert not model.training
    with torch.no_grad():
        model(**build_inputs(processor, [Image.new("RGB", (90, 70))], ["hi"]))
    model.train()
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert np.isfinite(_step(model, processor))


def test_adapter_round_trip(tiny_checkpoint, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _ = load_model(_spec(tiny_checkpoint, dtype="fp32"), for_training=True)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # non-zero, so the adapter changes outputs
    peft.save_pretrained(tmp_path / "adapter")
    model, _ = load_model(_spec(tiny_checkpoint, dtype="fp32", adapter=str(tmp_path / "adapter")))
    assert isinstance(model, PeftModel) and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    trainable, _ = load_model(
        _spec(tiny_checkpoint, dtype="fp32", adapter=str(tmp_path / "adapter")), for_training=True
    )
    assert trainable.training
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora" in n)
    lora = dict(peft.named_parameters())
    loaded = dict(model.named_parameters())
    key = next(k for k in lora if "lora_B" in k)
    assert torch.equal(lora[key].detach(), loaded[key])


@pytest.mark.parametrize(
    "setup,spec_kw,message",
    [
        (None, {"path": "Qwen/Qwen2.5-VL-3B-Instruct"}, "not a local directory"),  # case: hub id
        ("empty_dir", {}, "no config.json"),  # case: a dir that is not a checkpoint
        ("other_type", {}, "model_type 'llama'"),  # case: not a Qwen-VL model
        ("tiny", {"adapter": "/nonexistent/adapter"}, "not a LoRA adapter"),  # case: bad adapter
        ("tiny", {"attn_implementation": "flash_attention_2"}, "flash-attn"),  # case: no FA2 on CPU
    ],
)
def test_load_errors_say_what_to_do(
    tiny_checkpoint, tmp_path, monkeypatch, setup, spec_kw, message
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    path = tmp_path / "model"
    if setup == "empty_dir":
        path.mkdir()
    elif setup == "other_type":
        shutil.copytree(tiny_checkpoint, path)
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    elif setup == "tiny":
        path = tiny_checkpoint
    spec = ModelSpec(**{"path": str(path), **spec_kw})
    with pytest.raises(ModelLoadError, match=message):
        load_model(spec)


@pytest.mark.parametrize(
    "size",
    [
        (517, 383),  # case: ordinary
        (29, 1000),  # case: tall, below min_pixels
        (3000, 2000),  # case: above max_pixels
        (28, 28),  # case: one merged patch
    ],
)
def test_processor_resize_equals_frames_and_image_tokens(tiny_checkpoint, size):
    processor = load_processor(tiny_checkpoint, min_pixels=MIN, max_pixels=MAX)
    if not has_torchvision():
        assert isinstance(processor, ImageOnlyProcessor)
    batch = build_inputs(processor, [Image.new("RGB", size)], ["Describe."])
    t, gh, gw = batch["image_grid_thw"][0].tolist()
    assert (gw * 14, gh * 14) == frames.input_size(size, MIN, MAX)
    n_pad = int((batch["input_ids"] == special_ids()["<|image_pad|>"]).sum())
    assert n_pad == t * gh * gw // 4
    assert batch["pixel_values"].shape == (t * gh * gw, 3 * 2 * 14 * 14)


def test_processor_budget_overrides_the_checkpoints(tiny_checkpoint):
    """The checkpoint says 56*56..1280*784; the spec's budget must win."""
    small = load_processor(tiny_checkpoint, min_pixels=784, max_pixels=4 * 784)
    batch = small(
        text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (600, 600))]
    )
    _, gh, gw = batch["image_grid_thw"][0].tolist()
    want = frames.input_size((600, 600), 784, 4 * 784)
    assert (gw * 14, gh * 14) == want
    assert want != frames.input_size((600, 600), 56 * 56, 1280 * 784)


def test_qwen2_vl_checkpoint_loads_with_its_own_class(tiny_checkpoint, tmp_path):
    """Qwen2-VL (0-1000 boxes) shares tokenizer, processor and text config; the class differs."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vlmjobs.dev.build import model_config

    text = model_config("tiny").text_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "layer_types", "dtype"):
        text.pop(key, None)
    ids = special_ids()
    vision = dict(depth=2, embed_dim=64, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14)
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    shutil.copytree(tiny_checkpoint, tmp_path / "q2")
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path / "q2")
    model, processor = load_model(_spec(tmp_path / "q2", dtype="fp32"))
    assert type(model) is Qwen2VLForConditionalGeneration
    batch = build_inputs(processor, [Image.new("RGB", (200, 150))], ["hi"])
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2
