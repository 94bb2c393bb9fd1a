"""Model inputs for a batch of (image, prompt[, answer]): chat template, image tokens, labels.

    batch = build_inputs(processor, images, prompts)                  # generation
    batch = build_inputs(processor, images, prompts, answers=targets) # training

Generation batches are left padded and end with the assistant turn opened;
training batches are right padded and carry ``labels``: -100 everywhere except
the assistant's answer tokens and the closing <|im_end|> (so the model learns
to stop).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

IGNORE = -100
# What a thinking template (Qwen3.5) puts before the answer when thinking is off.
EMPTY_THINK = "<think>\n\n</think>\n\n"


def messages_for(
    prompt: str, *, system: str | None = None, answer: str | None = None
) -> list[dict[str, Any]]:
    """Qwen chat messages for one image + prompt (+ answer). No system -> the template's default."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "image"}, {"type": "text", "text": prompt}]
    messages.append({"role": "user", "content": content})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def build_inputs(
    processor: Any,
    images: list[Image.Image],
    prompts: list[str],
    *,
    system: str | None = None,
    answers: list[str] | None = None,
    padding_side: str | None = None,
) -> BatchFeature:
    """Tensors for a batch: one image and one prompt per row (and one answer when training).

    Returns ``input_ids`` / ``attention_mask`` (B, T), ``pixel_values`` (sum of patches,
    1176), ``image_grid_thw`` (B, 3) and, with ``answers``, ``labels`` (B, T).
    ``padding_side`` defaults to "left" for generation and "right" for training.
    """
    if len(images) != len(prompts) or (answers is not None and len(answers) != len(prompts)):
        raise ValueError(
            f"got {len(images)} images, {len(prompts)} prompts and "
            f"{'no' if answers is None else len(answers)} answers: need one of each per row"
        )
    if not prompts:
        raise ValueError("build_inputs needs at least one row")
    side = padding_side or ("left" if answers is None else "right")
    rows = answers if answers is not None else [None] * len(prompts)
    # Qwen3.5's template opens a thinking block unless told not to (its answer would start
    # with reasoning, not the JSON). Only a template that reads the flag gets it: transformers
    # warns on every call about a keyword the template does not use.
    template = str(getattr(processor, "chat_template", None) or "")
    thinking = {"enable_thinking": False} if "enable_thinking" in template else {}
    texts = [
        processor.apply_chat_template(
            messages_for(p, system=system, answer=a),
            tokenize=False,
            add_generation_prompt=answers is None,
            **thinking,
        )
        for p, a in zip(prompts, rows, strict=True)
    ]
    rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
    batch = processor(text=texts, images=rgb, return_tensors="pt", padding=True, padding_side=side)
    if answers is not None:
        batch["labels"] = answer_labels(batch["input_ids"], batch["attention_mask"], processor)
    return batch


def answer_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, processor: Any) -> Any:
    """(B, T) labels: the tokens after the last "<|im_start|>assistant\\n" (and an empty
    thinking block there) up to and including the last <|im_end|>; -100 elsewhere (prompt,
    image, padding)."""
    tok = processor.tokenizer
    start_id = tok.convert_tokens_to_ids("<|im_start|>")
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    header = tok.encode("assistant\n", add_special_tokens=False)
    empty_think = tok.encode(EMPTY_THINK, add_special_tokens=False)
    labels = torch.full_like(input_ids, IGNORE)
    for row, (ids, mask) in enumerate(
        zip(input_ids.tolist(), attention_mask.tolist(), strict=True)
    ):
        real = [i for i, m in enumerate(mask) if m]
        starts = [i for i in real if ids[i] == start_id]
        ends = [i for i in real if ids[i] == end_id]
        begin = starts[-1] + 1 + len(header) if starts else None
        if begin is None or ids[starts[-1] + 1 : begin] != header or not ends or ends[-1] < begin:
            raise ValueError(f"row {row} has no complete assistant turn to label")
        if ids[begin : begin + len(empty_think)] == empty_think:
            begin += len(empty_think)  # part of the generation prompt, not of the answer
        labels[row, begin : ends[-1] + 1] = input_ids[row, begin : ends[-1] + 1]
    return labels
