"""train_model: LoRA scoping, the logits-free loss against transformers' own, the batched
vision attention, and the memory estimate. All on the tiny Qwen2.5-VL, CPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vlmjobs.dev.build import make_model, model_config
from vlmjobs.recipes.train.loss import compute_loss, linear_cross_entropy
from vlmjobs.recipes.train.memory import architecture, estimate_peak_memory
from vlmjobs.recipes.train.model import (
    IGNORE,
    group_vision_windows,
    lora_target_regex,
    prepare_model,
)
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.model import load_model

GRIDS = [(1, 12, 20), (1, 8, 8)]  # 60 and 16 image tokens; 12x20 spans windows of 4 sizes


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


def make_spec(tmp_path: Path, model_dir: Path, **overrides: object) -> TrainSpec:
    data = tmp_path / "train.jsonl"
    data.write_text('{"image": "a.png", "prefix": "p", "suffix": "s"}\n')
    fields = {"model": {"path": str(model_dir)}, "data": {"path": str(data)}, **overrides}
    return TrainSpec.model_validate(fields)


def load(model_dir: Path, quantization: str = "none", dtype: str = "fp32") -> torch.nn.Module:
    spec = {"path": str(model_dir), "quantization": quantization, "dtype": dtype}
    model, _ = load_model(TrainSpec.model_fields["model"].annotation.model_validate(spec))
    return model


def make_batch(config, grids=GRIDS, answers=(7, 12), pads=(3, 0), seed=0) -> dict:
    """Right-padded batch: text, <vision_start> image pads <vision_end>, text, answer, padding.

    Labels only on the answer tokens, as vision.inputs.build_inputs makes them.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = 2000  # ordinary BPE ids of the tiny tokenizer (specials follow at 2048+)
    rows, types, labels = [], [], []
    for (t, h, w), answer in zip(grids, answers, strict=True):
        n_img = t * h * w // 4
        pre, post = (
            torch.randint(0, vocab, (5,), generator=g),
            torch.randint(0, vocab, (4,), generator=g),
        )
        ans = torch.randint(0, vocab, (answer,), generator=g)
        ids = torch.cat([pre, torch.tensor([config.vision_start_token_id]),
                         torch.full((n_img,), config.image_token_id),
                         torch.tensor([config.vision_end_token_id]), post, ans])  # fmt: skip
        rows.append(ids)
        types.append((ids == config.image_token_id).long())
        labels.append(torch.where(torch.arange(len(ids)) >= len(ids) - answer, ids, IGNORE))
    width = max(len(r) + p for r, p in zip(rows, pads, strict=True))

    def pad(seqs: list[torch.Tensor], value: int) -> torch.Tensor:
        return torch.stack(
            [torch.nn.functional.pad(s, (0, width - len(s)), value=value) for s in seqs]
        )

    patches = sum(t * h * w for t, h, w in grids)
    return {
        "input_ids": pad(rows, 0),
        "attention_mask": pad([torch.ones_like(r) for r in rows], 0),
        "mm_token_type_ids": pad(types, 0),
        "pixel_values": torch.randn(patches, 3 * 2 * 14 * 14, generator=g),
        "image_grid_thw": torch.tensor(grids),
        "labels": pad(labels, IGNORE),
    }


@pytest.mark.parametrize(
    ("targets", "vision", "name", "matches"),
    [
        (
            ["q_proj", "v_proj"],
            False,
            "model.language_model.layers.3.self_attn.q_proj",
            True,
        ),  # case: LM attention
        (
            ["q_proj", "v_proj"],
            False,
            "model.language_model.layers.3.self_attn.k_proj",
            False,
        ),  # case: untargeted leaf
        (["gate_proj"], False, "model.language_model.layers.0.mlp.gate_proj", True),  # case: LM MLP
        (
            ["gate_proj"],
            False,
            "model.visual.blocks.0.mlp.gate_proj",
            False,
        ),  # case: vision MLP stays frozen
        (
            ["gate_proj", "qkv"],
            True,
            "model.visual.blocks.0.mlp.gate_proj",
            True,
        ),  # case: vision asked for
        (
            ["gate_proj", "qkv"],
            True,
            "model.visual.blocks.5.attn.qkv",
            True,
        ),  # case: vision attention
        (
            ["all-linear"],
            False,
            "model.language_model.layers.1.mlp.down_proj",
            True,
        ),  # case: all-linear LM
        (
            ["all-linear"],
            False,
            "model.visual.blocks.1.attn.proj",
            False,
        ),  # case: all-linear, vision off
        (["q_proj"], False, "model.visual.merger.mlp.0", False),  # case: merger never targeted
        (["q_proj"], False, "lm_head", False),  # case: head never targeted
    ],
)
def test_lora_target_regex(targets: list[str], vision: bool, name: str, matches: bool) -> None:
    assert (re.fullmatch(lora_target_regex(targets, vision=vision), name) is not None) == matches


def test_lora_target_regex_rejects_targets_matching_nothing() -> None:
    with pytest.raises(ValueError, match=r"\['qkv'\] match no module"):
        lora_target_regex(["qkv"], vision=False)


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])  # case: row-by-row, uneven chunks, one chunk
def test_compute_loss_equals_transformers_loss_and_gradients(
    tiny_dir: Path, tmp_path: Path, chunk_size: int
) -> None:
    torch.manual_seed(0)
    model = prepare_model(load(tiny_dir), make_spec(tmp_path, tiny_dir, lora={"dropout": 0.0}))
    model.train()
    for name, param in model.named_parameters():  # LoRA B starts at zero: give it a value
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    batch = make_batch(model.config)
    reference = model(**batch).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)

    loss, n = compute_loss(model, batch, chunk_size=chunk_size)
    loss.backward()

    assert n == 7 + 12
    assert abs(loss.item() - reference.item()) < 1e-5
    for name, grad in ref_grads.items():
        got = dict(model.named_parameters())[name].grad
        torch.testing.assert_close(got, grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compute_loss_without_label_tokens_is_zero_and_backpropagates(
    tiny_dir: Path, tmp_path: Path
) -> None:
    model = prepare_model(load(tiny_dir), make_spec(tmp_path, tiny_dir)).train()
    batch = make_batch(model.config)
    batch["labels"][:] = IGNORE
    loss, n = compute_loss(model, batch)
    loss.backward()
    assert (n, loss.item()) == (0, 0.0)


def test_linear_cross_entropy_trainable_head_matches_plain() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (9,), generator=g)
    plain = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    plain_grads = torch.autograd.grad(plain, [hidden, weight])
    chunked = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    chunked_grads = torch.autograd.grad(chunked, [hidden, weight])
    torch.testing.assert_close(chunked, plain)
    for got, want in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_grouped_vision_windows_equal_transformers_attention(tiny_dir: Path) -> None:
    model = load(tiny_dir)
    batch = make_batch(model.config)
    with torch.no_grad():
        before = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        group_vision_windows(model.model.visual)
        after = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    torch.testing.assert_close(after.pooler_output, before.pooler_output, rtol=1e-5, atol=1e-5)


def test_prepare_model_trains_only_language_lora_and_keeps_dtypes(
    tiny_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, tiny_dir)
    model = prepare_model(load(tiny_dir, dtype="bf16"), spec)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable} == {"q_proj", "v_proj"}
    norms = [p.dtype for n, p in model.named_parameters() if "norm" in n]
    assert norms and set(norms) == {torch.bfloat16}  # no fp32 upcast of the frozen base
    inner = model.get_base_model().model
    assert all(layer.gradient_checkpointing for layer in inner.language_model.layers)
    assert not any(getattr(b, "gradient_checkpointing", False) for b in inner.visual.blocks)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("quantization", "checkpointing"),
    [("nf4", "language"), ("none", "none")],  # case: QLoRA path; case: bf16 LoRA, no recompute
)
def test_training_steps_lower_the_loss(
    tiny_dir: Path, tmp_path: Path, quantization: str, checkpointing: str
) -> None:
    torch.manual_seed(0)
    spec = make_spec(tmp_path, tiny_dir, gradient_checkpointing=checkpointing, lora={"r": 8})
    model = prepare_model(load(tiny_dir, quantization, dtype="bf16"), spec).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2)
    batch = make_batch(model.config)
    batch["pixel_values"] = batch["pixel_values"].bfloat16()
    losses = []
    for _ in range(12):
        loss, _ = compute_loss(model, batch, chunk_size=8)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    # A random tiny LM learns slowly: require a steady fall, not a collapse.
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.3, losses


def test_checkpointing_leaves_gradients_unchanged(tiny_dir: Path, tmp_path: Path) -> None:
    grads = []
    for checkpointing in ["none", "language"]:
        torch.manual_seed(0)
        spec = make_spec(
            tmp_path, tiny_dir, gradient_checkpointing=checkpointing, lora={"dropout": 0.0}
        )
        model = prepare_model(load(tiny_dir, "nf4", dtype="fp32"), spec).train()
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
        loss, _ = compute_loss(model, make_batch(model.config))
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        ({"model": {"quantization": "none"}}, "bf16 weights"),  # case: larger weights
        ({"gradient_checkpointing": "none"}, "no checkpointing"),  # case: every layer kept
        ({"micro_batch_size": 16}, "bs 16"),  # case: twice the default's activations
        ({"lora": {"r": 64, "targets": ["all-linear"]}}, "big LoRA"),  # case: more optimizer state
    ],
)
def test_estimate_grows_with_what_costs_memory(tmp_path: Path, overrides: dict, what: str) -> None:
    arch = architecture(model_config("3b"))
    base = make_spec(tmp_path, tmp_path)
    fields = base.model_dump() | {k: base.model_dump()[k] | v if isinstance(v, dict) else v
                                  for k, v in overrides.items()}  # fmt: skip
    bigger = TrainSpec.model_validate(fields)
    small = estimate_peak_memory(base, 999, 640, n_params=arch)
    large = estimate_peak_memory(bigger, 999, 640, n_params=arch)
    assert large.allocated_gib > small.allocated_gib, what
    assert small.total_gib > small.allocated_gib
    assert any("nf4" in line for line in small.lines)


def test_architecture_counts_match_the_real_modules(tiny_dir: Path) -> None:
    model = load(tiny_dir)
    inner = model.model
    lm_linear = sum(
        m.weight.numel() for m in inner.language_model.layers.modules()
        if isinstance(m, torch.nn.Linear)
    )  # fmt: skip
    vision = inner.visual.patch_embed.proj.weight.numel() + sum(
        m.weight.numel() for m in inner.visual.modules() if isinstance(m, torch.nn.Linear)
    )
    arch = architecture(model.config)
    assert arch["lm_linear"] == lm_linear
    assert arch["embed"] == inner.language_model.embed_tokens.weight.numel()
    assert arch["vision"] == vision
    assert arch["lm_head"] == 0  # tied, as the 3B


@pytest.mark.parametrize(
    ("quantization", "micro_batch", "checkpointing", "measured_gib"),
    [
        # torch.cuda.max_memory_allocated on one H100, `python bench/train.py`, 2026-11-22:
        # random-weight 3B, 999 image + 642 text tokens a sample, LoRA r4 q,v, chunk 1024.
        ("nf4", 1, "language", 4.13),  # case: loss chunk sets the peak
        ("nf4", 4, "language", 6.02),  # case: small batch
        ("nf4", 8, "language", 7.36),  # case: recompute sets the peak
        ("nf4", 12, "language", 9.41),  # case: the largest under 10 GiB
        ("nf4", 16, "language", 11.47),  # case: over the 10 GiB target
        ("nf4", 1, "none", 10.08),  # case: every layer's activations kept
        ("none", 4, "language", 9.84),  # case: bf16 weights
        ("none", 8, "language", 11.18),  # case: bf16 weights, bigger batch
    ],
)
def test_estimate_within_8_percent_of_gpu_measurements(
    tmp_path: Path, quantization: str, micro_batch: int, checkpointing: str, measured_gib: float
) -> None:
    spec = make_spec(
        tmp_path,
        tmp_path,  # no config.json there: the arch comes from n_params
        model={"path": str(tmp_path), "quantization": quantization},
        micro_batch_size=micro_batch,
        gradient_checkpointing=checkpointing,
    )
    estimate = estimate_peak_memory(spec, 999, 642, n_params=architecture(model_config("3b")))
    assert abs(estimate.allocated_gib / measured_gib - 1) < 0.08, estimate.lines


def test_vision_lora_trains_through_checkpointed_batched_windows(
    tiny_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        tiny_dir,
        lora={"vision": True, "targets": ["q_proj", "qkv"]},
        gradient_checkpointing="all",
    )
    model = prepare_model(load(tiny_dir), spec).train()
    inner = model.get_base_model().model
    assert all(block.gradient_checkpointing for block in inner.visual.blocks)
    loss, _ = compute_loss(model, make_batch(model.config))
    loss.backward()
    # LoRA B starts at zero, so A's gradient is zero at step 0: B's must not be.
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    vision = [n for n in grads if ".visual." in n]
    assert len(vision) == len(inner.visual.blocks)
    assert all(grads[n].abs().sum() > 0 for n in vision), vision
