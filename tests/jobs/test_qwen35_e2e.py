"""Qwen3.5 end to end: clean -> QLoRA train (with generating eval) -> infer -> eval, through the
real CLI, one real worker process, Redis and SQLite, on the tiny hybrid checkpoint.

Its gated delta-net layers run on transformers' PyTorch fallback (no flash-linear-attention,
no causal-conv1d here); LoRA reaches them (in_proj_qkv, out_proj) as well as the attention
layer; infer asked for the static engine must fall back to generate and say why in the
job's events (and so its log), then finish every image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from vlmjobs.db.models import JobEvent
from vlmjobs.db.session import session
from vlmjobs.dev.build import make_model
from vlmjobs.dev.shapes import make_shapes
from vlmjobs.vision.family import family_of
from vlmjobs.vision.manifest import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the job system's own tests cover PostgreSQL."""
    return sqlite_url


def submit(vlmjobs_cli, wait_for_state, kind: str, path: Path, config: dict, timeout: float):
    path.write_text(yaml.safe_dump(config))
    res = vlmjobs_cli("submit", kind, str(path))
    assert res.exit_code == 0, res.output
    return wait_for_state(int(res.stdout.strip()), {"succeeded"}, timeout=timeout)


def events(job_id: int) -> list[str]:
    with session() as s:
        return list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))


def test_qwen35_clean_train_infer_eval_through_a_worker(
    vlmjobs_cli, start_worker, wait_for_state, tmp_path: Path
) -> None:
    model = make_model(tmp_path / "model", "tiny-qwen35", seed=0)
    family = family_of(model)
    assert family.name == "qwen3_5"
    lo, hi = 4 * family.factor**2, 16 * family.factor**2  # 4..16 visual tokens: fast
    shapes = make_shapes(tmp_path / "shapes", n=4, seed=1, duplicates=0.0)
    start_worker(env={"OMP_NUM_THREADS": "1"})

    # ---- clean: the manifest carries the family and its 0-1000 convention
    clean = submit(vlmjobs_cli, wait_for_state, "clean", tmp_path / "clean.yaml", {
        "input": str(shapes), "family": family.name, "semantic": False,
        "min_pixels": lo, "max_pixels": hi, "split": {"train": 0.5, "val": 0.5},
    }, timeout=120)  # fmt: skip
    data = Path(os.environ["VLMJOBS_ARTIFACTS"]) / clean.result["data_dir"]
    manifest = Manifest.read(data)
    assert (manifest.family, manifest.frame_convention) == ("qwen3_5", "1000")
    for line in (data / "train.jsonl").read_text().splitlines():
        frame = json.loads(line)["input_size"]
        assert frame[0] % 32 == 0 and frame[1] % 32 == 0

    # ---- train: QLoRA on the attention layer, the delta-net layer and every MLP
    train = submit(vlmjobs_cli, wait_for_state, "train", tmp_path / "train.yaml", {
        "model": {"path": str(model), "quantization": "nf4", "dtype": "bf16",
                  "min_pixels": lo, "max_pixels": hi},
        "data": {"path": f"job:{clean.id}"},
        "micro_batch_size": 2, "max_steps": 2, "gradient_checkpointing": "language",
        "lora": {"targets": ["q_proj", "v_proj", "in_proj_qkv", "out_proj", "gate_proj"]},
        "eval": {"every_steps": 2, "max_samples": 2, "max_new_tokens": 8, "generate": True},
        "checkpoint": {"every_steps": 2},
    }, timeout=240)  # fmt: skip
    assert train.result["steps"] == 2
    adapter = Path(os.environ["VLMJOBS_ARTIFACTS"]) / train.result["adapter"]
    assert Manifest.read(adapter).family == "qwen3_5"
    targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert "linear_attn" in targets and "self_attn" in targets

    # ---- infer: the static engine is asked for; generate runs, and the job says why
    infer = submit(vlmjobs_cli, wait_for_state, "infer", tmp_path / "infer.yaml", {
        "model": {"path": str(model), "adapter": f"job:{train.id}", "dtype": "fp32"},
        "inputs": [str(shapes / "images")], "batch_size": 3, "max_new_tokens": 8,
        "engine": "static",
    }, timeout=180)  # fmt: skip
    assert (infer.result["images"], infer.result["ok"], infer.result["failed"]) == (4, 4, 0)
    fallback = [e for e in events(infer.id) if e.startswith("engine:")]
    assert len(fallback) == 1 and "Qwen3.5" in fallback[0] and "generate" in fallback[0]
    log = (Path(os.environ["VLMJOBS_ARTIFACTS"]) / "jobs" / str(infer.id) / "job.log").read_text()
    assert "recurrent state" in log

    # ---- eval: the clean job's val split as truth, read in the family's frame and convention
    scored = submit(vlmjobs_cli, wait_for_state, "eval", tmp_path / "eval.yaml", {
        "model": {"path": str(model), "adapter": f"job:{train.id}", "dtype": "fp32"},
        "data": f"job:{clean.id}", "split": "val", "batch_size": 2, "max_new_tokens": 8,
    }, timeout=120)  # fmt: skip
    assert scored.result["images_matched"] == 2
