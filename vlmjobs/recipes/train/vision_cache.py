"""The frozen vision tower's output, computed once per image and reused across epochs.

Without LoRA on the vision tower (``lora.vision: false``, the default) the tower is
frozen, has no dropout, and its output carries no gradient: the same pixels give the
same image embeddings every epoch. It was ~30% of a 3B train step (0.26 of 0.90 s at
micro-batch 8), so epochs after the first skip it.

Key: a hash of each image's pixel values and patch grid, i.e. of its content after the
processor's resize (so the pixel limits are in the key). Values: the merged embeddings
(tokens, hidden), kept in CPU RAM up to ``max_bytes`` (least recently used dropped), and
copied back to the GPU when used: 4 MB per 999-token image for the 3B.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

# Families whose tower returns only the merged embeddings (what the cache stores).
CACHEABLE = ("qwen2_vl", "qwen2_5_vl")


class VisionCache:
    """Wraps ``visual.forward``: cached images are not re-encoded; the rest go through the
    tower together, in one call, as before."""

    def __init__(self, visual: Any, max_bytes: int):
        self.visual, self.max_bytes = visual, max_bytes
        self.store: OrderedDict[str, Tensor] = OrderedDict()
        self.bytes = self.hits = self.misses = 0
        self.returns_tensor = False  # learnt from the tower's first call (always a miss)
        self._forward = visual.forward
        self._own_forward = "forward" in vars(visual)  # already wrapped by someone else
        visual.forward = self.forward

    def detach(self) -> None:
        """Give the tower its own forward back and drop what is stored."""
        if self._own_forward:
            self.visual.forward = self._forward
        else:
            del self.visual.forward  # back to the class's method
        self.store.clear()
        self.bytes = 0

    def forward(self, pixel_values: Tensor, grid_thw: Tensor, **kwargs: Any) -> Any:
        patches = grid_thw.prod(-1).tolist()
        pieces = torch.split(pixel_values, patches)
        keys = [image_key(p, g) for p, g in zip(pieces, grid_thw.tolist(), strict=True)]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        # Taken before storing the fresh ones, which may evict some of them.
        found = {
            i: self._get(k, pixel_values.device) for i, k in enumerate(keys) if i not in missing
        }
        if missing:
            out = self._forward(
                torch.cat([pieces[i] for i in missing]), grid_thw=grid_thw[missing], **kwargs
            )
            self.returns_tensor = torch.is_tensor(out)
            merged = out if self.returns_tensor else out.pooler_output
            tokens = [patches[i] // self.visual.spatial_merge_size**2 for i in missing]
            for i, emb in zip(missing, torch.split(merged, tokens), strict=True):
                found[i] = emb
                self._put(keys[i], emb)
            if len(missing) == len(keys):
                return out  # nothing cached: exactly the tower's own result
        merged = torch.cat([found[i] for i in range(len(keys))])
        if self.returns_tensor:
            return merged
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        # transformers >= 5.2x: an output object; callers read pooler_output (merged tokens)
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=merged)

    def _get(self, key: str, device: torch.device) -> Tensor:
        self.store.move_to_end(key)
        return self.store[key].to(device, non_blocking=True)

    def _put(self, key: str, emb: Tensor) -> None:
        size = emb.numel() * emb.element_size()
        if size > self.max_bytes:
            return
        self.store[key] = emb.detach().to("cpu", copy=True)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.store.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()


def image_key(pixels: Tensor, grid: list[int]) -> str:
    """Content hash of one image's pixel values (patches, channels) and its (t, h, w) grid."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(grid).encode())
    digest.update(pixels.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


def attach_vision_cache(model: Any, spec: Any) -> VisionCache | None:
    """A cache on the model's vision tower when it is valid (no vision LoRA, cache size > 0)."""
    from vlmjobs.recipes.train.model import causal_lm

    if spec.lora.vision or spec.vision_cache_gib <= 0:
        return None
    lm = causal_lm(model)
    if getattr(lm.config, "model_type", "") not in CACHEABLE:
        return None  # Qwen3-VL's tower also returns DeepStack features this cache does not keep
    visual = lm.model.visual
    if any(p.requires_grad for p in visual.parameters()):
        return None  # something trains the tower: its output changes every step
    return VisionCache(visual, int(spec.vision_cache_gib * 2**30))
