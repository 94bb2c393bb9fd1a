"""The model side of a train job: LoRA attached lean, a loss that never builds full logits,
and a peak-GPU-memory estimate for preflight.

These make the 3B fit a 12 GB card and run faster than the seeds' recipe:

- no fp32 upcast of the frozen weights (peft's ``prepare_model_for_kbit_training`` casts
  every norm, the embeddings and the whole vision tower to fp32);
- activation checkpointing of the language model's decoder layers only, non-reentrant,
  while the frozen vision tower runs once under ``no_grad`` (nothing kept, nothing recomputed)
  with its same-length attention windows batched into one call (transformers loops over
  ~70 windows per image per layer: that loop cost 1.7x on the whole step at micro-batch 8);
- the loss reads the last hidden state at the answer positions only and runs LM head +
  cross-entropy in chunks, computing the hidden-state gradient in the same pass, so the
  (tokens x 151,936) logits exist one chunk at a time and are never kept for backward.

The recipe (``recipes/train/recipe.py``) calls :func:`prepare_model`, :func:`compute_loss` and
:func:`estimate_peak_memory`; ``bench/train.py`` measures them on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vlmjobs.specs.train import LANGUAGE_MODULES, VISION_MODULES, TrainSpec
from vlmjobs.vision.family import family_of_model

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
    for module in model.modules():
        # bitsandbytes on AVX512-BF16 CPUs repacks 4-bit weights in place during no-grad
        # passes (in_features % 64 == 0); a training step after any eval then fails with
        # "a view of a leaf Variable ... is being used in an in-place operation".
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
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


# ---------------------------------------------------------------- loss


def compute_loss(
    model: Any, batch: dict[str, Tensor], *, chunk_size: int = 1024
) -> tuple[Tensor, int]:
    """Mean cross-entropy over label tokens, and how many there were.

    ``batch``: what ``vision.inputs.build_inputs`` returns (input_ids, attention_mask,
    pixel_values, image_grid_thw, mm_token_type_ids, labels (B, T) with -100 off the answer).
    Same value as transformers' ``model(**batch).loss`` (labels shifted by one), but the LM
    head runs only on the N positions whose next token is a label, ``chunk_size`` rows at a
    time. With zero label tokens the loss is a zero that still backpropagates.
    """
    labels = batch["labels"]
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    lm = causal_lm(model)
    hidden = lm.model(**inputs, use_cache=False, return_dict=True).last_hidden_state  # (B,T,H)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    rows = hidden[:, :-1][keep]  # (N, H): the positions that predict a label
    loss_sum = linear_cross_entropy(rows, lm.lm_head.weight, targets[keep], chunk_size)
    return loss_sum / n, n


def linear_cross_entropy(
    hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int
) -> Tensor:
    """sum_i CE(hidden_i @ weight.T, targets_i) in fp32, ``chunk_size`` rows of logits at a time.

    hidden (N, H), weight (V, H), targets (N,). A frozen ``weight`` (the usual case: tied
    embeddings) takes the fused path, which needs one matmul less than recomputing.
    """
    if weight.requires_grad:
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            total = total + checkpoint(
                _chunk_ce_sum, hidden[rows], weight, targets[rows], use_reentrant=False
            )
        return total
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size)


def _chunk_ce_sum(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, targets, reduction="sum")


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Loss and d(loss)/d(hidden) in one pass over the chunks; only (N, H) is kept for backward.

    d CE / d logits = softmax - onehot, so d CE / d hidden = (softmax - onehot) @ weight:
    computed while the chunk's logits exist, then scaled by the incoming gradient.
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int
    ) -> Tensor:
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if need_grad else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            y = targets[rows]
            logits = F.linear(hidden[rows], weight).float()  # (c, V), as HF: matmul, then fp32
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()  # in place: one (c, V) fp32 buffer
                probs[torch.arange(len(y), device=y.device), y] -= 1.0
                grad[rows] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None]:
        (grad,) = ctx.saved_tensors
        return (grad.float() * grad_out).to(grad.dtype), None, None, None


# ---------------------------------------------------------------- memory estimate

GIB = 2**30
# Bytes per weight of the language model's linear layers, by quantization. nf4: 4 bits plus
# one 8-bit absmax per 64 weights and an fp32 one per 256 blocks (double quantization).
WEIGHT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0 + 4 / 4096, "none": 2.0}
# fp32 LoRA weight + grad + AdamW's two moments.
LORA_STATE_BYTES = 16
# Activations one decoder layer keeps per token, bytes per hidden / per MLP channel (bf16
# hidden, fp32 norm copies, q/k/v, LoRA inputs; gate, up, act(gate), product). Calibrated:
# 3B, nf4, bs1, no checkpointing kept 6.9 GiB over the weights on an H100 (2026-11-22).
LAYER_BYTES_PER_HIDDEN = 12.0
LAYER_BYTES_PER_INTERMEDIATE = 7.5
# The layer being recomputed in backward holds its activations and their gradients:
# calibrated on 3B nf4 bs 8 / 12 / 16 (peak minus weights minus kept inputs, per token).
RECOMPUTE_FACTOR = 1.7
# Transient bytes per vision patch per channel in the frozen tower (no_grad, nothing kept).
# Not measured on its own: the language-model phases set every measured peak.
VISION_BYTES_PER_CHANNEL = 2.0
# Loss chunk: fp32 logits + logsumexp's fp32 temporary, bf16 logits / probabilities.
LOSS_BYTES_PER_LOGIT = 10
# The final norm's fp32 copies of the last hidden state, kept for backward.
FINAL_NORM_BYTES_PER_HIDDEN = 8
# Values per 14x14 patch of pixel_values: 3 channels x 2 frames x 14 x 14.
PATCH_VALUES = 3 * 2 * 14 * 14
# Allocated -> what the card must hold: the CUDA context and the caching allocator's slack
# (reserved / allocated was 1.06-1.13 in the calibration runs).
CUDA_CONTEXT_GIB = 0.5
ALLOCATOR_SLACK = 0.13


@dataclass
class MemoryEstimate:
    """Peak GPU memory of one training step, with the arithmetic that produced it."""

    lines: list[str]  # one line per term, "name: formula = x.xx GiB"
    total_gib: float  # what the card must hold: allocated peak + context + allocator slack
    allocated_gib: float  # torch.cuda.max_memory_allocated() the step should reach


def architecture(config: Any) -> dict[str, int]:
    """Sizes of a Qwen-VL config (any family) that the estimate needs.

    Qwen3-VL's attention width is heads x head_dim (not the hidden size), its tower has
    DeepStack mergers beside the final one; Qwen2-VL names its tower width ``embed_dim``.
    """
    text = getattr(config, "text_config", config)
    vis = config.vision_config
    hidden, layers = text.hidden_size, text.num_hidden_layers
    mlp_weights, inter = _mlp(text)
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    q_dim, kv = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    vh = getattr(vis, "embed_dim", None) or vis.hidden_size
    vi = getattr(vis, "intermediate_size", None) or vh * vis.mlp_ratio
    out = getattr(vis, "out_hidden_size", None) or vis.hidden_size
    mlp_mats = 3 if config.model_type == "qwen2_5_vl" else 2  # gated MLP in Qwen2.5-VL only
    mergers = 1 + len(getattr(vis, "deepstack_visual_indexes", None) or [])
    merged = vh * vis.spatial_merge_size**2
    tied = getattr(config, "tie_word_embeddings", False) or getattr(
        text, "tie_word_embeddings", False
    )
    patch_values = 3 * vis.temporal_patch_size * vis.patch_size**2
    return {
        "hidden": hidden,
        "intermediate": inter,
        "layers": layers,
        "q_dim": q_dim,
        "kv_dim": kv,
        "vocab": text.vocab_size,
        "lm_linear": layers * (2 * hidden * q_dim + 2 * hidden * kv + mlp_weights),
        **_linear_attention(text, q_dim, kv, mlp_weights),
        "embed": text.vocab_size * hidden,
        "lm_head": 0 if tied else text.vocab_size * hidden,
        # Linear weights of the blocks and the merger(s), and the patch embedding.
        "vision": vis.depth * (4 * vh * vh + mlp_mats * vh * vi)
        + mergers * (merged * merged + merged * out)
        + vh * patch_values,
        "vision_hidden": vh,
        "vision_intermediate": vi,
        "patch_values": patch_values,
    }


def _mlp(text: Any) -> tuple[int, int]:
    """(weights of one layer's MLP, MLP channels one token passes through). A mixture of
    experts (the MoE families) holds every expert and its router, a token runs top-k of them
    and the shared expert (Qwen3.5-MoE's)."""
    h, experts = text.hidden_size, getattr(text, "num_experts", None)
    if not experts:
        return 3 * h * text.intermediate_size, text.intermediate_size
    moe = text.moe_intermediate_size
    shared = getattr(text, "shared_expert_intermediate_size", None) or 0
    weights = experts * 3 * h * moe + h * experts + (3 * h * shared + h if shared else 0)
    return weights, text.num_experts_per_tok * moe + shared


def _linear_attention(text: Any, q_dim: int, kv: int, mlp_weights: int) -> dict[str, int]:
    """Qwen3.5's hybrid language model: full-attention layers (q_proj twice as wide: it also
    yields the output gate) between gated delta-net layers (fused q/k/v, output gate z,
    per-head decay a and rate b, out_proj), each holding a recurrent state instead of keys
    and values. Empty for the dense families."""
    types = getattr(text, "layer_types", None) or []
    linear = sum(t == "linear_attention" for t in types)
    if not linear:
        return {}
    h, full = text.hidden_size, len(types) - linear
    key = text.linear_num_key_heads * text.linear_key_head_dim
    value = text.linear_num_value_heads * text.linear_value_head_dim
    heads = text.linear_num_value_heads
    per_linear = h * (2 * key + value) + 2 * h * value + 2 * h * heads
    state = heads * text.linear_key_head_dim * text.linear_value_head_dim * 4  # fp32
    conv = (2 * key + value) * text.linear_conv_kernel_dim * 2
    return {
        "lm_linear": full * (3 * h * q_dim + 2 * h * kv)
        + linear * per_linear
        + len(types) * mlp_weights,
        "full_layers": full,
        "linear_layers": linear,
        "linear_key_dim": key,
        "linear_value_dim": value,
        "linear_heads": heads,
        "state_bytes": linear * (state + conv),  # per row, whatever its length
    }


def lora_params(arch: dict[str, int], targets: list[str], r: int) -> int:
    """Trainable LoRA params on the language model: r * (d_in + d_out) per target per layer."""
    h, kv, i = arch["hidden"], arch["kv_dim"], arch["intermediate"]
    q = arch.get("q_dim", h)
    shapes = {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }  # fmt: skip
    names = shapes if "all-linear" in targets else [t for t in targets if t in shapes]
    if "linear_layers" not in arch:
        return arch["layers"] * sum(r * sum(shapes[name]) for name in names)
    # Hybrid (Qwen3.5): attention targets exist in the full-attention layers only (q_proj
    # with its gate), the delta-net projections in the linear ones, the MLP in all.
    key, value, heads = arch["linear_key_dim"], arch["linear_value_dim"], arch["linear_heads"]
    shapes["q_proj"] = (h, 2 * q)
    linear_shapes = {
        "in_proj_qkv": (h, 2 * key + value), "in_proj_z": (h, value),
        "in_proj_a": (h, heads), "in_proj_b": (h, heads), "out_proj": (value, h),
    }  # fmt: skip
    every = [n for n in names if n in ("gate_proj", "up_proj", "down_proj")]
    attention = [n for n in names if n not in every]
    delta = linear_shapes if "all-linear" in targets else [t for t in targets if t in linear_shapes]
    per = {n: r * sum(shape) for n, shape in {**shapes, **linear_shapes}.items()}
    return (
        arch["layers"] * sum(per[n] for n in every)
        + arch["full_layers"] * sum(per[n] for n in attention)
        + arch["linear_layers"] * sum(per[n] for n in delta)
    )


def estimate_peak_memory(
    spec: TrainSpec,
    max_image_tokens: int,
    max_text_tokens: int,
    *,
    n_params: dict[str, int] | None = None,
) -> MemoryEstimate:
    """Peak GPU memory of a step on the largest sample, repeated micro_batch_size times.

    ``max_image_tokens``: merged image tokens of the largest image (pixels / factor^2: 28 or 32);
    ``max_text_tokens``: prompt + answer + template tokens. ``n_params``: from
    :func:`architecture`; read from ``spec.model.path``'s config.json when None.
    Vision LoRA is not modelled (its activations are counted as for a frozen tower).
    """
    arch = n_params or architecture(_load_config(spec.model.path))
    bs, h = spec.micro_batch_size, arch["hidden"]
    tokens = bs * (max_image_tokens + max_text_tokens)
    lines: list[str] = []

    def term(name: str, formula: str, value: float) -> float:
        lines.append(f"{name}: {formula} = {value / GIB:.2f} GiB")
        return value

    patches = bs * max_image_tokens * 4  # 2x2 patches merge into one token
    weights = _resident_terms(spec, arch, patches, term)
    kept, backward = _activation_terms(spec, arch, tokens, term)
    rows = min(spec.loss_chunk_size, bs * max_text_tokens)
    loss = term(
        "final norm (fp32) + loss chunk",
        f"{tokens:,} x {h} x {FINAL_NORM_BYTES_PER_HIDDEN} B + "
        f"{rows:,} rows x {arch['vocab']:,} x {LOSS_BYTES_PER_LOGIT} B",
        tokens * h * FINAL_NORM_BYTES_PER_HIDDEN + rows * arch["vocab"] * LOSS_BYTES_PER_LOGIT,
    )
    vis_channels = 6 * arch["vision_hidden"] + 3 * arch["vision_intermediate"]
    vision = term(
        "vision tower, transient (no_grad)",
        f"{patches:,} patches x {vis_channels:,} x {VISION_BYTES_PER_CHANNEL:.0f} B",
        patches * vis_channels * VISION_BYTES_PER_CHANNEL,
    )
    # The tower runs before the language model keeps anything; the loss chunk before backward.
    peak = weights + max(vision, kept + max(loss, backward))
    allocated = peak / GIB
    total = allocated * (1 + ALLOCATOR_SLACK) + CUDA_CONTEXT_GIB
    lines.append(
        f"peak allocated: weights + max(vision, kept + max(loss, backward)) = {allocated:.2f} GiB"
    )
    lines.append(
        f"card needs: {allocated:.2f} x {1 + ALLOCATOR_SLACK:.2f} + {CUDA_CONTEXT_GIB} GiB "
        f"context = {total:.2f} GiB"
    )
    return MemoryEstimate(lines=lines, total_gib=round(total, 2), allocated_gib=round(allocated, 2))


def _resident_terms(spec: TrainSpec, arch: dict[str, int], patches: int, term: Any) -> float:
    """Bytes present for the whole step: weights, LoRA with its optimizer, the batch's pixels."""
    quant = spec.model.quantization
    weights = term(
        f"language-model linear weights ({quant})",
        f"{arch['lm_linear']:,} x {WEIGHT_BYTES[quant]:.3f} B",
        arch["lm_linear"] * WEIGHT_BYTES[quant],
    )
    other = arch["embed"] + arch["lm_head"] + arch["vision"]
    weights += term("embeddings + LM head + vision tower (bf16)", f"{other:,} x 2 B", other * 2)
    n_lora = lora_params(arch, spec.lora.targets, spec.lora.r)
    weights += term(
        "LoRA + grads + AdamW (fp32)", f"{n_lora:,} x {LORA_STATE_BYTES} B", n_lora * 16
    )
    values = arch.get("patch_values", PATCH_VALUES)
    weights += term(
        "pixel values (bf16)",
        f"{patches:,} patches x {values} x 2 B",
        patches * values * 2,
    )
    return weights


def _activation_terms(
    spec: TrainSpec, arch: dict[str, int], tokens: int, term: Any
) -> tuple[float, float]:
    """(kept through the forward, extra during backward) for the language model."""
    h, layers = arch["hidden"], arch["layers"]
    per_layer = LAYER_BYTES_PER_HIDDEN * h + LAYER_BYTES_PER_INTERMEDIATE * arch["intermediate"]
    if spec.gradient_checkpointing == "none":
        kept = term(
            "activations, every layer",
            f"{tokens:,} tokens x {layers} layers x {per_layer:,.0f} B",
            tokens * layers * per_layer,
        )
        grads = term(
            "one layer's activation gradients in backward",
            f"{tokens:,} tokens x {per_layer:,.0f} B x {RECOMPUTE_FACTOR - 1:.1f}",
            tokens * per_layer * (RECOMPUTE_FACTOR - 1),
        )
        return kept, grads
    kept = term(
        "checkpointed layer inputs (bf16)",
        f"{tokens:,} tokens x {layers} layers x {2 * h} B",
        tokens * layers * 2 * h,
    )
    recompute = term(
        "one layer recomputed in backward, with its gradients",
        f"{tokens:,} tokens x {per_layer:,.0f} B x {RECOMPUTE_FACTOR}",
        tokens * per_layer * RECOMPUTE_FACTOR,
    )
    return kept, recompute


def _load_config(path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)
