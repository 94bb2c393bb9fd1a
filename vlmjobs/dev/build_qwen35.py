"""Random-weight Qwen3.5 checkpoints (``model_type`` ``qwen3_5``), built offline through
``dev/build_family.py`` (``vlmjobs dev make-model OUT --arch tiny-qwen35 | qwen35-9b``).

| arch           | what for                                                          |
| -------------- | ----------------------------------------------------------------- |
| tiny-qwen35    | tests: a gated delta-net (linear attention) layer, then a full-attention one |
| tiny-qwen35moe | the same with every MLP 4 experts (top 2) + a shared one (qwen3_5_moe) |
| qwen35-9b      | GPU benchmarks: Qwen3.5-9B's architecture (config.json values), noise weights |

Qwen3.5 is Qwen3-VL's vision tower (patch 16, merge 2, no DeepStack) in front of a hybrid
language model: three of every four layers are gated delta-net linear attention (a causal
depthwise convolution and a recurrent state per row), the fourth is gated full attention
(q_proj also yields an output gate; partial rotary, interleaved MRoPE). Its tokenizer has
``<think>`` / ``</think>`` as ordinary added tokens and its chat template opens a thinking
block unless ``enable_thinking=False``; the tiny template mirrors that branch.

The 9B values are those of Qwen/Qwen3.5-9B's config.json (text: hidden 4096, 32 layers,
intermediate 12288, 16 heads / 4 kv heads of 256, linear attention 16 key / 32 value heads of
128, vocab 248,320, untied; vision: depth 27, hidden 1152, intermediate 4304, 16 heads):
9.65 B parameters with its multi-token-prediction layer, which transformers does not load.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen3_5Config, Qwen3_5MoeConfig

# Thinking markers: ordinary added tokens in Qwen3.5's tokenizer (decoded with the text).
THINK_TOKENS = ["<think>", "</think>"]

# Its tiny chat template (the thinking switch) is dev/build_family.QWEN3_5_CHAT_TEMPLATE.

_TEXT: dict[str, dict[str, Any]] = {
    # One layer of each kind; widths small but every head count > 1 (grouped heads exercised).
    "tiny-qwen35": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        layer_types=["linear_attention", "full_attention"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16,
        max_position_embeddings=8192,
    ),
    "qwen35-9b": dict(
        hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
        layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 8,
        num_attention_heads=16, num_key_value_heads=4, head_dim=256,
        linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128,
        max_position_embeddings=262144,
    ),
}  # fmt: skip
_VISION: dict[str, dict[str, Any]] = {
    "tiny-qwen35": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                        num_position_embeddings=64),
    "qwen35-9b": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                      num_position_embeddings=2304),
}  # fmt: skip
# The MoE variant's MLPs: routed experts (top k) beside one shared expert.
_EXPERTS: dict[str, dict[str, Any]] = {
    "tiny-qwen35moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           shared_expert_intermediate_size=32),
}  # fmt: skip
ARCHS = (*_TEXT, *_EXPERTS)


def qwen35_config(arch: str, token_ids: dict[str, Any], text_common: dict[str, Any]) -> Any:
    """The ``Qwen3_5Config`` of ``arch``: ``token_ids`` (image/video/vision start/end) and
    ``text_common`` (vocab, eos/pad ids, tying) come from the local tokenizer's builder."""
    moe = arch in _EXPERTS
    text = dict(_TEXT["tiny-qwen35"]) if moe else _TEXT[arch]
    if moe:
        del text["intermediate_size"]  # every MLP is a mixture
        text.update(_EXPERTS[arch])
    vision = _VISION["tiny-qwen35" if moe else arch]
    rotary = int(text["head_dim"] * 0.25)  # partial rotary: a quarter of each head
    return (Qwen3_5MoeConfig if moe else Qwen3_5Config)(
        text_config=dict(
            text,
            **text_common,
            linear_conv_kernel_dim=4,
            # Interleaved MRoPE over the rotary quarter: the real 11:11:10 sections of 32.
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e7,
                "partial_rotary_factor": 0.25,
                "mrope_section": [11, 11, 10] if rotary == 64 else [2, 1, 1],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            vision,
            out_hidden_size=text["hidden_size"],
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            hidden_act="gelu_pytorch_tanh",
        ),
        tie_word_embeddings=text_common["tie_word_embeddings"],
        **token_ids,
    )
