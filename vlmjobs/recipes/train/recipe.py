"""The train recipe: QLoRA fine-tuning of any family, resumable after any crash.

    setup    read the data, preflight the memory, load + prepare the model, build the
             optimizer and schedule, resume from the newest complete checkpoint
    train    flat loop: one optimizer step = grad_accum micro-batches, token-weighted
    eval     validation loss (+ generated task metrics), best metric, early stopping
    save     checkpoints (atomic, keep-last-k + best), then the adapter that infer loads
    cleanup  free the model; the result names the adapter

The fail-fast checks are ``preflight.py``; the model side ``model.py`` (LoRA attachment),
``loss.py`` and ``memory.py``; data and batch order ``data.py``; checkpoints
``checkpoints.py``; the evaluation loop ``eval.py`` (metrics: ``vlmjobs.eval``).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmjobs import settings
from vlmjobs.ranges import record_function
from vlmjobs.recipes.context import JobContext
from vlmjobs.recipes.profile import StepProfiler
from vlmjobs.recipes.train import checkpoints as ckpt
from vlmjobs.recipes.train.data import (
    Prefetcher,
    epoch_batches,
    sample_lengths,
)
from vlmjobs.recipes.train.eval import evaluate
from vlmjobs.recipes.train.loss import compute_loss
from vlmjobs.recipes.train.model import prepare_model
from vlmjobs.recipes.train.preflight import preflight
from vlmjobs.recipes.train.report import Trackers, eval_line, step_line
from vlmjobs.recipes.train.vision_cache import attach_vision_cache
from vlmjobs.specs.train import TrainSpec
from vlmjobs.vision.manifest import Manifest
from vlmjobs.vision.model import load_model


def run(spec: TrainSpec, ctx: JobContext) -> dict[str, Any]:
    # ---- setup: data and preflight before anything touches the GPU
    plan = preflight(spec)
    data, splits = plan.data, plan.splits
    if plan.estimate is not None:
        mbs, gib = math.ceil(spec.micro_batch_size / splits), plan.estimate.total_gib
        arithmetic = "\n".join(plan.estimate.lines)
        ctx.event(f"preflight: micro-batch {mbs} -> {gib:.1f} GiB\n{arithmetic}")
    # The worker keeps one resident base model; a differently keyed entry evicts it, so
    # an idle inference model does not sit beside the training one on a 12 GB card.
    ctx.resident("train:no-resident-model", lambda: None)
    seed_everything(spec.seed)
    model, processor = load_model(spec.model, device=ctx.device, for_training=True)
    model = prepare_model(model, spec)
    attach_vision_cache(model, spec)  # epochs after the first skip the frozen tower
    lengths = sample_lengths(data.train, processor, spec)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.optim.lr, weight_decay=spec.optim.weight_decay)
    total = total_steps(spec, len(data.train))
    warmup = spec.optim.warmup_steps
    if warmup is None:
        warmup = round(spec.optim.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, spec.optim.schedule)
    )
    root = ctx.workdir / "checkpoints"
    state = resume_or_start(spec, ctx, root, model, optimizer, scheduler, lengths, splits)
    trackers = Trackers(
        spec.report_to, ctx.workdir, f"job-{ctx.job_id}", spec.model_dump(mode="json")
    )
    # ETA from this attempt's own pace (a resumed job's earlier steps ran elsewhere).
    clock = (time.monotonic(), state.step)

    # ---- train: one iteration = one optimizer step over grad_accum micro-batches
    model.train()
    # The next step's micro-batches are collated on a CPU thread during this one.
    prefetch = Prefetcher(processor, data.train)
    profiler = StepProfiler(spec.profile, ctx)
    try:
        while state.step < total:
            profiler.step(state.step + 1)
            if ctx.should_stop():
                path = save(spec, ctx, root, model, optimizer, scheduler, state, {}, False)
                ctx.event(f"stop requested: checkpointed step {state.step} at {path.name}")
                return {"stopped": True, "steps": state.step, "total_steps": total}
            at = state.batch_in_epoch
            step_batches = state.order[at : at + spec.grad_accum]
            following = state.order[at + spec.grad_accum : at + 2 * spec.grad_accum]
            prefetch.ahead([part for b in following for part in pieces(b, state.splits)])
            started = time.perf_counter()
            loss, n_samples = train_step(model, prefetch, step_batches, spec, ctx, state)
            with record_function("vlmjobs.train.optimizer"):
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    trainable, spec.optim.max_grad_norm or math.inf
                )
                lr = float(scheduler.get_last_lr()[0])  # the rate this step uses
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += len(step_batches)
            state.samples_seen += n_samples
            speed = n_samples / (time.perf_counter() - started)
            step_values = {
                "loss": loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "samples_per_s": speed,
                "samples": n_samples,  # a short last micro-batch makes this vary
            }
            with record_function("vlmjobs.train.record"):
                record_step(ctx, state, step_values, total, trackers)
            if state.step % spec.log_every_steps == 0 or state.step == total:
                ctx.log.info(step_line(state.step, total, step_values, eta(clock, state, total)))

            # ---- epoch end: the next epoch's order goes into the checkpoint written below
            epoch_end = state.batch_in_epoch >= len(state.order)
            if epoch_end:
                state.epoch += 1
                state.batch_in_epoch = 0
                state.order = epoch_batches(
                    lengths,
                    spec.micro_batch_size,
                    spec.seed,
                    state.epoch,
                    spec.data.group_by_length,
                )
            # ---- eval: validation loss and task metrics; the best metric picks a checkpoint
            every = spec.eval.every_steps
            metrics: dict[str, float] = {}
            is_best = False
            if data.val and (
                epoch_end or state.step == total or (every and state.step % every == 0)
            ):
                with record_function("vlmjobs.train.eval"):
                    metrics = evaluate(model, processor, data.val, data.manifest, spec, ctx.device)
                ctx.metrics({f"val_{k}": v for k, v in metrics.items()}, step=state.step)
                trackers.log({f"val/{k}": v for k, v in metrics.items()}, state.step)
                ctx.log.info(eval_line(state.step, metrics))
                model.train()
                is_best = track_best(spec, state, metrics)
            # ---- save: periodic, at each epoch end, at the last step, and at a new best
            if (
                epoch_end
                or state.step == total
                or state.step % spec.checkpoint.every_steps == 0
                or (is_best and spec.checkpoint.keep_best)
            ):
                with record_function("vlmjobs.train.save"):
                    save(spec, ctx, root, model, optimizer, scheduler, state, metrics, is_best)
            patience = spec.eval.early_stopping_patience
            if metrics and patience and state.evals_since_best >= patience:
                ctx.event(
                    f"early stop at step {state.step}: no better {spec.eval.metric} in {patience}"
                )
                break
        profiler.close()  # a window reaching past the last step ends here
    finally:
        profiler.abandon()
        prefetch.close()
        trackers.close()

    # ---- final adapter + cleanup
    adapter = write_adapter(ctx, model, processor, data.manifest, spec)
    merged = merge_export(spec, adapter, ctx) if spec.merge_export else None
    del model, optimizer
    free_memory()
    return result_of(state, total, adapter, merged, root)


# ---------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def total_steps(spec: TrainSpec, n_train: int) -> int:
    if spec.max_steps:
        return spec.max_steps
    micro_batches = math.ceil(n_train / spec.micro_batch_size)
    return spec.epochs * math.ceil(micro_batches / spec.grad_accum)


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the peak lr after ``step`` optimizer steps: linear warm-up, then decay."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def resume_or_start(
    spec: TrainSpec,
    ctx: JobContext,
    root: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    lengths: list[int],
    splits: int,
) -> ckpt.TrainState:
    """The newest complete checkpoint's state (weights, optimizer, RNG restored), or step 0."""
    digest = ckpt.config_hash(spec.model_dump(mode="json"))
    for partial in ckpt.remove_partial(root):
        ctx.event(f"removed a checkpoint left half-written: {partial.name}", "warning")
    found = ckpt.list_checkpoints(root)
    if found:
        state = ckpt.load_checkpoint(found[-1], model, optimizer, scheduler, digest)
        ctx.event(f"resumed from {found[-1].name}: step {state.step}, epoch {state.epoch}")
        return state
    order = epoch_batches(lengths, spec.micro_batch_size, spec.seed, 0, spec.data.group_by_length)
    return ckpt.TrainState(order=order, splits=splits, config_hash=digest)


# ---------------------------------------------------------------- train


def pieces(batch: list[int], splits: int) -> list[list[int]]:
    """``batch`` cut into ``splits`` nearly equal consecutive parts (empty ones dropped)."""
    size = math.ceil(len(batch) / splits)
    return [batch[i : i + size] for i in range(0, len(batch), size)]


def train_step(
    model: Any,
    prefetch: Prefetcher,
    batches: list[list[int]],
    spec: TrainSpec,
    ctx: JobContext,
    state: ckpt.TrainState,
) -> tuple[float, int]:
    """Forward + backward over the step's micro-batches; grads hold the token-weighted mean.

    Each micro-batch adds sum-of-token-losses gradients; dividing by the step's token
    count at the end weighs every answer token equally, whatever the batch it fell in.
    On GPU out-of-memory the step restarts with micro-batches split in two, down to
    oom.min_micro_batch; below that the error ends the attempt (the wrapper records it).
    """
    while True:
        try:
            loss_sum, tokens = 0.0, 0
            for batch in batches:
                for part in pieces(batch, state.splits):
                    with record_function("vlmjobs.train.take_batch"):
                        inputs = prefetch.take(part, ctx.device)
                    with record_function("vlmjobs.train.forward_loss"):
                        loss, n = compute_loss(model, inputs, chunk_size=spec.loss_chunk_size)
                    with record_function("vlmjobs.train.backward"):
                        (loss * n).backward()
                    loss_sum += float(loss.detach()) * n
                    tokens += n
            break
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            free_memory()
            biggest = max(math.ceil(len(b) / state.splits) for b in batches)
            if biggest <= spec.oom.min_micro_batch:
                ctx.event(f"GPU out of memory at micro-batch {biggest}: cannot shrink", "error")
                raise
            state.splits *= 2
            ctx.event(
                f"GPU out of memory at step {state.step + 1} with micro-batch {biggest}: "
                f"retrying with {math.ceil(biggest / 2)}",
                "warning",
            )
    for param in model.parameters():
        if param.grad is not None:
            param.grad.div_(max(tokens, 1))
    return loss_sum / max(tokens, 1), sum(len(b) for b in batches)


def record_step(
    ctx: JobContext,
    state: ckpt.TrainState,
    values: dict[str, float],
    total: int,
    trackers: Trackers,
) -> None:
    """Step metrics (+ epoch as a fraction, peak GPU memory) and progress: the heartbeat."""
    values.update(epoch=state.epoch + state.batch_in_epoch / max(1, len(state.order)))
    if torch.cuda.is_available():
        values["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    ctx.metrics(values, step=state.step)
    trackers.log({f"train/{k}": v for k, v in values.items()}, state.step)
    ctx.progress(state.step, total)


def eta(clock: tuple[float, int], state: ckpt.TrainState, total: int) -> float | None:
    """Seconds left at this attempt's mean wall time per step (evals and saves included)."""
    started, first_step = clock
    done = state.step - first_step
    return (time.monotonic() - started) / done * (total - state.step) if done else None


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- save


def track_best(spec: TrainSpec, state: ckpt.TrainState, metrics: dict[str, float]) -> bool:
    """Update the best eval.metric and the evaluations since; True when this one is the best."""
    value = metrics[spec.eval.metric]
    best = state.best_metric
    better = best is None or (value < best if spec.eval.mode == "min" else value > best)
    if better:
        state.best_metric, state.best_step, state.evals_since_best = value, state.step, 0
    else:
        state.evals_since_best += 1
    state.last_metrics = metrics
    return better


def save(
    spec: TrainSpec,
    ctx: JobContext,
    root: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: ckpt.TrainState,
    metrics: dict[str, float],
    is_best: bool,
) -> Path:
    """Checkpoint ``state`` (once per step), record its row, and prune old ones."""
    target = root / f"{ckpt.PREFIX}{state.step:08d}"
    if target.exists():
        return target  # already written at this step (a stop request right after a save)
    path = ckpt.save_checkpoint(root, model, optimizer, scheduler, state, ctx.publish)
    ctx.record_checkpoint(state.step, path, {"epoch": float(state.epoch), **metrics}, is_best)
    keep = set()
    if spec.checkpoint.keep_best and state.best_step is not None:
        keep.add(root / f"{ckpt.PREFIX}{state.best_step:08d}")
    for old in ckpt.prune(root, spec.checkpoint.keep_last, keep):
        ctx.forget_checkpoint(old)
    return path


def write_adapter(
    ctx: JobContext, model: Any, processor: Any, manifest: Manifest, spec: TrainSpec
) -> Path:
    """The job's product: PEFT adapter + processor settings + manifest, written under an
    attempt-private name and renamed into place only while this attempt owns the job."""
    out = ctx.workdir / "adapter"
    tmp = out.with_name(f"{ckpt.TMP_PREFIX}{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    dataclasses.replace(manifest, base_model=spec.model.path).write(tmp)
    return ctx.publish(tmp, out)


def merge_export(spec: TrainSpec, adapter: Path, ctx: JobContext) -> Path:
    """Base + adapter merged into one plain checkpoint (loaded unquantized: merging into
    4-bit weights would round the update away)."""
    free_memory()
    plain = spec.model.model_copy(update={"quantization": "none", "adapter": str(adapter)})
    model, processor = load_model(plain, device=ctx.device)
    out = ctx.workdir / "merged"
    tmp = out.with_name(f"{ckpt.TMP_PREFIX}{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.merge_and_unload().save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.copy(adapter / "manifest.json", tmp / "manifest.json")
    return ctx.publish(tmp, out)


def result_of(
    state: ckpt.TrainState, total: int, adapter: Path, merged: Path | None, root: Path
) -> dict[str, Any]:
    artifacts = settings.artifacts_root().resolve()

    def rel(path: Path) -> str:
        full = path.resolve()
        return str(full.relative_to(artifacts)) if full.is_relative_to(artifacts) else str(full)

    result: dict[str, Any] = {
        "adapter": rel(adapter),
        "steps": state.step,
        "total_steps": total,
        "epochs_done": state.epoch,
        "samples_seen": state.samples_seen,
        "metrics": state.last_metrics,
    }
    if state.best_step is not None:
        result["best"] = {"step": state.best_step, "metric": state.best_metric}
        best = root / f"{ckpt.PREFIX}{state.best_step:08d}" / "adapter"
        if best.is_dir():
            result["best_adapter"] = rel(best)
    if merged is not None:
        result["merged"] = rel(merged)
    return result
