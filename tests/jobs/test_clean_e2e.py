"""A clean job end to end: `vlmjobs submit clean`, a real worker process, Redis, the database."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlmjobs.dev.shapes import make_shapes
from vlmjobs.vision.manifest import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # Clean touches the database only through the job system, whose own tests cover
    # PostgreSQL; one backend keeps this slow test to one worker start.
    return sqlite_url


def test_clean_job_through_cli_and_worker(
    vlmjobs_cli, start_worker, wait_for_state, tmp_path: Path
) -> None:
    root = make_shapes(tmp_path / "shapes", n=12, seed=5, duplicates=0.5)
    cfg = tmp_path / "clean.yaml"
    cfg.write_text(f"name: shapes\ninput: {root}\npanels: 2\nsplit:\n  train: 0.75\n  val: 0.25\n")
    start_worker(queues="cpu")
    res = vlmjobs_cli("submit", "clean", str(cfg), "--set", "seed=3")
    assert res.exit_code == 0, res.output
    job_id = int(res.stdout.strip())

    job = wait_for_state(job_id, {"succeeded"}, timeout=240)
    truth = [json.loads(line) for line in (root / "truth.jsonl").read_text().splitlines()]
    assert job.result["data_dir"] == f"jobs/{job_id}/data"
    assert job.result["regions"]["after"] == sum(len(t["regions"]) for t in truth)
    assert job.result["records"] == {"train": 9, "val": 3, "test": 0}
    assert (job.progress_done, job.progress_total) == (12, 12)

    detail = json.loads(vlmjobs_cli("status", str(job_id), "--json").stdout)
    assert detail["result"]["removed_pct"] == job.result["removed_pct"] > 0
    assert "removed" in detail["events"][-2]["message"]  # the recipe's summary event
    assert "removed_pct" in vlmjobs_cli("status", str(job_id)).stdout

    data = Path(os.environ["VLMJOBS_ARTIFACTS"]) / job.result["data_dir"]
    assert sorted(p.name for p in data.iterdir()) == [
        "manifest.json",
        "panels",
        "report.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    assert Manifest.read(data).task == "dense_caption"
    assert len(json.loads((data / "report.json").read_text())["per_image"]) == 12


def test_submit_with_a_missing_input_is_refused(vlmjobs_cli, tmp_path: Path) -> None:
    cfg = tmp_path / "clean.yaml"
    cfg.write_text(f"input: {tmp_path / 'nowhere.jsonl'}\niou_threshold: 1.5\n")
    res = vlmjobs_cli("submit", "clean", str(cfg))
    assert res.exit_code == 2
    assert "nowhere.jsonl" in res.output + res.stderr and "iou_threshold" in res.output + res.stderr
