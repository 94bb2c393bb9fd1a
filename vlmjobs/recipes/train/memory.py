"""Peak GPU memory of a train job, estimated before loading anything, with its arithmetic:
weights, LoRA state, the activations each decoder layer keeps, the recomputed layer and the
loss chunk. Calibrated on the random-weight 3B (numbers at each constant). ``architecture``
reads the sizes these need from a checkpoint's config; infer's estimate shares it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmjobs.specs.train import TrainSpec

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
        # Pixels per side of one visual token: 28 (Qwen2/2.5-VL) or 32 (Qwen3-VL, Qwen3.5).
        "factor": vis.patch_size * vis.spatial_merge_size,
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
