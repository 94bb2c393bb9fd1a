"""The train loss without full logits: the LM head and cross-entropy run on the answer
positions only, in chunks, computing the hidden-state gradient in the same pass, so the
(tokens x 151,936) logits exist one chunk at a time and are never kept for backward.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from vlmjobs.ranges import module_range, record_function
from vlmjobs.recipes.train.model import IGNORE, causal_lm


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
    with module_range(lm.model.visual, "vlmjobs.train.vision_tower"):
        hidden = lm.model(**inputs, use_cache=False, return_dict=True).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    rows = hidden[:, :-1][keep]  # (N, H): the positions that predict a label
    with record_function("vlmjobs.train.lm_head_loss"):
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
