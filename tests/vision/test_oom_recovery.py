"""Out-of-memory recovery of the generation engine, on CPU.

A forward pre-hook on the language model's token embedding raises the same error CUDA
raises (``torch.OutOfMemoryError``) whenever more than ``limit`` rows go through it at
once: prefill chunks (up to 4 rows) and every decode step pass there, so a batch above
the limit fails like one that does not fit the card.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from PIL import Image

from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.generate import Generator
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint) -> tuple[Any, Any, Any]:
    """(model, processor, a left-padded batch of 8 images of different sizes)."""
    model, processor = load_model(ModelSpec(path=str(tiny_checkpoint), dtype="fp32"))
    sizes = [(200, 150), (90, 300), (400, 120), (150, 150), (300, 90), (120, 240), (64, 64)]
    sizes.append((99, 77))
    images = [Image.new("RGB", s, (30 * i, 120, 200 - 20 * i)) for i, s in enumerate(sizes)]
    return model, processor, build_inputs(processor, images, ["Describe the image."] * len(images))


@pytest.fixture
def oom_above(loaded) -> Iterator[dict[str, int]]:
    """Set ``limit["rows"]``: more rows than that at once raise out-of-memory."""
    limit = {"rows": 10**9}
    embed = loaded[0].model.language_model.embed_tokens

    def hook(module: Any, args: tuple) -> None:
        if args[0].shape[0] > limit["rows"]:
            raise torch.OutOfMemoryError(f"simulated: {args[0].shape[0]} rows > {limit['rows']}")

    handle = embed.register_forward_pre_hook(hook)
    yield limit
    handle.remove()


def test_static_engine_frees_the_cache_and_recovers_down_to_the_limit(loaded, oom_above) -> None:
    model, processor, batch = loaded
    expected = Generator(model, processor, engine="static", max_batch=8).generate(
        batch, max_new_tokens=NEW_TOKENS
    )
    generator = Generator(model, processor, engine="static", max_batch=8)
    generator.generate(batch, max_new_tokens=NEW_TOKENS)  # the cache now holds 8 rows
    decoder = generator._static
    assert decoder.cache_shape[0] == 8
    old_keys = weakref.ref(decoder.keys[0])

    oom_above["rows"] = 2
    heard: list[str] = []
    out = generator.generate(batch, max_new_tokens=NEW_TOKENS, on_oom=heard.append)

    assert [g.token_ids for g in out] == [g.token_ids for g in expected]  # all 8, same answers
    assert len(heard) == 2 and "batch 8" in heard[0] and "continuing at batch 2" in heard[1]
    assert generator.max_batch == decoder.max_batch == 2
    assert decoder.cache_shape[0] == 2  # re-sized for the batch that fits ...
    gc.collect()
    assert old_keys() is None  # ... and the 8-row cache is gone, not just shadowed
    heard.clear()
    generator.generate(batch, max_new_tokens=NEW_TOKENS, on_oom=heard.append)
    assert heard == []  # the lower batch stays: no second round of failures


@pytest.mark.parametrize("engine", ["static", "hf"])
def test_recovers_down_to_batch_1(loaded, oom_above, engine: str) -> None:
    model, processor, batch = loaded
    oom_above["rows"] = 1
    heard: list[str] = []
    generator = Generator(model, processor, engine=engine, max_batch=8)
    out = generator.generate(batch, max_new_tokens=NEW_TOKENS, on_oom=heard.append)
    assert len(out) == 8 and all(g.token_ids for g in out)
    assert [m.split(":")[0] for m in heard] == [
        "GPU out of memory at batch 8",
        "GPU out of memory at batch 4",
        "GPU out of memory at batch 2",
    ]
    assert generator.max_batch == 1


def test_a_model_that_never_fits_raises_at_batch_1(loaded, oom_above) -> None:
    model, processor, batch = loaded
    oom_above["rows"] = 0
    generator = Generator(model, processor, engine="static", max_batch=4)
    heard: list[str] = []
    with pytest.raises(torch.OutOfMemoryError, match="1 rows > 0"):
        generator.generate(batch, max_new_tokens=NEW_TOKENS, on_oom=heard.append)
    assert len(heard) == 2  # 4 -> 2 -> 1, then the error
    assert generator._static.cache_shape == (0, 0)  # nothing left held
