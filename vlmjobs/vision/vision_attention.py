"""Qwen2.5-VL's vision attention in one SDPA call per block (the static engine's prefill).

Without flash-attn, transformers runs the vision tower's attention as one SDPA call per
segment of ``cu_seqlens``: per 112-px window in 28 of 32 blocks, ~70 windows per
1036x756 image. Padding the segments to the longest and masking the padding keys gives
the same math in one call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch.nn import functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision


@contextmanager
def batched_vision_attention(visual: Any) -> Iterator[None]:
    """Swap the vision tower's attention for ``segment_attention`` while prefilling.

    Without flash-attn, transformers runs one SDPA call per attention window: ~70 windows
    per 1036x756 image x 28 windowed blocks, i.e. ~2,000 tiny calls per image, which costs
    more than the whole language model's prefill."""
    blocks = [block.attn for block in visual.blocks]
    for attn in blocks:
        attn.forward = partial(segment_attention, attn)
    try:
        yield
    finally:
        for attn in blocks:
            del attn.forward  # the class's forward again


def segment_attention(
    attn: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    max_seqlen: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Qwen2.5-VL vision attention (same math as its forward) in ONE SDPA call: the segments
    of ``cu_seqlens`` (windows, or whole images) padded to the longest, padding keys masked.
    hidden_states: (N patches, hidden) in window order; returns the same shape."""
    n = hidden_states.shape[0]
    qkv = attn.qkv(hidden_states).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
    q, k = apply_rotary_pos_emb_vision(qkv[0], qkv[1], *position_embeddings)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    offsets = torch.arange(int(lengths.max()), device=hidden_states.device)
    valid = offsets[None] < lengths[:, None]  # (segments, longest)
    index = (cu_seqlens[:-1, None] + offsets).clamp(max=n - 1)

    def padded(x: torch.Tensor) -> torch.Tensor:  # (N, heads, d) -> (segments, heads, longest, d)
        return x[index].permute(0, 2, 1, 3)

    # No mask when all segments are equally long: SDPA can then pick its flash kernel.
    mask = None if bool(valid.all()) else valid[:, None, None, :]
    out = F.scaled_dot_product_attention(
        padded(q), padded(k), padded(qkv[2]), attn_mask=mask, scale=attn.scaling
    )
    return attn.proj(out.permute(0, 2, 1, 3)[valid].reshape(n, -1))
