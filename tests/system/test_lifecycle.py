"""A job's life through the real CLI, a real worker process, Redis and the database."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from vlmjobs.db.models import JobEvent, Metric, Output, Region
from vlmjobs.db.session import session
from vlmjobs.worker.context import workdir_for

pytestmark = pytest.mark.slow


def _count(model, job_id: int) -> int:
    with session() as s:
        col = model.output_id if model is Region else model.job_id
        if model is Region:
            q = select(func.count()).select_from(Region).join(Output).where(Output.job_id == job_id)
        else:
            q = select(func.count()).select_from(model).where(col == job_id)
        return int(s.scalar(q) or 0)


def test_submit_runs_to_succeeded(vlmjobs_cli, start_worker, wait_for_state, tmp_path):
    cfg = tmp_path / "sleepy.yaml"
    cfg.write_text("name: first\nitems: 4\nopts:\n  r: 2\n")
    start_worker()
    res = vlmjobs_cli("submit", "sleepy", str(cfg), "--set", "opts.r=8")
    assert res.exit_code == 0, res.output
    job_id = int(res.stdout.strip())

    job = wait_for_state(job_id, {"succeeded"}, timeout=30)
    assert job.attempts == 1
    assert job.result == {"items": 4}
    assert job.spec["opts"] == {"r": 8}
    assert (job.progress_done, job.progress_total) == (4, 4)
    assert _count(Output, job_id) == 4
    assert _count(Region, job_id) == 4
    assert _count(Metric, job_id) == 4
    with session() as s:
        events = list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    assert events[0].startswith("attempt 1 on cpu.")
    assert events[-1] == "succeeded"

    table = vlmjobs_cli("status")
    assert table.exit_code == 0
    row = [line for line in table.stdout.splitlines() if line.startswith(str(job_id))]
    assert "succeeded" in row[0] and "first" in row[0] and "loss=0.25@3" in row[0]
    detail = json.loads(vlmjobs_cli("status", str(job_id), "--json").stdout)
    assert detail["state"] == "succeeded" and detail["events"][-1]["message"] == "succeeded"
    log = vlmjobs_cli("logs", str(job_id))
    assert "attempt 1 of 3" in log.stdout


def _submit(**fields: object) -> int:
    from vlmjobs.scheduler.submit import submit
    from vlmjobs.specs import load_spec

    return submit(load_spec("sleepy", None, [f"{k}={v}" for k, v in fields.items()]))


def test_cancel_queued_and_running(vlmjobs_cli, start_worker, wait_for_state):
    queued = _submit(items=1)
    assert "cancelled" in vlmjobs_cli("cancel", str(queued)).stdout
    running = _submit(items=200, sleep_s=0.05)
    start_worker()
    wait_for_state(running, {"running"}, timeout=20)
    time.sleep(0.5)
    res = vlmjobs_cli("cancel", str(running))
    assert "stopping at its next step" in res.stdout
    job = wait_for_state(running, {"cancelled"}, timeout=20)
    kept = _count(Output, running)
    assert 0 < kept < 200 and job.result == {"items": kept}  # what it produced is kept
    # The queued one never ran, even though its message may still reach the worker.
    assert not (workdir_for(queued) / "runs.txt").exists()
    assert wait_for_state(queued, {"cancelled"}, timeout=1).attempts == 0


def test_failure_retry_and_wait_exit_codes(vlmjobs_cli, start_worker, wait_for_state, tmp_path):
    start_worker()
    flaky = _submit(items=2, fail="flaky")  # ConnectionError on attempt 1: retried
    bug = _submit(items=2, fail="value")  # ValueError: a bug, not retried
    assert wait_for_state(flaky, {"succeeded"}, timeout=30).attempts == 2
    job = wait_for_state(bug, {"failed"}, timeout=30)
    assert job.attempts == 1
    assert job.error == "ValueError: sleepy was told to fail"
    assert "Traceback" in (job.traceback or "") and "run_sleepy" in job.traceback
    detail = vlmjobs_cli("status", str(bug))
    assert "error     ValueError: sleepy was told to fail" in detail.stdout

    assert vlmjobs_cli("retry", str(bug)).exit_code == 0
    assert wait_for_state(bug, {"failed"}, timeout=30).attempts == 1  # a fresh budget
    assert len((workdir_for(bug) / "runs.txt").read_text().splitlines()) == 2
    assert vlmjobs_cli("retry", str(flaky)).exit_code == 1  # succeeded jobs are not retried

    cfg = tmp_path / "ok.yaml"
    cfg.write_text("items: 2\n")
    assert vlmjobs_cli("submit", "sleepy", str(cfg), "--wait").exit_code == 0
    res = vlmjobs_cli("submit", "sleepy", str(cfg), "--set", "fail=value", "--wait")
    assert res.exit_code == 1 and "ValueError" in res.stderr


def test_priority_and_time_limit(start_worker, wait_for_state):
    busy = _submit(items=5, sleep_s=0.2)
    low = _submit(items=1, priority=1)
    high = _submit(items=1, priority=9)
    limited = _submit(items=100, sleep_s=0.1, time_limit_s=1)
    start_worker()
    jobs = {j: wait_for_state(j, {"succeeded", "failed"}, timeout=40) for j in (busy, low, high)}
    assert jobs[high].started_at < jobs[low].started_at
    job = wait_for_state(limited, {"failed"}, timeout=30)
    assert job.error and "time limit" in job.error
    assert 0 < _count(Output, limited) < 100


def test_workers_listing(vlmjobs_cli, start_worker):
    worker = start_worker()
    out = vlmjobs_cli("workers").stdout
    assert f"cpu.{worker.pid}@" in out and "cpu,gpu" in out


def test_gpu_worker_is_pinned_and_serves_the_gpu_queue(start_worker, wait_for_state):
    start_worker(queues="gpu", gpu=3)
    job_id = _submit(items=1, queue="gpu")
    job = wait_for_state(job_id, {"succeeded"}, timeout=30)
    assert job.gpu == "3" and job.worker.startswith("gpu3.")
    run = (workdir_for(job_id) / "runs.txt").read_text()
    assert "device=cuda cuda=3" in run  # CUDA_VISIBLE_DEVICES set before the job ran
