"""Model inputs for one video clip, the way each family's video processor builds them.

    batch = build_video_inputs(processor, family, clip_frames, frame_times, prompt,
                               sampled_fps=2.0, system=None)

transformers' Qwen2-VL / Qwen2.5-VL / Qwen3-VL video processors need torchvision, which
does not import beside a CPU torch build; this module is their PIL/numpy equivalent:

- frames (already resized to the clip's frame, ``frame_size``) are rescaled by 1/255 and
  normalised with the image processor's mean/std, the last frame repeated up to a
  multiple of ``temporal_patch_size`` (2), then cut into patches exactly like
  ``Qwen2VLVideoProcessor.patchify``: ``pixel_values_videos`` (T/2 x H/14 x W/14 rows of
  3 x 2 x 14 x 14 for a 14-pixel patch) and ``video_grid_thw`` [[T/2, H/14, W/14]];
- Qwen2-VL / Qwen2.5-VL: one ``<|video_pad|>`` per merged patch; Qwen2.5-VL also gets
  ``second_per_grid_ts`` = temporal_patch_size / sampled fps, the seconds one temporal
  patch spans (its MRoPE places frames by absolute time);
- Qwen3-VL: each temporal patch is written ``<t seconds><|vision_start|>`` + its tokens +
  ``<|vision_end|>``, t the mean time of the patch's two frames to one decimal, replacing
  the template's ``<|vision_start|><|video_pad|><|vision_end|>`` (the released processor's
  and qwen-vl-utils' layout).

Frame sizes follow qwen-vl-utils: each frame within [min_pixels, max_pixels] and all
frames together within ``total_pixels`` (max per frame = max(min(max_pixels,
total_pixels / frames x 2), 1.05 x min_pixels)).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from vlmjobs.vision.family import Family

TEMPORAL_PATCH = 2  # frames per temporal patch in every Qwen-VL vision tower


def frame_size(
    size: tuple[int, int],
    frames: int,
    family: Family,
    *,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int,
) -> tuple[int, int]:
    """(w, h) every frame of a clip of ``frames`` frames is resized to (qwen-vl-utils' rule)."""
    per_frame = max(
        min(max_pixels, total_pixels * TEMPORAL_PATCH // max(frames, 1)), int(min_pixels * 1.05)
    )
    return family.input_size(size, min_pixels, per_frame)


def patchify(video: np.ndarray, patch: int, merge: int) -> tuple[np.ndarray, list[int]]:
    """(T, C, H, W) float frames -> (grid_t * grid_h * grid_w, C * 2 * patch * patch) rows
    in the vision tower's order, and [grid_t, grid_h, grid_w]; T padded with the last frame."""
    if pad := -video.shape[0] % TEMPORAL_PATCH:
        video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)])
    t, c, h, w = video.shape
    gt, gh, gw = t // TEMPORAL_PATCH, h // patch, w // patch
    x = video.reshape(gt, TEMPORAL_PATCH, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * TEMPORAL_PATCH * patch * patch), [gt, gh, gw]


def video_pixels(frames: list[Image.Image], mean: Any, std: Any, family: Family) -> Any:
    """``pixel_values_videos`` (float32 tensor) and ``video_grid_thw`` (1, 3) for RGB frames
    of one size (a multiple of the family's factor)."""
    array = np.stack([np.asarray(f.convert("RGB"), dtype=np.float32) for f in frames]) / 255.0
    array = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    rows, grid = patchify(array.transpose(0, 3, 1, 2), family.patch_size, family.merge_size)
    return torch.from_numpy(np.ascontiguousarray(rows)), torch.tensor([grid])


def patch_times(times: list[float]) -> list[float]:
    """Seconds of each temporal patch: the mean of its first and last frame (last repeated)."""
    padded = list(times) + [times[-1]] * (-len(times) % TEMPORAL_PATCH)
    return [
        (padded[i] + padded[i + TEMPORAL_PATCH - 1]) / 2
        for i in range(0, len(padded), TEMPORAL_PATCH)
    ]


def video_placeholder(grid: list[int], family: Family, times: list[float]) -> tuple[str, str]:
    """(what the template wrote, what replaces it) for one video of ``grid`` [t, h, w]."""
    per_patch = grid[1] * grid[2] // family.merge_size**2
    if family.name.startswith("qwen3"):
        parts = [
            f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * per_patch + "<|vision_end|>"
            for t in patch_times(times)
        ]
        return "<|vision_start|><|video_pad|><|vision_end|>", "".join(parts)
    return "<|video_pad|>", "<|video_pad|>" * (per_patch * grid[0])


def video_messages(prompt: str, system: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "video"}, {"type": "text", "text": prompt}]
    messages.append({"role": "user", "content": content})
    return messages


def build_video_inputs(
    processor: Any,
    family: Family,
    frames: list[Image.Image],
    times: list[float],
    prompt: str,
    *,
    sampled_fps: float,
    system: str | None = None,
) -> BatchFeature:
    """One row: ``input_ids`` / ``attention_mask`` (1, T), ``mm_token_type_ids`` (1, T),
    ``pixel_values_videos``, ``video_grid_thw`` (1, 3) and, for Qwen2.5-VL,
    ``second_per_grid_ts`` (1,). ``times``: each frame's seconds; ``sampled_fps``: frames
    per second of video the clip was sampled at."""
    if not frames or len(frames) != len(times):
        raise ValueError(f"got {len(frames)} frames and {len(times)} times: need one time a frame")
    if len({f.size for f in frames}) != 1:
        raise ValueError("a clip's frames must share one size: resize them with frame_size")
    images = processor.image_processor
    pixels, grid = video_pixels(frames, images.image_mean, images.image_std, family)
    text = processor.apply_chat_template(
        video_messages(prompt, system), tokenize=False, add_generation_prompt=True
    )
    marker, replacement = video_placeholder(grid[0].tolist(), family, times)
    if marker not in text:
        raise ValueError(f"the chat template wrote no {marker!r} for a video: use the model's own")
    text = text.replace(marker, replacement, 1)
    tokenizer = processor.tokenizer
    encoded = tokenizer([text], return_tensors="pt", padding=True, padding_side="left")
    video_id = tokenizer.convert_tokens_to_ids("<|video_pad|>")
    batch: dict[str, Any] = {
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "mm_token_type_ids": 2 * (encoded["input_ids"] == video_id).int(),
        "pixel_values_videos": pixels,
        "video_grid_thw": grid,
    }
    if family.name == "qwen2_5_vl":
        batch["second_per_grid_ts"] = torch.tensor([TEMPORAL_PATCH / sampled_fps])
    return BatchFeature(batch)
