"""Peak GPU memory of an infer job, estimated before loading anything, with its arithmetic.

One batch of the static engine holds, at its peak:

    weights  + KV cache (batch x slots x layers x 2 x kv_dim)
             + max(prefill of a few rows at a time, the decode step's logits)

where slots = the longest prompt (image tokens at ``max_pixels`` + text) + max_new_tokens,
rounded up like the engine rounds them. transformers' ``generate`` (engine hf, sampling,
repetition penalty) prefills the whole batch at once: its prefill term is counted on all
rows. Calibrated on the random-weight 3B in bf16 with 1,090-token prompts and 256 new
tokens on an H100: 10.40 GiB allocated at batch 48 prefilling 4 rows at a time, 11.19 at
8 rows (0.2 GiB per prefill row), 11.03 GiB reserved; on an H200, 10.30 allocated. The
formula gives 10.11 allocated for that workload (1,103-token prompts at the images' own
max_pixels): the slack below covers the rest up to the reserved peak.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vlmjobs.errors import PreflightError
from vlmjobs.recipes.train.memory import (
    CUDA_CONTEXT_GIB,
    GIB,
    VISION_BYTES_PER_CHANNEL,
    WEIGHT_BYTES,
    MemoryEstimate,
    architecture,
)
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.frames import FACTOR
from vlmjobs.vision.static_decode import SLOT_ROUND

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# Measured reserved / estimated allocated at batch 48 (11.03 / 10.11): weights and the KV
# cache are a few large blocks, so less slack than training's 13%.
INFER_ALLOCATOR_SLACK = 0.09
# Prefill, per prompt token of one row, in one decoder layer at a time (no grad): bytes per
# hidden and per MLP channel (hidden states, fp32 norm and rotary copies, q/k/v; gate, up,
# act, product), plus the row's keys and values for every layer until they are copied into
# the static cache. Calibrated by the 4 -> 8 prefill rows step above.
PREFILL_BYTES_PER_HIDDEN = 12.0
PREFILL_BYTES_PER_INTERMEDIATE = 12.0
# The decode step's fp32 logits, their log-softmax and the masked copy greedy picks from.
LOGIT_BYTES = 12
# Chat template, vision start/end tokens and the system line around the prompt's own text.
TEMPLATE_TOKENS = 30
PREFILL_ROWS = 4  # the static engine's default: StaticDecoder(prefill_rows=4)


def text_tokens(text: str) -> int:
    """Tokens of a prompt (+ system) with the template: characters / 2 + 30, an upper bound
    for English prose (~4 characters a token) that needs no tokenizer at submit."""
    return len(text) // 2 + TEMPLATE_TOKENS


def estimate_infer_memory(
    spec: InferSpec,
    *,
    batch: int,
    max_pixels: int,
    prompt: str,
    arch: dict[str, int] | None = None,
    image_tokens: int | None = None,
) -> MemoryEstimate:
    """Peak GPU memory of one batch of ``batch`` images at ``max_pixels`` each.

    ``prompt``: the system + user text (its length sets the text tokens); ``arch``: from
    train.memory.architecture, read from ``spec.model.path``'s config.json when None.
    Visual tokens per image: ``max_pixels`` / the family's factor squared (28 or 32 px a
    token), or ``image_tokens`` when given (a video clip's budget).
    """
    arch = arch or architecture(_load_config(spec.model.path))
    dtype = DTYPE_BYTES[spec.model.dtype]
    factor = arch.get("factor", FACTOR)
    image = image_tokens if image_tokens is not None else max_pixels // (factor * factor)
    tokens = image + text_tokens(prompt)
    slots = math.ceil((tokens + spec.max_new_tokens) / SLOT_ROUND) * SLOT_ROUND
    lines: list[str] = []

    def term(name: str, formula: str, value: float) -> float:
        lines.append(f"{name}: {formula} = {value / GIB:.2f} GiB")
        return value

    quant = spec.model.quantization
    linear_bytes = WEIGHT_BYTES[quant] if quant != "none" else dtype
    other = arch["embed"] + arch["lm_head"] + arch["vision"]
    weights = term(
        f"weights: language-model linear ({quant}) + embeddings, head, vision ({spec.model.dtype})",
        f"{arch['lm_linear']:,} x {linear_bytes:.3f} B + {other:,} x {dtype} B",
        arch["lm_linear"] * linear_bytes + other * dtype,
    )
    # Hybrid models (Qwen3.5) keep keys and values in their full-attention layers only.
    kv_layers = arch.get("full_layers", arch["layers"])
    kv_row = kv_layers * 2 * arch["kv_dim"] * dtype  # bytes per token of one row
    cache = term(
        "KV cache",
        f"{batch} rows x {slots:,} slots ({tokens:,} prompt + {spec.max_new_tokens} new, "
        f"rounded to {SLOT_ROUND}) x {kv_layers} layers x 2 x {arch['kv_dim']} x {dtype} B",
        batch * slots * kv_row,
    )
    if "state_bytes" in arch:  # the delta-net layers' recurrent + convolution state
        cache += term(
            "linear-attention state",
            f"{batch} rows x {arch['linear_layers']} layers, {arch['state_bytes']:,} B a row",
            batch * arch["state_bytes"],
        )
    # generate (asked for, or the fallback for families the static engine cannot run)
    # prefills the whole batch at once.
    rows = batch if _uses_hf(spec) or "state_bytes" in arch else min(batch, PREFILL_ROWS)
    vis_channels = 6 * arch["vision_hidden"] + 3 * arch["vision_intermediate"]
    vision = rows * image * 4 * vis_channels * VISION_BYTES_PER_CHANNEL
    per_token = (
        kv_row
        + PREFILL_BYTES_PER_HIDDEN * arch["hidden"]
        + PREFILL_BYTES_PER_INTERMEDIATE * arch["intermediate"]
    )
    prefill = term(
        f"prefill, {rows} rows at a time: max(vision tower, language model)",
        f"max({rows} x {image * 4:,} patches x {vis_channels:,} x "
        f"{VISION_BYTES_PER_CHANNEL:.0f} B, {rows} x {tokens:,} tokens x {per_token:,.0f} B)",
        max(vision, rows * tokens * per_token),
    )
    logits = term(
        "decode step logits (fp32)",
        f"{batch} x {arch['vocab']:,} x {LOGIT_BYTES} B",
        batch * arch["vocab"] * LOGIT_BYTES,
    )
    allocated = (weights + cache + max(prefill, logits)) / GIB
    total = allocated * (1 + INFER_ALLOCATOR_SLACK) + CUDA_CONTEXT_GIB
    lines.append(f"peak allocated: weights + KV cache + max(prefill, logits) = {allocated:.2f} GiB")
    lines.append(
        f"card needs: {allocated:.2f} x {1 + INFER_ALLOCATOR_SLACK:.2f} + {CUDA_CONTEXT_GIB} GiB "
        f"context = {total:.2f} GiB"
    )
    return MemoryEstimate(lines=lines, total_gib=round(total, 2), allocated_gib=round(allocated, 2))


def plan_batch(
    spec: InferSpec, *, max_pixels: int, prompt: str, arch: dict[str, int] | None = None
) -> tuple[int, MemoryEstimate]:
    """(batch size to run, its estimate): spec.batch_size when it fits preflight.gpu_memory_gib;
    with on_exceed adjust the largest smaller batch that fits. Otherwise (refuse, or not even
    one image fits) a PreflightError with the arithmetic."""
    arch = arch or architecture(_load_config(spec.model.path))
    budget = spec.preflight.gpu_memory_gib

    def estimate(batch: int) -> MemoryEstimate:
        return estimate_infer_memory(
            spec, batch=batch, max_pixels=max_pixels, prompt=prompt, arch=arch
        )

    wanted = estimate(spec.batch_size)
    if wanted.total_gib <= budget:
        return spec.batch_size, wanted
    if spec.preflight.on_exceed == "adjust":
        for batch in range(spec.batch_size - 1, 0, -1):  # estimates are microseconds each
            fits = estimate(batch)
            if fits.total_gib <= budget:
                return batch, fits
    shown = estimate(1) if spec.preflight.on_exceed == "adjust" else wanted
    batch = 1 if spec.preflight.on_exceed == "adjust" else spec.batch_size
    arithmetic = "\n  ".join(shown.lines)
    raise PreflightError(
        f"estimated peak GPU memory {shown.total_gib:.2f} GiB at batch {batch} exceeds "
        f"preflight.gpu_memory_gib {budget} (images up to max_pixels {max_pixels:,}, "
        f"{spec.max_new_tokens} new tokens):\n  {arithmetic}\n"
        "lower batch_size, max_pixels or max_new_tokens, use model.quantization nf4, "
        "set preflight.on_exceed: adjust, or raise preflight.gpu_memory_gib to your card's"
    )


def preflight(spec: InferSpec) -> None:
    """Submit's check (the kind's preflight): the batch fits preflight.gpu_memory_gib, or can
    be adjusted to; a PreflightError with the arithmetic otherwise.

    Skipped for a hub id (no local config.json to size the model from). With a train job's
    adapter ('job:42') its manifest is not read here: the spec's pixel limits are used, and
    the worker checks again with the manifest's before loading.
    """
    if (Path(spec.model.path).expanduser() / "config.json").is_file():
        plan_batch(spec, **preflight_inputs(spec))


def preflight_inputs(spec: InferSpec) -> dict[str, Any]:
    """max_pixels and the prompt text the estimate needs, as submit can know them: the
    spec's (and the adapter directory's manifest); a 'job:42' adapter is not resolved."""
    from vlmjobs.recipes.refs import is_job_ref
    from vlmjobs.vision import tasks

    if spec.model.adapter is None or not is_job_ref(spec.model.adapter):
        from vlmjobs.recipes.infer.plan import make_plan

        plan = make_plan(spec)
        return {
            "max_pixels": plan.max_pixels,
            "prompt": (plan.system or tasks.DEFAULT_SYSTEM) + plan.prompt,
        }
    prompt = tasks.prompt_for(spec.task, labels=spec.labels, phrase=spec.phrase, prompt=spec.prompt)
    return {
        "max_pixels": spec.max_pixels or spec.model.max_pixels,
        "prompt": (spec.system or tasks.DEFAULT_SYSTEM) + prompt,
    }


def _uses_hf(spec: InferSpec) -> bool:
    """True when batches go through transformers' generate (whole-batch prefill)."""
    return spec.engine == "hf" or spec.repetition_penalty != 1.0


def _load_config(path: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)
