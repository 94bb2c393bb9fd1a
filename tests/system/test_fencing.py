"""One job, one owner: a slow reconciler against live workers (real workers, Redis, DB).

A reconciler that read a row as stale and was slow to write must not re-queue it when,
meanwhile, the owner beat again or another reconciler already gave the job to a new
owner. The frozen-trainer case is in tests/jobs/test_train_fencing.py.
"""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from fencing_helpers import count, events, freeze, job_row, thaw, until  # noqa: F401 - thaw

from vlmjobs.db.models import Job, Output, utcnow
from vlmjobs.scheduler import reconcile
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec
from vlmjobs.worker.context import workdir_for

pytestmark = pytest.mark.slow


def _submit_sleepy(**fields: object) -> int:
    return submit(load_spec("sleepy", None, [f"{k}={v}" for k, v in fields.items()]))


def _is_older_than_limit(job: Job) -> bool:
    """Older than VLMJOBS_STALE_AFTER_S (3 s in tests), with a margin."""
    return job.heartbeat_at is not None and job.heartbeat_at < utcnow() - timedelta(seconds=3.2)


@pytest.mark.parametrize("meanwhile", ["owner-beat-again", "other-reconciler-won"])
def test_slow_reconciler_cannot_requeue_a_job_it_read_as_stale(
    meanwhile,
    start_worker,
    wait_for_state,
    monkeypatch,
    thaw,  # noqa: F811 - the fixture imported above
) -> None:
    owner = start_worker()
    job_id = _submit_sleepy(items=12, sleep_s=0.25)
    until(lambda: count(Output, job_id) >= 2, 30, "the job to start")
    freeze(owner, job_id)
    thaw.append(owner)
    until(lambda: _is_older_than_limit(job_row(job_id)), 10, "a stale heartbeat")
    others: list[object] = []

    def between(read_job_id: int) -> None:
        """Runs after the slow reconciler's read, before its write."""
        if meanwhile == "owner-beat-again":
            owner.kill(signal.SIGCONT)
            until(lambda: not _is_older_than_limit(job_row(job_id)), 10, "the owner's beat")
        else:  # a faster reconciler re-queues it and a new worker claims it
            monkeypatch.setattr(reconcile, "between_read_and_write", None)
            assert reconcile.reconcile().requeued_stale == [job_id]
            others.append(start_worker())
            until(lambda: job_row(job_id).fence == 2, 30, "the new owner's claim")
            monkeypatch.setattr(reconcile, "between_read_and_write", between)

    monkeypatch.setattr(reconcile, "between_read_and_write", between)
    assert reconcile.reconcile().requeued_stale == []  # it read the row as stale: no effect
    owner.kill(signal.SIGCONT)

    job = wait_for_state(job_id, {"succeeded"}, timeout=60)
    expected_attempts = 1 if meanwhile == "owner-beat-again" else 2
    assert (job.attempts, job.fence) == (expected_attempts, expected_attempts)
    assert events(job_id).count("succeeded") == 1
    assert count(Output, job_id) == 12  # one row per item, none twice
    requeues = [e for e in events(job_id) if "stopped heartbeating" in e]
    assert len(requeues) == expected_attempts - 1
    runs = (workdir_for(job_id) / "runs.txt").read_text().splitlines()
    assert [r.split()[0] for r in runs] == [f"attempt={n}" for n in range(1, expected_attempts + 1)]
