"""The model side of a train job: LoRA attached lean, the frozen vision tower run once.

With the loss (``loss.py``) and the memory plan (``memory.py``), these make the 3B fit a
12 GB card and run faster than the seeds' recipe:

- no fp32 upcast of the frozen weights (peft's ``prepare_model_for_kbit_training`` casts
  every norm, the embeddings and the whole vision tower to fp32);
- activation checkpointing of the language model's decoder layers only, non-reentrant,
  while the frozen vision tower runs once under ``no_grad`` (nothing kept, nothing recomputed)
  with its same-length attention windows batched into one call (transformers loops over
  ~70 windows per image per layer: that loop cost 1.7x on the whole step at micro-batch 8);
- the loss reads the last hidden state at the answer positions only (``loss.py``).

The recipe (``recipes/train/recipe.py``) calls :func:`prepare_model`, ``loss.compute_loss``
and ``memory.estimate_peak_memory``; ``bench/train.py`` measures them on the GPU.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vlmjobs.specs.train import LANGUAGE_MODULES, VISION_MODULES, TrainSpec
from vlmjobs.vision.family import family_of_model
from vlmjobs.vision.model import fix_cpu_4bit

IGNORE = -100  # label value of positions without loss (prompt, image, padding)


# ---------------------------------------------------------------- model preparation


def lora_target_regex(targets: list[str], *, vision: bool) -> str:
    """A regex (peft full-matches it against module names) that scopes LoRA to the language model.

    Leaf names alone would also hit the vision tower's MLP (it has gate/up/down_proj too).
    """
    lm = sorted(LANGUAGE_MODULES if "all-linear" in targets else set(targets) & LANGUAGE_MODULES)
    parts = []
    if lm:
        # linear_attn: Qwen3.5's gated delta-net layers (in_proj_qkv, out_proj, ...).
        parts.append(
            rf"language_model\.layers\.\d+\.(?:self_attn|linear_attn|mlp)\.(?:{'|'.join(lm)})"
        )
    if vision:
        vis = sorted(VISION_MODULES if "all-linear" in targets else set(targets) & VISION_MODULES)
        if vis:
            parts.append(rf"visual\.blocks\.\d+\.(?:attn|mlp)\.(?:{'|'.join(vis)})")
    if not parts:
        raise ValueError(f"lora.targets {targets} match no module: name e.g. [q_proj, v_proj]")
    return rf"(?:.*\.)?(?:{'|'.join(parts)})"


def causal_lm(model: Any) -> Any:
    """The Qwen2_5_VLForConditionalGeneration inside a PeftModel (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def prepare_model(model: Any, spec: TrainSpec) -> Any:
    """Freeze the base, attach LoRA, set activation checkpointing; returns the PeftModel.

    ``model`` is a Qwen2_5_VLForConditionalGeneration as ``vision.model.load_model`` returns
    it (nf4 / int8 / bf16). Norms, embeddings and the vision tower keep their dtype.
    """
    from peft import LoraConfig, get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    fix_cpu_4bit(model)  # again: a model may arrive from elsewhere than load_model
    model.config.use_cache = False
    lora = spec.lora
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        lora_dropout=lora.dropout,
        bias="none",
        target_modules=lora_target_regex(lora.targets, vision=lora.vision),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    inner = causal_lm(peft_model).model
    if spec.gradient_checkpointing != "none":
        _checkpoint_layers(inner.language_model.layers)
    if spec.gradient_checkpointing == "all" and lora.vision:
        _checkpoint_layers(inner.visual.blocks)
    if not lora.vision:
        # Frozen tower, frozen inputs: nothing there needs autograd; say so explicitly so no
        # input-grad hook can make it keep 32 layers of activations.
        inner.visual.forward = torch.no_grad()(inner.visual.forward)
    # Only Qwen2.5-VL's tower attends in windows; Qwen2-VL's and Qwen3-VL's attend per image.
    windowed = family_of_model(causal_lm(peft_model)).name == "qwen2_5_vl"
    if windowed and getattr(inner.visual.config, "_attn_implementation", "sdpa") == "sdpa":
        group_vision_windows(inner.visual)
    return peft_model


def _checkpoint_layers(layers: Any) -> None:
    """Recompute these layers in backward (transformers' GradientCheckpointingLayer hook).

    Non-reentrant: gradients reach the LoRA weights inside even though the layer inputs
    (frozen embeddings) do not require grad, so no ``enable_input_require_grads`` is needed.
    """
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)


# ---------------------------------------------------------------- vision attention


def group_vision_windows(visual: Any) -> None:
    """Run the vision tower's windowed SDPA attention as a few batched calls.

    transformers' SDPA path loops over windows: ~70 tiny attention calls per image in each
    of 28 window layers. Windows of equal length (all interior ones) are stacked into one
    call instead; the result is the same attention, to rounding.
    """
    shared: list[tuple[Tensor, list[tuple[Tensor, int, int]]]] = []
    for block in visual.blocks:
        block.attn.forward = partial(_grouped_attention_forward, block.attn, shared)


def _length_groups(cu_seqlens: Tensor) -> list[tuple[Tensor, int, int]]:
    """(token index, count, length) for each distinct sequence length in ``cu_seqlens``."""
    bounds = cu_seqlens.tolist()
    by_length: dict[int, list[int]] = {}
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            by_length.setdefault(end - start, []).append(start)
    groups = []
    for length, starts in by_length.items():
        first = torch.tensor(starts, device=cu_seqlens.device)
        idx = (first[:, None] + torch.arange(length, device=cu_seqlens.device)).reshape(-1)
        groups.append((idx, len(starts), length))
    return groups


def _grouped_attention_forward(
    self: Any,
    groups_cache: list[tuple[Tensor, list[tuple[Tensor, int, int]]]],
    hidden_states: Tensor,
    cu_seqlens: Tensor,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Qwen2_5_VLVisionAttention.forward, with same-length sequences batched."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq = hidden_states.shape[0]
    qkv = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3)
    assert position_embeddings is not None, "Qwen2.5-VL vision attention needs rotary embeddings"
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], *position_embeddings)
    v = qkv[2]
    # Group once per vision forward: all window layers get the same cu_seqlens object, all
    # full-attention layers another; the blocks share this cache of the last two.
    groups = next((g for cu, g in groups_cache if cu is cu_seqlens), None)
    if groups is None:
        groups = _length_groups(cu_seqlens)
        groups_cache[:] = [*groups_cache[-1:], (cu_seqlens, groups)]
    out = torch.empty_like(q)
    heads, dim = q.shape[1], q.shape[2]
    for idx, count, length in groups:
        # (tokens, heads, dim) -> (count, heads, length, dim)
        qg, kg, vg = (t[idx].view(count, length, heads, dim).transpose(1, 2) for t in (q, k, v))
        og = F.scaled_dot_product_attention(qg, kg, vg, scale=self.scaling)
        out[idx] = og.transpose(1, 2).reshape(count * length, heads, dim)
    return self.proj(out.reshape(seq, -1))
