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


def ground_truth(folder: Path, images: tuple[int, ...] = (0, 3)) -> Path:
    """Images (two by default) and, as truth, what ANSWER means on each in original pixels
    (without the near-duplicate that infer's dedup drops)."""
    from PIL import Image

    rows = []
    for i in images:
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


def job_metrics(job_id: int) -> dict[str, float]:
    with session() as s:
        rows = s.execute(select(Metric.name, Metric.value).where(Metric.job_id == job_id))
        return dict(rows.all())


def linked_predictions(job, vlmjobs_cli) -> list[dict]:
    """The predictions file the result links (relative to the artifact root), which must be
    the job's own outputs, as `vlmjobs results` exports them."""
    import os

    path = Path(os.environ["VLMJOBS_ARTIFACTS"]) / job.result["predictions"]
    lines = path.read_text().splitlines()
    assert lines == vlmjobs_cli("results", str(job.id)).stdout.splitlines()
    return [json.loads(line) for line in lines]


def test_eval_job_densecap(tiny, tmp_path, vlmjobs_cli, start_worker, wait_for_state) -> None:  # noqa: F811
    """metric: densecap on a worker: MiniLM phrase similarity loaded there, offline."""
    truth = ground_truth(tmp_path / "data")
    spec = tmp_path / "eval.yaml"
    spec.write_text(
        "kind: eval\n"
        f"model:\n  path: {tiny['answering']}\n  dtype: fp32\n"
        f"  min_pixels: {MIN_PIXELS}\n  max_pixels: {MAX_PIXELS}\n"
        f"data: {truth}\nmetric: densecap\ntask: dense_caption\nengine: hf\n"
        "batch_size: 2\nmax_new_tokens: 128\n"
    )
    start_worker(env=ONE_THREAD)
    res = vlmjobs_cli("submit", "eval", str(spec))
    assert res.exit_code == 0, res.output
    job = wait_for_state(int(res.stdout.strip()), {"succeeded"}, timeout=240)

    result = job.result
    assert result["metric"] == "densecap" and result["images_matched"] == 2
    metrics = result["metrics"]
    # Same boxes (IoU >= 0.9 whichever duplicate dedup kept), same phrases: every threshold.
    assert metrics["mAP"] == pytest.approx(1.0) and metrics["ground_truth"] == 4
    assert result["metrics_confidence_1"]["mAP"] == pytest.approx(1.0)
    recorded = job_metrics(job.id)
    assert recorded["mAP"] == metrics["mAP"] and recorded["AP_loc_conf1"] == pytest.approx(1.0)
    assert recorded["region_f1"] == pytest.approx(1.0)  # the number train's eval reports
    assert len(linked_predictions(job, vlmjobs_cli)) == 2


def test_eval_job_on_a_clean_jobs_split(
    tiny, tmp_path, vlmjobs_cli, start_worker, wait_for_state
) -> None:  # noqa: F811
    """data: job:CLEAN: the truth is clean's test split, written in the model's frame and read
    back in original pixels; the prompt, system message and pixel limits are the manifest's."""
    truth = ground_truth(tmp_path / "data", images=(0, 1, 2, 3))
    clean = tmp_path / "clean.yaml"
    clean.write_text(
        f"kind: clean\ninput: {truth}\nsemantic: false\n"
        f"min_pixels: {MIN_PIXELS}\nmax_pixels: {MAX_PIXELS}\n"
        "split: {train: 0.5, val: 0.0, test: 0.5}\n"
    )
    start_worker(env=ONE_THREAD)
    res = vlmjobs_cli("submit", "clean", str(clean))
    assert res.exit_code == 0, res.output
    clean_id = wait_for_state(int(res.stdout.strip()), {"succeeded"}, timeout=120).id
    spec = tmp_path / "eval.yaml"
    spec.write_text(
        "kind: eval\n"
        f"model:\n  path: {tiny['answering']}\n  dtype: fp32\n"
        f"data: job:{clean_id}\nsplit: test\nmetric: coco\nengine: hf\n"
        "batch_size: 2\nmax_new_tokens: 128\n"
    )
    res = vlmjobs_cli("submit", "eval", str(spec))
    assert res.exit_code == 0, res.output
    job = wait_for_state(int(res.stdout.strip()), {"succeeded"}, timeout=240)

    result = job.result
    assert result["images_matched"] == 2 and result["images_without_prediction"] == 0
    assert result["infer"]["ok"] == 2
    # Clean rounds boxes to the model's frame (~1-2 px here): every box found at IoU 0.5.
    assert result["metrics"]["AP50"] == pytest.approx(1.0) and result["metrics"]["AP"] > 0.5
    assert job_metrics(job.id)["AP50"] == pytest.approx(1.0)
    predictions = linked_predictions(job, vlmjobs_cli)
    # The two images of clean's test split (of the four), nothing else.
    names = {Path(p["source"]).name for p in predictions}
    assert len(names) == 2 and names < {f"img{i}.png" for i in (0, 1, 2, 3)}
