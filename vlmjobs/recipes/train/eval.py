"""Evaluation during training: answer-token scores, and task metrics from generated answers.

Teacher-forced on the answer tokens: the token-weighted CE of training (no dropout) and
token accuracy. Task metrics generate greedily from the prompt alone, parse the answer
with the task's parser and score it against the target parsed the same way
(``vlmjobs.eval``, the code the eval kind scores with): regions P/R/F1 at IoU 0.5 with phrase
match, JSON edit distance and field accuracy, free text's edit distance and exact match,
and for every task the parse rate (answers read as ok or repaired).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlmjobs.eval.answers import json_edit_distance, json_field_accuracy, parse_json
from vlmjobs.eval.tasks import region_f1_metrics, text_metrics
from vlmjobs.recipes.train.data import Sample, collate
from vlmjobs.recipes.train.model import IGNORE, causal_lm
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.generate import Generator
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.manifest import Manifest
from vlmjobs.vision.parse import parse_json as json_status
from vlmjobs.vision.parse import parse_regions
from vlmjobs.vision.tasks import parser_for

PARSED = ("ok", "repaired")


def evaluate(
    model: Any, processor: Any, val: list[Sample], manifest: Manifest, spec: TrainSpec, device: str
) -> dict[str, float]:
    """Metrics on ``val`` (already cut to eval.max_samples). Leaves the model in eval mode."""
    model.eval()
    metrics = answer_scores(model, processor, val, spec, device)
    if spec.eval.generate:
        answers = generate_answers(model, processor, val, spec, device)
        metrics.update(task_metrics(val, answers, manifest))
    return metrics


@torch.no_grad()
def answer_scores(
    model: Any, processor: Any, val: list[Sample], spec: TrainSpec, device: str
) -> dict[str, float]:
    """Teacher-forced scores on the answer tokens of ``val``: mean CE (token-weighted, as
    in training) and token accuracy (the argmax is the target token).

    Accuracy shows learning even where the loss cannot fall far: a model whose frozen
    LM head cannot make its outputs confident still moves the argmax onto the target.
    """
    lm = causal_lm(model)
    loss_sum, correct, tokens = 0.0, 0, 0
    for start in range(0, len(val), spec.micro_batch_size):
        batch = collate(processor, val[start : start + spec.micro_batch_size], device)
        labels = batch.pop("labels")
        hidden = lm.model(**batch, use_cache=False, return_dict=True).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        rows, wanted = hidden[:, :-1][keep], targets[keep]
        for first in range(0, len(wanted), spec.loss_chunk_size):
            part = slice(first, first + spec.loss_chunk_size)
            logits = lm.lm_head(rows[part]).float()
            loss_sum += float(F.cross_entropy(logits, wanted[part], reduction="sum"))
            correct += int((logits.argmax(dim=-1) == wanted[part]).sum())
        tokens += len(wanted)
    return {"loss": loss_sum / max(tokens, 1), "token_accuracy": correct / max(tokens, 1)}


def generate_answers(
    model: Any, processor: Any, val: list[Sample], spec: TrainSpec, device: str
) -> list[str]:
    """Greedy answers to each sample's prompt (the answer itself is not shown)."""
    # The LoRA layers live inside the base model; the Generator hooks the model it is given,
    # and PeftModel.generate would bypass a hook on the wrapper.
    generator = Generator(causal_lm(model), processor, max_batch=spec.micro_batch_size, engine="hf")
    texts: list[str] = []
    for start in range(0, len(val), spec.micro_batch_size):
        chunk = val[start : start + spec.micro_batch_size]
        images = []
        for sample in chunk:
            with Image.open(sample.image) as image:
                images.append(image.convert("RGB"))
        batch = build_inputs(processor, images, [s.prompt for s in chunk], system=chunk[0].system)
        batch = batch.to(device)
        done = generator.generate(batch, max_new_tokens=spec.eval.max_new_tokens)
        texts += [g.text for g in done]
    return texts


def task_metrics(val: list[Sample], answers: list[str], manifest: Manifest) -> dict[str, float]:
    parser = parser_for(manifest.task)
    if parser == "regions":
        return region_metrics(val, answers, manifest)
    if parser == "json":
        return json_metrics(val, answers)
    # Free text: the eval kind's text metric (edit distance, exact match) on the same pairs.
    texts = text_metrics(zip(answers, [s.answer for s in val], strict=True))
    return {**texts, "parse_rate": float(np.mean([bool(a.strip()) for a in answers]))}


def region_metrics(val: list[Sample], answers: list[str], manifest: Manifest) -> dict[str, float]:
    """Micro-averaged P/R/F1 over the samples, boxes compared in original pixels, by
    ``vlmjobs.eval.tasks.region_f1_metrics``: the eval kind's computation."""
    pairs, parsed = [], 0
    convention = manifest.frame_convention
    for sample, answer in zip(val, answers, strict=True):
        size = sample.image_size
        if size is None:
            with Image.open(sample.image) as image:
                size = image.size
        frame = manifest.input_size(size)
        pred = parse_regions(answer, input_size=frame, image_size=size, convention=convention)
        gold = parse_regions(
            sample.answer, input_size=frame, image_size=size, convention=convention
        )
        parsed += pred.status in PARSED
        pairs.append((pred.regions, gold.regions))
    return {**region_f1_metrics(pairs), "parse_rate": parsed / len(val)}


def json_metrics(val: list[Sample], answers: list[str]) -> dict[str, float]:
    distances, accuracies, parsed = [], [], 0
    for sample, answer in zip(val, answers, strict=True):
        ok, gold = parse_json(sample.answer)
        if not ok:
            gold = sample.answer  # a target that is not JSON is compared as a string
        distances.append(json_edit_distance(answer, gold))
        accuracies.append(json_field_accuracy(answer, gold))
        parsed += json_status(answer)[1] in PARSED
    return {
        "json_edit_distance": float(np.mean(distances)),
        "json_field_accuracy": float(np.mean(accuracies)),
        "parse_rate": parsed / len(val),
    }
