"""Checkpoints: complete or absent on disk, exact round trip, pruning, config guard (CPU)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmjobs.dev.build import make_model
from vlmjobs.errors import VlmjobsError
from vlmjobs.recipes.train import checkpoints as ckpt
from vlmjobs.recipes.train.model import prepare_model
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.model import load_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


def trainable(tiny_dir: Path, tmp_path: Path, seed: int = 0) -> tuple:
    """A LoRA-wrapped tiny model, its AdamW and a LambdaLR, as the recipe builds them."""
    data = tmp_path / "d.jsonl"
    data.write_text("")
    spec = TrainSpec.model_validate(
        {
            "model": {"path": str(tiny_dir), "quantization": "none", "dtype": "fp32"},
            "data": {"path": str(data)},
            "lora": {"dropout": 0.0},
        }
    )
    torch.manual_seed(seed)
    model, _ = load_model(spec.model, for_training=True)
    model = prepare_model(model, spec)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return model, optimizer, scheduler, params


def one_step(params: list[torch.Tensor], optimizer, scheduler) -> None:
    loss = sum((p.float() ** 2).sum() for p in params) + sum(p.sum() for p in params)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_round_trip_restores_weights_optimizer_scheduler_and_rng(tiny_dir, tmp_path) -> None:
    model, optimizer, scheduler, params = trainable(tiny_dir, tmp_path, seed=0)
    for _ in range(3):
        one_step(params, optimizer, scheduler)
    state = ckpt.TrainState(step=3, epoch=1, batch_in_epoch=2, order=[[2, 0], [1]], splits=2)
    state.config_hash = "abc"
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    path = ckpt.save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, state)
    after_save = (random.random(), np.random.rand(), torch.rand(1).item())
    one_step(params, optimizer, scheduler)  # where the uninterrupted run goes next
    expected = [p.detach().clone() for p in params]

    # A fresh process would start from other weights (seed 5) and other RNG states.
    model2, optimizer2, scheduler2, params2 = trainable(tiny_dir, tmp_path, seed=5)
    assert not all(torch.equal(a, b) for a, b in zip(expected, params2, strict=True))
    loaded = ckpt.load_checkpoint(path, model2, optimizer2, scheduler2, "abc")
    assert loaded == state
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == after_save
    assert scheduler2.last_epoch == 3
    one_step(params2, optimizer2, scheduler2)
    for a, b in zip(expected, params2, strict=True):
        assert torch.equal(a, b)  # bit-identical continuation: optimizer moments came back too


def test_only_complete_checkpoints_are_listed(tiny_dir, tmp_path) -> None:
    model, optimizer, scheduler, _ = trainable(tiny_dir, tmp_path)
    root = tmp_path / "ck"
    for step in (10, 2, 30):
        ckpt.save_checkpoint(root, model, optimizer, scheduler, ckpt.TrainState(step=step))
    # A writer killed mid-save leaves only a temp dir: never listed, removed on the next start.
    (root / ".tmp-step-00000040-123").mkdir()
    (root / ".tmp-step-00000040-123" / "trainer_state.pt").write_bytes(b"half")
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(root)] == [2, 10, 30]
    assert [p.name for p in ckpt.remove_partial(root)] == [".tmp-step-00000040-123"]
    assert sorted(p.name for p in root.iterdir()) == [
        "step-00000002",
        "step-00000010",
        "step-00000030",
    ]
    # Saving a step that exists keeps the first one (same step, same weights).
    again = ckpt.save_checkpoint(root, model, optimizer, scheduler, ckpt.TrainState(step=10))
    assert again == root / "step-00000010" and ckpt.list_checkpoints(tmp_path / "none") == []


@pytest.mark.parametrize(
    "steps, keep_last, keep, left",
    [
        ([1, 2, 3, 4], 2, set(), [3, 4]),  # case: keep-last-k
        ([1, 2, 3, 4], 2, {1}, [1, 3, 4]),  # case: the best survives its age
        ([1, 2, 3, 4], 2, {4}, [3, 4]),  # case: best among the last: nothing extra
        ([1], 3, set(), [1]),  # case: fewer than k
    ],
)
def test_prune(tmp_path, steps: list[int], keep_last: int, keep: set[int], left: list[int]) -> None:
    for step in steps:
        (tmp_path / f"step-{step:08d}").mkdir()
    kept = {tmp_path / f"step-{s:08d}" for s in keep}
    removed = ckpt.prune(tmp_path, keep_last, kept)
    assert [ckpt.step_of(p) for p in ckpt.list_checkpoints(tmp_path)] == left
    assert sorted(ckpt.step_of(p) for p in removed) == sorted(set(steps) - set(left))


def test_resume_refuses_another_config(tiny_dir, tmp_path) -> None:
    model, optimizer, scheduler, _ = trainable(tiny_dir, tmp_path)
    state = ckpt.TrainState(step=1, config_hash="aaaa")
    path = ckpt.save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, state)
    with pytest.raises(VlmjobsError, match="different training config .*aaaa.*bbbb"):
        ckpt.load_checkpoint(path, model, optimizer, scheduler, "bbbb")


@pytest.mark.parametrize(
    "change, same",
    [
        ({"name": "other", "priority": 9, "max_attempts": 7}, True),  # case: bookkeeping only
        ({"lora": {"r": 8}}, False),  # case: what is trained
        ({"seed": 1}, False),  # case: data order and init
    ],
)
def test_config_hash(change: dict, same: bool) -> None:
    base = {"name": "a", "priority": 5, "max_attempts": 3, "lora": {"r": 4}, "seed": 0}
    assert (ckpt.config_hash(base) == ckpt.config_hash({**base, **change})) is same


class _Planted:
    """What an attacker with write access to the artifact mount would pickle."""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(_Planted.marker),))

    marker = ""


@pytest.mark.parametrize(
    "payload, needle",
    [
        ("planted", "not loaded"),  # case: a pickle that runs code on load
        ("old-numpy", "older vlmjobs"),  # case: the former format (a numpy array inside)
    ],
)
def test_resume_loads_tensors_only(tiny_dir, tmp_path, payload: str, needle: str) -> None:
    model, optimizer, scheduler, _ = trainable(tiny_dir, tmp_path)
    path = ckpt.save_checkpoint(tmp_path / "ck", model, optimizer, scheduler, ckpt.TrainState())
    saved = torch.load(path / ckpt.STATE_FILE, weights_only=True)
    _Planted.marker = str(tmp_path / "pwned")
    saved["rng"]["numpy"] = _Planted() if payload == "planted" else np.random.get_state()
    torch.save(saved, path / ckpt.STATE_FILE)
    with pytest.raises(VlmjobsError, match=needle):
        ckpt.load_checkpoint(path, model, optimizer, scheduler, "")
    assert not (tmp_path / "pwned").exists()  # the planted code never ran
