"""Reconcile the database (the truth) with what workers and Redis actually hold.

Two ways a job gets stuck, both repaired by re-queuing it with a fresh message:

* its worker died (kill -9, power loss): the job stays ``running`` while its
  heartbeat ages; after ``VLMJOBS_STALE_AFTER_S`` it is re-queued (or failed
  once ``max_attempts`` runs were spent). The dead worker's message stays
  unacknowledged in Redis until the visibility timeout; if it is ever
  redelivered, the run wrapper skips it.
* its message was lost (Redis flushed or restarted without persistence): a
  job ``queued`` for longer than ``VLMJOBS_REQUEUE_GRACE_S`` whose task id is
  in no Redis queue and not held unacknowledged by a worker is re-sent.

Every worker runs this at start and every ``VLMJOBS_RECONCILE_S``, and beat
schedules it too; concurrent runs are safe because each repair is one
conditional UPDATE that only one process can win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from sqlalchemy import select, update

from vlmjobs import settings
from vlmjobs.db.models import Job, JobEvent, State, utcnow
from vlmjobs.db.session import session
from vlmjobs.scheduler.app import PRIORITY_SEP, QUEUES, requeue_grace_s, stale_after_s
from vlmjobs.scheduler.submit import requeue


@dataclass
class Reconciled:
    requeued_stale: list[int] = field(default_factory=list)
    failed_stale: list[int] = field(default_factory=list)
    resent_lost: list[int] = field(default_factory=list)


def broker_task_ids(broker_url: str | None = None) -> set[str]:
    """Task ids of every message waiting in our queues or held unacknowledged by a worker."""
    client = redis.Redis.from_url(broker_url or settings.broker_url())
    # Priority sub-queues are "cpu", "cpu:1" .. "cpu:9" (see scheduler/app.py).
    keys = [q if p == 0 else f"{q}{PRIORITY_SEP}{p}" for q in QUEUES for p in range(10)]
    try:
        messages = [json.loads(m) for key in keys for m in client.lrange(key, 0, -1)]
        # kombu keeps delivered-but-unacked messages as [message, exchange, routing_key].
        messages += [json.loads(v)[0] for v in client.hvals("unacked")]
    finally:
        client.close()
    return {str(m["headers"]["id"]) for m in messages if (m.get("headers") or {}).get("id")}


def _stale_running(out: Reconciled) -> None:
    cutoff = utcnow() - timedelta(seconds=stale_after_s())
    with session() as s:
        rows = s.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.worker, Job.cancel_requested).where(
                Job.state == State.running, Job.heartbeat_at < cutoff
            )
        ).all()
    for job_id, attempts, max_attempts, worker, cancel in rows:
        reason = f"worker {worker} stopped heartbeating (> {stale_after_s():.0f} s)"
        if attempts < max_attempts and not cancel:
            if requeue(
                job_id,
                from_states=(State.running,),
                reason=f"{reason}: re-queued (attempt {attempts} of {max_attempts} was lost)",
            ):
                out.requeued_stale.append(job_id)
            continue
        with session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == State.running, Job.heartbeat_at < cutoff)
                .values(
                    state=State.cancelled if cancel else State.failed,
                    finished_at=utcnow(),
                    error=None if cancel else f"{reason}; gave up after {attempts} attempts",
                )
            )
            if res.rowcount == 1:  # type: ignore[attr-defined]
                end = "cancelled" if cancel else "failed"
                s.add(JobEvent(job_id=job_id, level="error", message=f"{reason}: {end}"))
                out.failed_stale.append(job_id)


def _lost_queued(out: Reconciled) -> None:
    cutoff = utcnow() - timedelta(seconds=requeue_grace_s())
    with session() as s:
        rows = s.execute(
            select(Job.id, Job.task_id).where(Job.state == State.queued, Job.queued_at < cutoff)
        ).all()
    if not rows:
        return
    present = broker_task_ids()
    for job_id, task_id in rows:
        if task_id in present:
            continue
        if requeue(
            job_id,
            from_states=(State.queued,),
            reason="its message was not in Redis (flushed or restarted?): re-sent",
        ):
            out.resent_lost.append(job_id)


def reconcile() -> Reconciled:
    """Re-queue jobs of dead workers and re-send lost messages; what was repaired."""
    out = Reconciled()
    _stale_running(out)
    _lost_queued(out)
    return out
