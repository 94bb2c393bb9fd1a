"""Train jobs end to end: the real CLI, a real worker process, Redis, SQLite, the tiny model.

- a job on the 4-bit path and on the bf16 path: checkpoint rows that match the disk, and
  an adapter that infer's loader reads and that changes the model's output;
- kill -9 of the worker mid-run: another worker resumes from the newest checkpoint and
  ends at the step count of an uninterrupted run;
- bad configs: exit 2 at submit, every bad field named.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from sqlalchemy import select
from test_train_recipe import write_boxes_jsonl

from vlmjobs import settings
from vlmjobs.db.models import Checkpoint, JobEvent, Metric
from vlmjobs.db.session import session
from vlmjobs.dev.build import make_model
from vlmjobs.recipes.train import checkpoints as ckpt
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """One backend is enough here: the job system's own tests cover PostgreSQL."""
    return sqlite_url


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tiny") / "model", "tiny", seed=0)


def write_config(path: Path, tiny_dir: Path, data_file: Path, **overrides: object) -> Path:
    config: dict = {
        "name": "tiny-train",
        "model": {
            "path": str(tiny_dir),
            "quantization": "none",
            "dtype": "fp32",
            "min_pixels": 28 * 28,
            "max_pixels": 112 * 112,
        },
        "data": {"path": str(data_file), "val_fraction": 0.2, "task": "dense_caption"},
        "micro_batch_size": 2,
        "optim": {"lr": 2e-2, "warmup_steps": 1},
        "eval": {"max_samples": 2, "generate": False},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "gradient_checkpointing": "none",
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def rows(model: type, job_id: int) -> list:
    with session() as s:
        return list(s.scalars(select(model).where(model.job_id == job_id)))


def first_logits(model_spec: ModelSpec, image: Path) -> torch.Tensor:
    """Last-position logits of the base (+ adapter) for one image: what generation starts from."""
    from PIL import Image

    model, processor = load_model(model_spec)
    with Image.open(image) as img:
        batch = build_inputs(processor, [img.convert("RGB")], ["Find the box."])
    with torch.no_grad():
        return model(**batch).logits[0, -1].float()


@pytest.mark.parametrize(
    "quantization, dtype",
    [
        ("nf4", "bf16"),  # case: QLoRA, the default (bitsandbytes 4-bit on CPU)
        ("none", "bf16"),  # case: plain bf16 LoRA
    ],
)
def test_train_job_through_worker(
    vlmjobs_cli, start_worker, wait_for_state, tiny_dir, tmp_path, quantization, dtype
) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 10)  # 8 train -> 4 steps per epoch
    config = write_config(
        tmp_path / "train.yaml",
        tiny_dir,
        data,
        model={"quantization": quantization, "dtype": dtype},
        epochs=1,
        eval={"every_steps": 2},
        merge_export=True,
        profile={"start_step": 3, "steps": 1},
    )
    start_worker()
    submitted = vlmjobs_cli("submit", "train", str(config))
    assert submitted.exit_code == 0, submitted.output
    job_id = int(submitted.stdout.strip())
    job = wait_for_state(job_id, {"succeeded"}, timeout=240)
    # The profile, published through the worker's fenced rename, and its event.
    workdir = settings.artifacts_root() / "jobs" / str(job_id)
    assert (workdir / "profile" / "ops.txt").read_text().startswith("steps 3-3, sorted by")
    assert (workdir / "profile" / "trace.json").stat().st_size > 0
    assert any(e.message.startswith("profiled steps 3-3") for e in rows(JobEvent, job_id))

    assert job.result["steps"] == job.result["total_steps"] == 4
    assert (job.progress_done, job.progress_total) == (4, 4)
    # One row per checkpoint kept on disk (keep_last 2, plus the best if older).
    artifacts = settings.artifacts_root()
    kept = {str(p.relative_to(artifacts)) for p in ckpt.list_checkpoints(
        artifacts / "jobs" / str(job_id) / "checkpoints")}  # fmt: skip
    assert {c.path for c in rows(Checkpoint, job_id)} == kept and kept
    assert sum(c.is_best for c in rows(Checkpoint, job_id)) == 1
    names = {m.name for m in rows(Metric, job_id)}
    assert {"loss", "lr", "samples_per_s", "epoch", "val_loss", "val_token_accuracy"} <= names

    # infer's view: model.adapter -> the result's directory; it loads and changes the output.
    adapter = artifacts / job.result["adapter"]
    base = ModelSpec(path=str(tiny_dir), quantization=quantization, dtype=dtype,
                     min_pixels=28 * 28, max_pixels=112 * 112)  # fmt: skip
    tuned = base.model_copy(update={"adapter": str(adapter)})
    image = data.parent / "000.png"
    tuned_logits = first_logits(tuned, image)
    assert not torch.allclose(first_logits(base, image), tuned_logits, atol=1e-3)
    # merge_export: one plain checkpoint with the adapter folded in, and the manifest.
    merged = artifacts / job.result["merged"]
    assert (merged / "manifest.json").is_file()
    plain = base.model_copy(update={"path": str(merged), "quantization": "none"})
    merged_logits = first_logits(plain, image)
    unmerged = base.model_copy(update={"quantization": "none"})  # the originals, in bf16
    assert not torch.allclose(merged_logits, first_logits(unmerged, image), atol=1e-3)
    if quantization == "none":  # same bf16 weights with the update added: the tuned output
        assert torch.allclose(merged_logits, tuned_logits, atol=0.05)


def test_kill_9_then_resume_on_another_worker(
    vlmjobs_cli, start_worker, wait_for_state, tiny_dir, tmp_path
) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)  # 10 train -> 5 steps an epoch
    config = write_config(
        tmp_path / "train.yaml", tiny_dir, data, epochs=2, checkpoint={"every_steps": 3}
    )
    first = start_worker()
    job_id = int(vlmjobs_cli("submit", "train", str(config)).stdout.strip())
    deadline = time.monotonic() + 180
    while not any(c.step >= 3 for c in rows(Checkpoint, job_id)):
        assert time.monotonic() < deadline, first.output()[-3000:]
        time.sleep(0.2)
    first.kill(signal.SIGKILL)
    first.wait()

    start_worker()  # its reconcile sees the stale heartbeat and runs the job again
    job = wait_for_state(job_id, {"succeeded"}, timeout=240)
    assert job.attempts == 2
    assert job.result["steps"] == job.result["total_steps"] == 10
    with session() as s:
        events = list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    resumed = [e for e in events if e.startswith("resumed from step-")]
    assert len(resumed) == 1, events
    # Every step has a loss; steps after the resume point ran once more on the second worker.
    losses = [m.step for m in rows(Metric, job_id) if m.name == "loss"]
    assert set(losses) == set(range(1, 11))
    resumed_at = int(re.match(r"resumed from step-(\d+)", resumed[0]).group(1))
    # Steps up to the checkpoint ran once: the second worker did not start over.
    assert resumed_at >= 3 and all(losses.count(s) == 1 for s in range(1, resumed_at + 1))
    assert os.path.isdir(settings.artifacts_root() / job.result["adapter"])


@pytest.mark.parametrize(
    "change, field",
    [
        ({"data": {"path": "/nonexistent/data.jsonl"}}, "data.path"),  # case: missing data
        ({"lora": {"r": 0}}, "lora.r"),  # case: rank 0
        ({"lora": {"targets": ["q_proj", "qkv_proj"]}}, "lora.targets"),  # case: unknown module
        ({"lora": {"targets": []}}, "lora.targets"),  # case: no targets
        ({"micro_batch_size": 0}, "micro_batch_size"),  # case: empty batch
        ({"preflight": {"gpu_memory_gib": 0.01}}, "preflight"),  # case: does not fit the card
    ],
)
def test_bad_config_exits_2_naming_the_field(
    vlmjobs_cli, tiny_dir, tmp_path, change: dict, field: str
) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 4)
    config = write_config(tmp_path / "bad.yaml", tiny_dir, data, **change)
    result = vlmjobs_cli("submit", "train", str(config))
    assert result.exit_code == 2, result.output
    assert field in result.output + result.stderr
