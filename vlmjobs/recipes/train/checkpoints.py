"""Resumable training checkpoints: written atomically, found again after any crash, pruned.

A checkpoint is a directory ``checkpoints/step-00000120/`` holding

    adapter/             the PEFT adapter (``save_pretrained``), loadable on its own
    trainer_state.pt     optimizer, scheduler, RNG states (python, numpy, torch, cuda),
                         and the loop's position: step, epoch, micro-batch index, the
                         epoch's batch list (the data order), best metric, config hash;
                         tensors and plain values only, loaded with weights_only=True

It is written under a temporary name and renamed into place: a ``step-*`` directory
exists only once complete, so resume never reads half a checkpoint (a kill -9 mid-write
leaves a ``.tmp-*`` directory, removed on the next start).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from vlmjobs.errors import VlmjobsError

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
STATE_FILE = "trainer_state.pt"
# Fields that do not change what is computed: editing them must not block a resume.
NON_TRAINING_FIELDS = {"name", "priority", "queue", "max_attempts", "time_limit_s"}


@dataclass
class TrainState:
    """Where the loop is. ``order`` is this epoch's list of micro-batches (train-set indices)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # micro-batches of ``order`` already consumed
    order: list[list[int]] = field(default_factory=list)
    # Each micro-batch runs as this many forward passes (1 normally; doubles after an
    # out-of-memory step): same samples, same effective batch, less activation memory.
    splits: int = 1
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    last_metrics: dict[str, float] = field(default_factory=dict)
    config_hash: str = ""


def config_hash(spec_dump: dict[str, Any]) -> str:
    """A short hash of the training-relevant spec fields (a resume must train the same thing)."""
    relevant = {k: v for k, v in spec_dump.items() if k not in NON_TRAINING_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (what ``weights_only`` loading allows)."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of ints, None): plain values
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    """Flush files, then directories: a power cut must not leave a renamed but empty file."""
    for item in sorted(path.rglob("*")):
        if item.is_file():
            with open(item, "rb") as handle:
                os.fsync(handle.fileno())
    for directory in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        _fsync_dir(directory)


def save_checkpoint(
    root: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    publish: Callable[[Path, Path], object] = os.rename,
) -> Path:
    """Write ``root/step-<step>`` atomically and return it (one already there is kept).

    ``publish(tmp, final)`` does the rename; a job passes ``ctx.publish``, which renames
    only while its attempt still owns the job.
    """
    final = root / f"{PREFIX}{state.step:08d}"
    if final.exists():
        return final  # same step = same weights: e.g. a stop request right after a periodic save
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(str(tmp / "adapter"))
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "state": asdict(state),
        },
        tmp / STATE_FILE,
    )
    _fsync_tree(tmp)
    publish(tmp, final)  # atomic on one filesystem: the checkpoint appears complete or not at all
    _fsync_dir(root)  # the rename itself reaches the disk
    return final


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX) :])


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=step_of)


def remove_partial(root: Path) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of a writer that died mid-checkpoint; returns what went."""
    if not root.is_dir():
        return []
    partial = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX)]
    for path in partial:
        shutil.rmtree(path)
    return partial


def load_checkpoint(
    path: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    expected_hash: str,
) -> TrainState:
    """Restore adapter weights, optimizer, scheduler and RNG from ``path``; return the loop."""
    saved = _load_state(path / STATE_FILE)
    state = TrainState(**saved["state"])
    if state.config_hash != expected_hash:
        raise VlmjobsError(
            f"checkpoint {path} was written by a different training config "
            f"(hash {state.config_hash}, now {expected_hash}): submit a new job, "
            "or delete the job's checkpoints to start over"
        )
    weights = load_file(str(path / "adapter" / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(result.unexpected_keys)  # type: ignore[attr-defined]  # torch's namedtuple
    if unexpected:
        raise VlmjobsError(f"checkpoint {path} has unexpected adapter keys {unexpected[:3]}")
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    set_rng_state(saved["rng"])
    return state


def _load_state(file: Path) -> dict[str, Any]:
    """``trainer_state.pt`` with ``weights_only=True``: tensors and plain values only, so a
    file planted on the shared artifact mount cannot run code on the worker that resumes."""
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise VlmjobsError(
            f"checkpoint state {file} holds objects other than tensors and plain values "
            f"({str(e).splitlines()[0][:200]}); it was written by an older vlmjobs or by "
            "someone else, and is not loaded: delete that checkpoint directory to resume "
            "from an earlier one, or all of them to start over"
        ) from None
    if not isinstance(saved, dict):
        raise VlmjobsError(f"checkpoint state {file} is not a dict: delete that checkpoint")
    return saved


def prune(root: Path, keep_last: int, keep: set[Path]) -> list[Path]:
    """Delete all but the newest ``keep_last`` and those in ``keep``; returns the deleted."""
    checkpoints = list_checkpoints(root)
    doomed = [p for p in checkpoints[: max(0, len(checkpoints) - keep_last)] if p not in keep]
    for path in doomed:
        shutil.rmtree(path)
    return doomed
