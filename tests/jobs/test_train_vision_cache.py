"""The vision-tower cache: the same loss and LoRA gradients as without it, fewer tower calls."""

from __future__ import annotations

import pytest
import torch
from test_train_recipe import make_spec, tiny_dir, write_boxes_jsonl  # noqa: F401 (same folder)

from vlmjobs.recipes.train.data import collate_cpu, load_data
from vlmjobs.recipes.train.loss import compute_loss
from vlmjobs.recipes.train.model import causal_lm, prepare_model
from vlmjobs.recipes.train.vision_cache import attach_vision_cache
from vlmjobs.vision.model import load_model


def loss_and_grads(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """One step's loss and LoRA gradients; LoRA dropout's masks seeded alike every time."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss, n = compute_loss(model, batch)
    (loss * n).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_cached_tower_gives_the_same_loss_and_gradients(tiny_dir, tmp_path) -> None:  # noqa: F811
    torch.manual_seed(0)
    spec = make_spec(tiny_dir, write_boxes_jsonl(tmp_path / "data", 6))
    model, processor = load_model(spec.model, for_training=True)
    model = prepare_model(model, spec)
    model.train()
    samples = load_data(spec).train
    first, mixed = collate_cpu(processor, samples[:2]), collate_cpu(processor, samples[1:4])

    plain = [loss_and_grads(model, b) for b in (first, mixed, first)]
    visual = causal_lm(model).model.visual
    before = vars(visual).get("forward")
    cache = attach_vision_cache(model, spec)
    assert cache is not None
    cached = [loss_and_grads(model, b) for b in (first, mixed, first)]
    # first: 2 misses; mixed: sample 1 cached, 2 and 3 new; first again: all cached
    assert (cache.misses, cache.hits) == (4, 3)
    for (loss_a, grads_a), (loss_b, grads_b) in zip(plain, cached, strict=True):
        assert loss_a == loss_b
        assert grads_a.keys() == grads_b.keys() and grads_a
        assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    cache.detach()
    assert vars(visual).get("forward") is before  # the tower's own forward is back


@pytest.mark.parametrize(
    "change, attached",
    [
        ({}, True),  # case: frozen tower: cached
        ({"lora": {"vision": True}}, False),  # case: LoRA in the tower: its output changes
        ({"vision_cache_gib": 0}, False),  # case: turned off
    ],
)
def test_cache_only_where_valid(tiny_dir, tmp_path, change: dict, attached: bool) -> None:  # noqa: F811
    spec = make_spec(tiny_dir, write_boxes_jsonl(tmp_path / "data", 4), **change)
    model, _ = load_model(spec.model, for_training=True)
    assert (attach_vision_cache(prepare_model(model, spec), spec) is not None) is attached


def test_the_bound_evicts_the_least_recently_used(tiny_dir, tmp_path) -> None:  # noqa: F811
    spec = make_spec(tiny_dir, write_boxes_jsonl(tmp_path / "data", 16))
    model, processor = load_model(spec.model, for_training=True)
    model = prepare_model(model, spec)
    batches: dict[tuple, list] = {}  # three images of one size: equal cache entries
    for sample in load_data(spec).train:
        batch = collate_cpu(processor, [sample])
        batches.setdefault(tuple(batch["image_grid_thw"][0].tolist()), []).append(batch)
    a, b, c = next(group for group in batches.values() if len(group) >= 3)[:3]
    cache = attach_vision_cache(model, spec)
    assert cache is not None
    with torch.no_grad():
        compute_loss(model, a)
        cache.max_bytes = 2 * cache.bytes  # room for two
        compute_loss(model, b)
        compute_loss(model, a)  # a hit: a is now the most recently used
        compute_loss(model, c)  # evicts b
        assert len(cache.store) == 2 and cache.bytes <= cache.max_bytes
        hits = cache.hits
        compute_loss(model, a)
        compute_loss(model, b)
        assert cache.hits == hits + 1  # a was kept, b was not
