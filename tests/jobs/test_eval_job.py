"""The eval job end to end: real CLI, a real worker process, Redis, SQLite, the tiny model
taught to answer ANSWER (see test_infer_job.py), scored against ground truth on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select
from test_infer_job import ANSWER, ONE_THREAD, shape_png
from test_infer_job import tiny as tiny  # noqa: F401  (the fixture)

from vlmjobs.db.models import Metric
from vlmjobs.db.session import session
from vlmjobs.vision.frames import input_size
from vlmjobs.vision.parse import parse_regions

pytestmark = pytest.mark.slow
MIN_PIXELS, MAX_PIXELS = 3136, 50176


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def ground_truth(folder: Path) -> Path:
    """Two images and, as truth, what ANSWER means on each in original pixels (without the
    near-duplicate that infer's dedup drops)."""
    from PIL import Image

    rows = []
    for i in (0, 3):
        path = folder / "images" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(shape_png(i))
        size = Image.open(path).size
        frame = input_size(size, MIN_PIXELS, MAX_PIXELS)
        regions = parse_regions(ANSWER, input_size=frame, image_size=size).regions
        keep = [0, 2]  # the second entry repeats the first at IoU 0.9
        items = [regions.to_json()[k] for k in keep]
        rows.append(
            {"image": f"images/img{i}.png", "width": size[0], "height": size[1], "regions": items}
        )
    truth = folder / "truth.jsonl"
    truth.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return truth


def test_eval_job_scores_its_own_predictions(
    tiny, tmp_path, vlmjobs_cli, start_worker, wait_for_state
) -> None:  # noqa: F811
    truth = ground_truth(tmp_path / "data")
    spec = tmp_path / "eval.yaml"
    spec.write_text(
        "kind: eval\n"
        f"model:\n  path: {tiny['answering']}\n  dtype: fp32\n"
        f"  min_pixels: {MIN_PIXELS}\n  max_pixels: {MAX_PIXELS}\n"
        f"data: {truth}\nmetric: coco\ntask: dense_caption\nengine: hf\n"
        "batch_size: 2\nmax_new_tokens: 128\n"
    )
    start_worker(env=ONE_THREAD)
    res = vlmjobs_cli("submit", "eval", str(spec))
    assert res.exit_code == 0, res.output
    job_id = int(res.stdout.strip())
    job = wait_for_state(job_id, {"succeeded"}, timeout=180)

    result = job.result
    assert result["metric"] == "coco" and result["images_matched"] == 2
    # Every box found at IoU 0.5 (frames right); dedup may keep the near-duplicate (IoU 0.9
    # with the truth's box) instead of the first entry, which only the strictest IoUs see.
    ap = result["metrics"]["AP"]
    assert result["metrics"]["AP50"] == pytest.approx(1.0) and 0.9 <= ap <= 1.0
    assert result["infer"]["ok"] == 2
    with session() as s:
        rows = s.execute(select(Metric.name, Metric.value).where(Metric.job_id == job_id))
        recorded = dict(rows.all())
    assert recorded["AP"] == ap and "AP_conf1" in recorded
    # The predictions are the job's own outputs: exported, and scored again by the command.
    lines = vlmjobs_cli("results", str(job_id)).stdout.splitlines()
    assert len(lines) == 2 and (Path(job.result["predictions"]).name == "predictions.jsonl")
    again = vlmjobs_cli(
        "eval", "--pred", f"job:{job_id}", "--gt", str(truth), "--metric", "coco", "--json"
    )
    assert json.loads(again.stdout)["results"][0]["metrics"]["AP"] == ap


def test_eval_spec_errors_name_the_field(tmp_path, vlmjobs_cli) -> None:
    spec = tmp_path / "eval.yaml"
    spec.write_text(f"kind: eval\nmodel: {{path: {tmp_path}}}\ndata: job:77\nmetric: bleu\n")
    res = vlmjobs_cli("submit", "eval", str(spec))
    assert res.exit_code == 2
    assert "data" in res.stderr and "job:77" in res.stderr and "metric" in res.stderr
