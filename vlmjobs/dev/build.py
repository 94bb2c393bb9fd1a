"""Random-weight Qwen2.5-VL checkpoints, built offline (no hub, no downloads).

``make_model(out, arch="tiny")`` writes a directory that the normal loader reads
like a real checkpoint: ``config.json`` + ``model.safetensors`` +
``generation_config.json`` + tokenizer files + ``preprocessor_config.json`` +
the chat template. ``tiny`` is for tests and the demo (built
in about a second, ~0.45 M parameters); ``3b``/``7b`` have the real architecture, so memory and
speed on a GPU are those of the real models (weights are noise).

The tokenizer is always a small byte-level BPE trained here on a fixed corpus
(shape and colour words, digits, JSON punctuation, the task prompts) plus
Qwen's special tokens; for 3b/7b the embedding keeps the real vocab size and
rows past the tokenizer are simply never used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmjobs.dev.corpus import corpus

# Qwen2.5-VL archs built here; ``demo`` (a Qwen3-VL pre-trained on shapes) is
# dev/build_demo.py's, the other families' are dev/build_family.py's.
ARCHS = ("tiny", "3b", "7b")
# The BPE merges learned on the corpus; specials are added after them.
BPE_VOCAB = 2048
# Qwen2's own pre-tokenizer: digits split one by one, so numbers tokenize like the real model.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5-VL's special tokens, in the real checkpoint's order.
SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2.5-VL-Instruct's chat template, verbatim: the tiny model formats exactly like the real one.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Pixel budget written into preprocessor_config.json: the real checkpoints' defaults.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280

_TEXT: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=2,
        max_position_embeddings=8192,
        mrope_section=[2, 3, 3],  # sums to head_dim / 2 = 8
    ),
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_window_layers=70,
        max_position_embeddings=128000,
        mrope_section=[16, 24, 24],
        vocab_size=151936,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_window_layers=28,
        max_position_embeddings=128000,
        mrope_section=[16, 24, 24],
        vocab_size=152064,  # Qwen2.5-VL-7B-Instruct's config.json (not 151936 as the 3B)
    ),
}
_VISION: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, fullatt=[1]),
    "3b": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16),
    "7b": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16),
}
_TIED = {"tiny": True, "3b": True, "7b": False}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r} is not one of {', '.join(ARCHS)}")


def special_ids() -> dict[str, int]:
    """Token ids of Qwen's special tokens in the local tokenizer (they follow the BPE vocab)."""
    return {tok: BPE_VOCAB + i for i, tok in enumerate(SPECIALS)}


def model_config(arch: str, *, vocab_size: int | None = None) -> Qwen2_5_VLConfig:
    """The ``Qwen2_5_VLConfig`` of ``arch`` (tiny | 3b | 7b), token ids of the local tokenizer.

    ``vocab_size`` defaults to the real one for 3b/7b and to the local tokenizer's for tiny.
    Benchmarks instantiate 3b/7b from this directly on the GPU, without saving.
    """
    _check_arch(arch)
    ids = special_ids()
    return Qwen2_5_VLConfig(
        text_config=_text_config(arch, vocab_size),
        vision_config=_vision_config(arch),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=_TIED[arch],
    )


def _text_config(arch: str, vocab_size: int | None) -> dict[str, Any]:
    ids = special_ids()
    text = dict(_TEXT[arch])
    section = text.pop("mrope_section")
    default_vocab = text.pop("vocab_size", BPE_VOCAB + len(SPECIALS))
    return dict(
        text,
        vocab_size=vocab_size or default_vocab,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        use_sliding_window=False,
        sliding_window=32768,
        attention_dropout=0.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=_TIED[arch],
    )


def _vision_config(arch: str) -> dict[str, Any]:
    vis = dict(_VISION[arch])
    fullatt = vis.pop("fullatt", [7, 15, 23, 31])
    return dict(
        vis,
        hidden_act="silu",
        out_hidden_size=_TEXT[arch]["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=fullatt,
        tokens_per_second=2,
    )


def make_tokenizer() -> Qwen2Tokenizer:
    """Train the local byte-level BPE on the fixed corpus and wrap it like Qwen's tokenizer."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    if len(vocab) != BPE_VOCAB:
        # special_ids() assumes exactly BPE_VOCAB learned tokens; the corpus must be rich enough.
        raise RuntimeError(
            f"BPE learned {len(vocab)} tokens, expected {BPE_VOCAB}: grow the corpus"
        )
    # Specials go into the vocab first so their ids are fixed (and in the real checkpoint's order).
    vocab.update(special_ids())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    # Merges as pairs (a "a b" string would be split again); no unk: byte-level covers all.
    settings: dict[str, Any] = {"merges": merges, "unk_token": None}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIALS[1:],
        model_max_length=32768,
        chat_template=CHAT_TEMPLATE,
        **settings,
    )
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    if got != special_ids():
        raise RuntimeError(f"special token ids {got} differ from {special_ids()}")
    return tok


def make_image_processor(
    min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Qwen2VLImageProcessorPil:
    """Qwen2.5-VL's image processor (the PIL variant: needs no torchvision)."""
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def random_model(
    arch: str,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> Qwen2_5_VLForConditionalGeneration:
    """Random weights of ``arch`` built straight on ``device``, nothing written to disk.

    dtype: fp32 for tiny, bf16 (the real checkpoints' dtype) for 3b/7b unless given.
    Same ``seed`` -> identical weights.
    """
    _check_arch(arch)
    config = model_config(arch)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    dtype = dtype or (torch.float32 if arch == "tiny" else torch.bfloat16)
    return seeded_model(Qwen2_5_VLForConditionalGeneration, config, seed, device, dtype)


def seeded_model(cls: Any, config: Any, seed: int, device: str, dtype: torch.dtype) -> Any:
    """``cls(config)`` with random weights drawn from ``seed``, built straight on ``device``
    in ``dtype`` (the default dtype is set for the build and restored)."""
    config.dtype = dtype
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return cls(config)
    finally:
        torch.set_default_dtype(previous)


def make_model(
    out: Path,
    arch: str = "tiny",
    seed: int = 0,
    *,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> Path:
    """Write a random-weight Qwen2.5-VL checkpoint of ``arch`` to ``out``; returns ``out``.

    Same ``seed`` -> identical weights and files. 3b/7b are built in bf16 (their real
    dtype; ~7.5 / 16 GB); pass ``device="cuda"`` to build them fast on a GPU. ``demo``
    is a small Qwen3-VL pre-trained on demo-style shapes (dev/build_demo.py, ~2-3 min
    on 2 CPU cores, progress to ``log``), so that fine-tuning it briefly yields real boxes.
    """
    if arch == "demo":
        from vlmjobs.dev.build_demo import make_demo_model

        return make_demo_model(out, seed, log=log)
    if arch in family_archs():  # Qwen2-VL / Qwen3-VL: dev/build_family.py
        from vlmjobs.dev.build_family import make_family_model

        return make_family_model(out, arch, seed, device=device)
    if arch not in ARCHS:
        known = ", ".join((*ARCHS, "demo", *family_archs()))
        raise ValueError(f"arch {arch!r} is not one of {known}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    model = random_model(arch, seed=seed, device=device)
    model.generation_config = generation_config()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _save_preprocessor(out)
    return out


def generation_config() -> GenerationConfig:
    """Greedy, stopping at <|im_end|> or <|endoftext|> (what Qwen checkpoints ship)."""
    ids = special_ids()
    return GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )


def family_archs() -> tuple[str, ...]:
    """The other families' archs (tiny-qwen2vl, tiny-qwen3vl, qwen3vl-4b, ...)."""
    from vlmjobs.dev.build_family import FAMILY_ARCHS

    return tuple(FAMILY_ARCHS)


def _save_preprocessor(
    out: Path, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
    """preprocessor_config.json as the real checkpoints write it, plus the chat template."""
    make_image_processor().save_pretrained(out)
    path = out / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    # Real checkpoints name the torchvision class; AutoImageProcessor picks the PIL one without it.
    cfg.update(
        image_processor_type="Qwen2VLImageProcessor",
        processor_class="Qwen2_5_VLProcessor",
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}) + "\n")
