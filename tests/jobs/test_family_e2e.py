"""Qwen2-VL and Qwen3-VL end to end: clean -> QLoRA train (with generating eval) -> infer -> eval,
through the real CLI, one real worker process, Redis and SQLite, on tiny checkpoints.

The targets clean writes must be in the family's convention (0-1000 for both) and frame
(multiples of 28 / 32); train must carry the family into the adapter's manifest; infer must
read the adapter back, decode with the static engine (LoRA included) and finish every image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from vlmjobs.dev.build import make_model
from vlmjobs.dev.shapes import make_shapes
from vlmjobs.vision.family import family_of
from vlmjobs.vision.manifest import Manifest
from vlmjobs.vision.parse import parse_regions

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


@pytest.mark.parametrize("arch", ["tiny-qwen2vl", "tiny-qwen3vl"])
def test_clean_train_infer_through_a_worker(
    arch, vlmjobs_cli, start_worker, wait_for_state, tmp_path: Path
) -> None:
    model = make_model(tmp_path / "model", arch, seed=0)
    family = family_of(model)
    lo, hi = 4 * family.factor**2, 16 * family.factor**2  # 4..16 visual tokens: fast
    shapes = make_shapes(tmp_path / "shapes", n=4, seed=1, duplicates=0.0)
    start_worker(env={"OMP_NUM_THREADS": "1"})

    # ---- clean: targets in the family's convention and frame
    clean = submit(vlmjobs_cli, wait_for_state, "clean", tmp_path / "clean.yaml", {
        "input": str(shapes), "family": family.name, "semantic": False,
        "min_pixels": lo, "max_pixels": hi, "split": {"train": 0.5, "val": 0.5},
    }, timeout=120)  # fmt: skip
    data = Path(os.environ["VLMJOBS_ARTIFACTS"]) / clean.result["data_dir"]
    manifest = Manifest.read(data)
    assert (manifest.family, manifest.frame_convention) == (family.name, family.convention)
    truth = {
        Path(t["image"]).name: t
        for t in map(json.loads, (shapes / "regions.jsonl").read_text().splitlines())
    }
    records = (data / "train.jsonl").read_text().splitlines()
    assert len(records) == 2
    for line in records:
        record = json.loads(line)
        size, frame = tuple(record["image_size"]), tuple(record["input_size"])
        assert frame == family.input_size(size, lo, hi) and frame[0] % family.factor == 0
        image = Path(record["messages"][1]["content"][0]["image"]).name
        want = np.array(sorted(r["bbox"] for r in truth[image]["regions"]))
        target = record["messages"][2]["content"][0]["text"]
        written = parse_regions(target, input_size=frame, image_size=size, convention="1000")
        assert len(written.regions) == len(want)
        # Read back as 0-1000, the boxes are the truth to within half a unit (1/2000 of a side).
        got = np.array(sorted(written.regions.boxes.tolist()))
        assert np.abs(got - want).max() <= max(size) / 2000 + 1e-6

    # ---- train: QLoRA (nf4) on CPU, activation checkpointing, generating eval
    train = submit(vlmjobs_cli, wait_for_state, "train", tmp_path / "train.yaml", {
        "model": {"path": str(model), "quantization": "nf4", "dtype": "bf16",
                  "min_pixels": lo, "max_pixels": hi},
        "data": {"path": f"job:{clean.id}"},
        "micro_batch_size": 2, "max_steps": 2, "gradient_checkpointing": "language",
        "lora": {"targets": ["q_proj", "v_proj", "gate_proj"]},
        "eval": {"every_steps": 2, "max_samples": 2, "max_new_tokens": 8, "generate": True},
        "checkpoint": {"every_steps": 2},
    }, timeout=240)  # fmt: skip
    assert train.result["steps"] == 2
    adapter = Path(os.environ["VLMJOBS_ARTIFACTS"]) / train.result["adapter"]
    assert Manifest.read(adapter).family == family.name

    # ---- infer: the adapter's manifest decides frame and convention; every image finishes
    infer = submit(vlmjobs_cli, wait_for_state, "infer", tmp_path / "infer.yaml", {
        "model": {"path": str(model), "adapter": f"job:{train.id}", "dtype": "fp32"},
        "inputs": [str(shapes / "images")], "batch_size": 4, "max_new_tokens": 8,
        "engine": "static",  # the static-KV-cache engine, eager on a CPU
    }, timeout=180)  # fmt: skip
    assert (infer.result["images"], infer.result["ok"] + infer.result["failed"]) == (4, 4)
    assert infer.result["failed"] == 0

    # ---- eval: the clean job's val split as truth, read in the family's frame and convention
    scored = submit(vlmjobs_cli, wait_for_state, "eval", tmp_path / "eval.yaml", {
        "model": {"path": str(model), "adapter": f"job:{train.id}", "dtype": "fp32"},
        "data": f"job:{clean.id}", "split": "val", "batch_size": 2, "max_new_tokens": 8,
    }, timeout=120)  # fmt: skip
    val = [json.loads(x) for x in (data / "val.jsonl").read_text().splitlines()]
    names = [Path(r["messages"][1]["content"][0]["image"]).name for r in val]
    assert scored.result["images_matched"] == len(names) == 2
    assert scored.result["metrics"]["ground_truth"] == sum(len(truth[n]["regions"]) for n in names)
