"""A train job's fail-fast checks, before any model loads: the data reads, its pixel frame
matches the model's, LoRA targets exist in the family, and the memory plan fits the card
(micro-batches split as needed), with the arithmetic shown when it refuses.

The kind's preflight (``kinds.py``): submit calls it once (a refusal is exit 2) and the
recipe's setup once per attempt.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from vlmjobs.errors import PreflightError
from vlmjobs.recipes.train.data import Sample, TrainData, image_tokens, load_data
from vlmjobs.recipes.train.memory import MemoryEstimate, estimate_peak_memory
from vlmjobs.specs.train import LINEAR_ATTENTION_MODULES, TrainSpec
from vlmjobs.vision.model import model_family


@dataclasses.dataclass
class Preflight:
    data: TrainData
    splits: int  # each micro-batch runs in this many parts to fit the card
    estimate: MemoryEstimate | None  # None: no local config.json to size the model from


def preflight(spec: TrainSpec) -> Preflight:
    """Fail fast before the model loads: the data reads, its pixel frame matches, memory fits.

    Submit calls it once (a refusal is exit 2 with the arithmetic) and ``run`` once per
    attempt. The memory plan is skipped for a hub id: no local config to size the model
    from, and submit must not reach the network.
    """
    data = load_data(spec)  # DataError when unreadable or cleaned for another pixel frame
    if not (Path(spec.model.path).expanduser() / "config.json").is_file():
        return Preflight(data, 1, None)
    check_lora_targets(spec)
    splits, estimate = plan_memory(spec, data.train)
    return Preflight(data, splits, estimate)


def check_lora_targets(spec: TrainSpec) -> None:
    """Gated delta-net projections exist only in Qwen3.5: on another family they would
    silently get no LoRA (or none at all, a peft error after the model loaded)."""
    family = model_family(spec.model.path)
    absent = sorted(set(spec.lora.targets) & LINEAR_ATTENTION_MODULES)
    if absent and not family.linear_attention:
        raise PreflightError(
            f"lora.targets {absent} are Qwen3.5's linear-attention projections; "
            f"{spec.model.path!r} is {family.title}: use q_proj, k_proj, v_proj, o_proj, "
            "gate_proj, up_proj, down_proj or all-linear"
        )


def plan_memory(spec: TrainSpec, train: list[Sample]) -> tuple[int, MemoryEstimate]:
    """(splits, estimate): how many parts each micro-batch must run in to fit the card.

    Estimated on the largest image and longest text of the data. With
    preflight.on_exceed refuse (or nothing left to shrink), a PreflightError shows the
    arithmetic.
    """
    lo, hi = spec.model.min_pixels, spec.model.max_pixels
    factor = model_family(spec.model.path).factor
    max_image = max(image_tokens(s, lo, hi, factor=factor) for s in train)
    max_text = longest_text_tokens(spec, train)
    splits = 1
    while True:
        mbs = math.ceil(spec.micro_batch_size / splits)
        estimate = estimate_peak_memory(
            spec.model_copy(update={"micro_batch_size": mbs}), max_image, max_text
        )
        if estimate.total_gib <= spec.preflight.gpu_memory_gib:
            return splits, estimate
        if spec.preflight.on_exceed == "refuse" or mbs <= spec.oom.min_micro_batch:
            arithmetic = "\n  ".join(estimate.lines)
            raise PreflightError(
                f"estimated peak GPU memory {estimate.total_gib:.2f} GiB at micro-batch {mbs} "
                f"exceeds preflight.gpu_memory_gib {spec.preflight.gpu_memory_gib} "
                f"(largest image {max_image} tokens, longest text ~{max_text}):\n  {arithmetic}\n"
                "lower micro_batch_size or model.max_pixels, set gradient_checkpointing: "
                "language, or set preflight.on_exceed: adjust"
            )
        splits *= 2


def longest_text_tokens(spec: TrainSpec, train: list[Sample], candidates: int = 64) -> int:
    """Tokens of the longest system + prompt + answer, plus ~30 for the chat template.

    Counted by the model's own tokenizer over the ``candidates`` longest texts by
    characters (tokenizing a whole large data set would make submit slow). Without a
    readable tokenizer, characters / 2: boxes' digits and JSON punctuation tokenize
    densely (characters / 3 undercounted a shapes data set by 30%).
    """

    def chars(s: Sample) -> int:
        return len(s.prompt) + len(s.answer) + len(s.system or "")

    longest = sorted(train, key=chars, reverse=True)[:candidates]
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.model.path, local_files_only=True)
    except (OSError, ValueError):
        return chars(longest[0]) // 2 + 30
    texts = [f"{s.system or ''}\n{s.prompt}\n{s.answer}" for s in longest]
    return max(len(ids) for ids in tokenizer(texts)["input_ids"]) + 30
