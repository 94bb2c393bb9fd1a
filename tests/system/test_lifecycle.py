"""A job's life through the real CLI, a real worker process, Redis and the database."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from vlmjobs.db.models import JobEvent, Metric, Output, Region
from vlmjobs.db.session import session

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
