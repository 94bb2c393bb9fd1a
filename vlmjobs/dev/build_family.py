"""Random-weight Qwen2-VL and Qwen3-VL checkpoints, built offline (``dev/build.py`` makes
the Qwen2.5-VL ones and shares its tokenizer).

| arch             | model_type | what for                                                 |
| ---------------- | ---------- | -------------------------------------------------------- |
| tiny-qwen2vl     | qwen2_vl   | tests: clean, train, infer end to end on a CPU           |
| tiny-qwen3vl     | qwen3_vl   | the same; DeepStack on both layers of its 2-layer LM     |
| tiny-qwen3vlmoe  | qwen3_vl_moe | the same with 4 experts, top 2 (inference tests)       |
| qwen3vl-2b/4b/8b | qwen3_vl   | GPU benchmarks: the real architectures, noise weights    |
| tiny-qwen35, qwen35-9b | qwen3_5 | the same for Qwen3.5 (``dev/build_qwen35.py``)   |
| tiny-qwen35moe   | qwen3_5_moe | tiny-qwen35 with 4 experts, top 2 (inference tests)  |

The real-size ones use the Qwen3-VL-*-Instruct config.json values.

The tiny ones are built in about a second; the real-size ones in bf16 (pass
``device="cuda"`` to build them fast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PretrainedConfig,
    Qwen2VLConfig,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
)

from vlmjobs.dev.build import (
    BPE_VOCAB,
    SPECIALS,
    generation_config,
    make_image_processor,
    make_tokenizer,
    seeded_model,
    special_ids,
)
from vlmjobs.vision.family import FAMILIES, Family

# One message's content in Qwen3-VL's template (Qwen3.5's too): images, videos and text.
QWEN3_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
)
# Qwen3-VL-Instruct's chat template, images and text only (its tool-call and reasoning
# branches are left out). Unlike Qwen2/2.5-VL it adds no default system message.
QWEN3_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    + QWEN3_CONTENT
    + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen3.5: the same plus its thinking switch. The generation prompt opens "<think>\n" by
# default and closes an empty block with enable_thinking=False; the final assistant turn
# is rendered after an empty block, as the real template does.
QWEN3_5_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
    + QWEN3_CONTENT
    + "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)

_TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
# Qwen3-VL-Instruct config.json values (text hidden/intermediate/layers/heads/kv heads,
# vision depth/hidden/intermediate/DeepStack layers, tied embeddings).
_QWEN3_TEXT: dict[str, dict[str, Any]] = {
    "qwen3vl-2b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8),
    "qwen3vl-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8),
    "qwen3vl-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                       num_attention_heads=32, num_key_value_heads=8),
}  # fmt: skip
_QWEN3_VISION: dict[str, dict[str, Any]] = {
    "qwen3vl-2b": dict(depth=24, hidden_size=1024, intermediate_size=4096,
                       deepstack_visual_indexes=[5, 11, 17]),
    "qwen3vl-4b": dict(depth=24, hidden_size=1024, intermediate_size=4096,
                       deepstack_visual_indexes=[5, 11, 17]),
    "qwen3vl-8b": dict(depth=27, hidden_size=1152, intermediate_size=4304,
                       deepstack_visual_indexes=[8, 16, 24]),
}  # fmt: skip
_QWEN3_TIED = {"qwen3vl-2b": True, "qwen3vl-4b": True, "qwen3vl-8b": False}
FAMILY_ARCHS: dict[str, str] = {
    "tiny-qwen2vl": "qwen2_vl",
    "tiny-qwen3vl": "qwen3_vl",
    "tiny-qwen3vlmoe": "qwen3_vl_moe",
    **{arch: "qwen3_vl" for arch in _QWEN3_TEXT},
    "tiny-qwen35": "qwen3_5",
    "qwen35-9b": "qwen3_5",
    "tiny-qwen35moe": "qwen3_5_moe",
}


def arch_family(arch: str) -> Family:
    if arch not in FAMILY_ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(FAMILY_ARCHS)}")
    return FAMILIES[FAMILY_ARCHS[arch]]


def _token_ids() -> dict[str, Any]:
    ids = special_ids()
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _text_common(vocab_size: int, tied: bool) -> dict[str, Any]:
    ids = special_ids()
    return dict(
        vocab_size=vocab_size,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=tied,
    )


def model_config(arch: str) -> PretrainedConfig:
    """The transformers config of ``arch``, token ids of the local tokenizer."""
    family = arch_family(arch)
    if family.linear_attention:  # Qwen3.5 and its MoE
        from vlmjobs.dev.build_qwen35 import THINK_TOKENS, qwen35_config

        tiny = arch.startswith("tiny")
        vocab = BPE_VOCAB + len(SPECIALS) + len(THINK_TOKENS) if tiny else 248320
        return qwen35_config(arch, _token_ids(), _text_common(vocab, tied=tiny))
    if arch == "tiny-qwen3vlmoe":  # tiny-qwen3vl with every MLP a mixture of 4 experts
        dense = model_config("tiny-qwen3vl").to_dict()
        text, vision = dense.pop("text_config"), dense.pop("vision_config")
        text.pop("model_type"), vision.pop("model_type")
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                    decoder_sparse_step=1)  # fmt: skip
        return Qwen3VLMoeConfig(
            text_config=text, vision_config=vision, tie_word_embeddings=True, **_token_ids()
        )
    if arch == "tiny-qwen2vl":
        return Qwen2VLConfig(
            text_config=dict(
                _TINY_TEXT,
                **_text_common(BPE_VOCAB + len(SPECIALS), True),
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 1e6,
                    "mrope_section": [2, 3, 3],
                },
            ),  # fmt: skip
            vision_config=dict(
                depth=2,
                embed_dim=64,
                hidden_size=64,
                mlp_ratio=2,
                num_heads=4,
                patch_size=family.patch_size,
                spatial_merge_size=family.merge_size,
            ),  # fmt: skip
            tie_word_embeddings=True,
            **_token_ids(),
        )
    tiny = arch == "tiny-qwen3vl"
    text = _TINY_TEXT if tiny else _QWEN3_TEXT[arch]
    vision = (
        dict(depth=2, hidden_size=64, intermediate_size=128, deepstack_visual_indexes=[0, 1])
        if tiny
        else _QWEN3_VISION[arch]
    )
    tied = True if tiny else _QWEN3_TIED[arch]
    head_dim = 16 if tiny else 128
    return Qwen3VLConfig(
        text_config=dict(
            text,
            **_text_common(BPE_VOCAB + len(SPECIALS) if tiny else 151936, tied),
            head_dim=head_dim,
            max_position_embeddings=8192 if tiny else 262144,
            # Interleaved MRoPE: sections in the real ratio 24:20:20, summing to head_dim / 2.
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [4, 2, 2] if tiny else [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),  # fmt: skip
        vision_config=dict(
            vision,
            num_heads=4 if tiny else 16,
            out_hidden_size=text["hidden_size"],
            patch_size=family.patch_size,
            spatial_merge_size=family.merge_size,
            temporal_patch_size=2,
            num_position_embeddings=64 if tiny else 2304,  # a square grid: 8x8, 48x48
            hidden_act="gelu_pytorch_tanh",
        ),
        tie_word_embeddings=tied,
        **_token_ids(),
    )


def random_family_model(
    arch: str, *, seed: int = 0, device: str = "cpu", dtype: torch.dtype | None = None
) -> Any:
    """Random weights of ``arch`` on ``device``; fp32 for the tiny ones, bf16 otherwise."""
    config = model_config(arch)
    dtype = dtype or (torch.float32 if arch.startswith("tiny") else torch.bfloat16)
    return seeded_model(arch_family(arch).load_class(), config, seed, device, dtype)


def make_family_model(out: Path, arch: str, seed: int = 0, *, device: str = "cpu") -> Path:
    """Write a random-weight checkpoint of ``arch`` (see the table above) to ``out``."""
    family = arch_family(arch)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    if family.patch_size == 16:  # Qwen3-VL and its MoE
        tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    if family.linear_attention:  # Qwen3.5 and its MoE
        from vlmjobs.dev.build_qwen35 import THINK_TOKENS

        tok.add_tokens(THINK_TOKENS)  # ids right after the specials, as in the config's vocab
        tok.chat_template = QWEN3_5_CHAT_TEMPLATE
    model = random_family_model(arch, seed=seed, device=device)
    model.generation_config = generation_config()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _save_preprocessor(out, family, tok.chat_template)
    return out


def _save_preprocessor(out: Path, family: Family, template: str) -> None:
    """preprocessor_config.json as the family's real checkpoints write it: for Qwen3-VL that
    includes its huge default budget (16,384 tokens), which vlmjobs always overrides."""
    processor = make_image_processor(family.default_min_pixels, family.default_max_pixels)
    processor.patch_size, processor.merge_size = family.patch_size, family.merge_size
    processor.image_mean, processor.image_std = list(family.image_mean), list(family.image_std)
    processor.save_pretrained(out)
    path = out / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(
        image_processor_type="Qwen2VLImageProcessor",
        processor_class=family.processor_class,
    )
    qwen3 = family.patch_size == 16
    lo, hi = (65536, 16384 * 32 * 32) if qwen3 else (56 * 56, 28 * 28 * 1280)
    cfg.update(min_pixels=lo, max_pixels=hi, size={"shortest_edge": lo, "longest_edge": hi})
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.json").write_text(json.dumps({"chat_template": template}) + "\n")
