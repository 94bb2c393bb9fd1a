"""The demo model: a small Qwen3-VL, built offline and pre-trained on shapes in minutes.

``make_demo_model(out)`` writes a ``qwen3_vl`` checkpoint (~2 M parameters: 4 text
layers of width 128, a 2-block vision tower of width 128) that the normal loader,
clean, train and infer read like a real Qwen3-VL, then trains every weight on demo
shapes (dev/pretrain.py) so that the demo's LoRA fine-tune starts from a model
that already writes boxes.

Why Qwen3-VL: its vision tower adds a learned ABSOLUTE position embedding
(``pos_embed``, a square grid resampled to each image's patch grid) to the patch
features, so every image token says where it is. Qwen2.5-VL has only relative
positions (2-D RoPE in the vision tower, MRoPE in the language model), and a model
this small did not learn to read absolute places from them in a CPU budget. The
grid starts as a 2-D sine/cosine code (as MAE and ViT-style models initialise it)
rather than noise, which it then keeps learning. Its boxes are 0-1000 of the image,
independent of the resize.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from vlmjobs.dev.build import BPE_VOCAB, SPECIALS, generation_config, make_tokenizer
from vlmjobs.dev.build_family import (
    QWEN3_VL_CHAT_TEMPLATE,
    _save_preprocessor,
    _text_common,
    _token_ids,
)
from vlmjobs.vision.family import FAMILIES

FAMILY = FAMILIES["qwen3_vl"]
# The position grid: 8 x 8 entries, one per 16 px patch of a 128 px image (resampled
# for other sizes).
GRID = 8


def demo_config() -> Qwen3VLConfig:
    """The demo's Qwen3-VL config, token ids of the local tokenizer."""
    return Qwen3VLConfig(
        text_config=dict(
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=8192,
            **_text_common(BPE_VOCAB + len(SPECIALS), True),
            # Interleaved MRoPE, sections in the real 24:20:20 ratio, summing to head_dim / 2.
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            depth=2,
            hidden_size=128,
            intermediate_size=256,
            num_heads=4,
            deepstack_visual_indexes=[0, 1],
            out_hidden_size=128,
            patch_size=FAMILY.patch_size,
            spatial_merge_size=FAMILY.merge_size,
            temporal_patch_size=2,
            num_position_embeddings=GRID * GRID,
            hidden_act="gelu_pytorch_tanh",
        ),
        tie_word_embeddings=True,
        **_token_ids(),
    )


def sincos_grid(side: int, dim: int) -> torch.Tensor:
    """(side * side, dim) 2-D sine/cosine position code, row-major like ``pos_embed``:
    the first half of the channels encodes the column, the second half the row, each
    with ``dim // 4`` frequencies from half a cycle per grid (so no two cells alias) to
    one cycle per four cells."""
    quarter = dim // 4
    freqs = torch.logspace(0, math.log10(side / 2), quarter) * math.pi / side
    cells = torch.arange(side, dtype=torch.float64) + 0.5
    angle = cells[:, None] * freqs[None, :]  # (side, quarter)
    code = torch.cat([angle.sin(), angle.cos()], dim=1)  # (side, dim / 2)
    rows = code[:, None, :].expand(side, side, dim // 2)
    cols = code[None, :, :].expand(side, side, dim // 2)
    return torch.cat([cols, rows], dim=2).reshape(side * side, dim).float()


def random_demo_model(seed: int = 0) -> Qwen3VLForConditionalGeneration:
    """Random fp32 weights, the position grid set to :func:`sincos_grid`; same seed, same
    weights."""
    config = demo_config()
    config.dtype = torch.float32
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    pos = model.model.visual.pos_embed
    with torch.no_grad():
        pos.weight.copy_(sincos_grid(GRID, pos.weight.shape[1]))
    return model


def make_demo_model(
    out: Path, seed: int = 0, *, plan: Any = None, log: Callable[[str], None] = print
) -> Path:
    """Build the demo model, pre-train it on demo shapes (``plan``: a
    :class:`~vlmjobs.dev.pretrain.PretrainPlan`, the default one unless given) and
    write the checkpoint to ``out``, with its loss curve (``pretrain_metrics.csv`` and
    ``pretrain-curves.png``, as ``vlmjobs metrics`` writes a job's); returns ``out``."""
    from vlmjobs.dev.pretrain import PretrainPlan, pretrain_on_shapes
    from vlmjobs.vision.model import load_processor

    plan = plan or PretrainPlan(seed=seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer()
    tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    tok.save_pretrained(out)
    _save_preprocessor(out, FAMILY, tok.chat_template)
    _pin_pixels(out, plan.min_pixels, plan.max_pixels)
    model = random_demo_model(seed)
    model.generation_config = generation_config()
    model.config.save_pretrained(out)  # the processor's loader reads the family from it
    processor = load_processor(out, min_pixels=plan.min_pixels, max_pixels=plan.max_pixels)
    curve: list[tuple[int, str, float]] = []
    pretrain_on_shapes(model, processor, plan, log, curve)
    model.save_pretrained(out)
    _write_curve(out, curve)
    return out


def _write_curve(out: Path, curve: list[tuple[int, str, float]]) -> None:
    """The pre-training's loss and lr per step, as a CSV and a PNG (the demo shows the PNG:
    its LoRA job starts from this model, so that job's own curve is nearly flat)."""
    from vlmjobs.cli.metrics import pivot, plot, write_csv

    table = pivot([(step, name, value) for step, name, value in curve])
    with (out / "pretrain_metrics.csv").open("w") as stream:
        write_csv(table, stream)
    plot(table, out / "pretrain-curves.png", "demo model: pre-training on shapes")


def _pin_pixels(out: Path, min_pixels: int, max_pixels: int) -> None:
    """Write the demo's pixel budget into preprocessor_config.json (what it was trained at)."""
    path = out / "preprocessor_config.json"
    cfg = json.loads(path.read_text())
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    cfg.update(min_pixels=min_pixels, max_pixels=max_pixels, size=size)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
