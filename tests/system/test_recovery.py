"""Failure handling with real processes: kill -9, SIGTERM, Redis loss, duplicate messages."""

from __future__ import annotations

import signal
import time

import pytest
import redis
from sqlalchemy import func, select

from vlmjobs.db.models import Job, JobEvent, Output, Region
from vlmjobs.db.session import session
from vlmjobs.scheduler.submit import send, submit
from vlmjobs.specs import load_spec
from vlmjobs.worker.context import workdir_for

pytestmark = pytest.mark.slow


def _submit(**fields: object) -> int:
    return submit(load_spec("sleepy", None, [f"{k}={v}" for k, v in fields.items()]))


def _progress(job_id: int) -> int:
    with session() as s:
        return s.get_one(Job, job_id).progress_done


def _wait_progress(job_id: int, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _progress(job_id) < at_least:
        assert time.monotonic() < deadline, f"job {job_id} made no progress"
        time.sleep(0.05)


def _runs(job_id: int) -> list[str]:
    path = workdir_for(job_id) / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def _rows(job_id: int) -> tuple[int, int, int]:
    """(output rows, distinct item keys, region rows) of a job."""
    with session() as s:
        outputs = s.scalar(select(func.count()).where(Output.job_id == job_id))
        keys = s.scalar(
            select(func.count(func.distinct(Output.item_key))).where(Output.job_id == job_id)
        )
        regions = s.scalar(
            select(func.count()).select_from(Region).join(Output).where(Output.job_id == job_id)
        )
    return int(outputs or 0), int(keys or 0), int(regions or 0)


def _events(job_id: int) -> list[str]:
    with session() as s:
        return list(
            s.scalars(
                select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        )


def test_kill_9_mid_job_resumes_on_new_worker(start_worker, wait_for_state):
    first = start_worker()
    job_id = _submit(items=12, sleep_s=0.15)
    _wait_progress(job_id, 3)
    first.kill(signal.SIGKILL)
    first.wait()
    start_worker()  # reconcile sees the stale heartbeat (3 s in tests) and re-queues

    job = wait_for_state(job_id, {"succeeded"}, timeout=40)
    assert job.attempts == 2
    assert _rows(job_id) == (12, 12, 12)  # no duplicate outputs
    assert len(_runs(job_id)) == 2
    events = _events(job_id)
    assert events.count("succeeded") == 1
    assert any("stopped heartbeating" in e for e in events)
    resumed = [e for e in events if e.startswith("resuming with")]
    assert resumed[0] == "resuming with 0 of 12 items done"
    assert not resumed[1].startswith("resuming with 0 ")  # the second attempt skipped work


def test_sigterm_requeues_without_spending_an_attempt(start_worker, wait_for_state):
    first = start_worker()
    job_id = _submit(items=15, sleep_s=0.15)
    _wait_progress(job_id, 2)
    first.kill(signal.SIGTERM)
    assert first.wait(30) == 0  # a warm shutdown: the job stopped at an item boundary
    job = wait_for_state(job_id, {"queued"}, timeout=5)
    assert job.attempts == 0
    assert any("worker shutting down" in e for e in _events(job_id))

    start_worker()
    job = wait_for_state(job_id, {"succeeded"}, timeout=30)
    assert job.attempts == 1
    assert _rows(job_id) == (15, 15, 15)
    assert len(_runs(job_id)) == 2


@pytest.mark.parametrize("how", ["flush", "restart"])
def test_queued_jobs_survive_redis_loss(
    how, start_worker, wait_for_state, redis_server, broker_url
):
    if how == "flush":  # no worker yet: three messages wait in Redis, then vanish
        ids = [_submit(items=1) for _ in range(3)]
        redis.Redis.from_url(broker_url).flushdb()
        start_worker()
    else:  # a busy worker; Redis restarts (no persistence) under it
        start_worker()
        busy = _submit(items=10, sleep_s=0.2)
        _wait_progress(busy, 1)
        ids = [busy] + [_submit(items=1) for _ in range(3)]
        redis_server.restart()
    for job_id in ids:
        wait_for_state(job_id, {"succeeded"}, timeout=40)
        assert len(_runs(job_id)) == 1
    lost = ids if how == "flush" else ids[1:]
    for job_id in lost:
        assert any("message was not in Redis" in e for e in _events(job_id))


def test_duplicate_delivery_runs_once(start_worker, wait_for_state):
    workers = [start_worker(), start_worker()]
    job_id = _submit(items=6, sleep_s=0.1)
    with session() as s:
        task_id = s.get_one(Job, job_id).task_id
    assert task_id
    send(job_id, "sleepy", "cpu", 5, task_id)  # the same message again, while it runs
    job = wait_for_state(job_id, {"succeeded"}, timeout=30)
    send(job_id, "sleepy", "cpu", 5, task_id)  # and once more after it ended
    time.sleep(1.5)
    job = wait_for_state(job_id, {"succeeded"}, timeout=1)
    assert job.attempts == 1
    assert len(_runs(job_id)) == 1
    assert _rows(job_id) == (6, 6, 6)
    logs = "".join(w.output() for w in workers)
    assert logs.count(f"job {job_id}: message skipped") == 2  # both copies arrived, both skipped


def test_disk_full_fails_once_naming_free_space(start_worker, wait_for_state):
    start_worker()
    job_id = _submit(items=2, fail="disk-full")
    job = wait_for_state(job_id, {"failed"}, timeout=30)
    assert job.attempts == 1 and len(_runs(job_id)) == 1  # no retry into the same full disk
    assert job.error.startswith("disk full under ")
    assert str(workdir_for(job_id)) in job.error
    assert "GiB free" in job.error and "vlmjobs retry" in job.error
