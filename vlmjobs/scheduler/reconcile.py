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

Every worker runs this at start and every ``VLMJOBS_RECONCILE_S`` (in its
heartbeat thread; beat does not, to keep one mechanism); concurrent runs are
safe because each repair is one compare-and-set in ``db/lifecycle.py`` that
only one process can win, and a take-over re-checks the owner's fence and
heartbeat age in that same UPDATE.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import redis
from sqlalchemy import select

from vlmjobs import settings
from vlmjobs.db import lifecycle
from vlmjobs.db.models import Job, State, utcnow
from vlmjobs.db.session import session
from vlmjobs.scheduler.app import PRIORITY_SEP, QUEUES, requeue_grace_s, stale_after_s
from vlmjobs.scheduler.submit import dispatch


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


# Test hook: called with a job id between the reconciler's read and its write, so a
# test can make a slow reconciler race a live worker (tests/system/test_fencing.py).
between_read_and_write: Callable[[int], None] | None = None


def _stale_running(out: Reconciled) -> None:
    cutoff = utcnow() - timedelta(seconds=stale_after_s())
    with session() as s:
        rows = s.execute(
            select(Job.id, Job.fence, Job.attempts, Job.max_attempts, Job.worker).where(
                Job.state == State.running, Job.heartbeat_at < cutoff
            )
        ).all()
    for job_id, token, attempts, max_attempts, worker in rows:
        if between_read_and_write is not None:
            between_read_and_write(job_id)
        # What was read may be old by now: each write re-checks all of it (state, fence,
        # heartbeat age) in its WHERE, so a worker that beat meanwhile keeps its job.
        reason = f"worker {worker} stopped heartbeating (> {stale_after_s():.0f} s)"
        lost = f"{reason}: re-queued (attempt {attempts} of {max_attempts} was lost)"
        if dispatch(
            lifecycle.requeue_stale(job_id, token, stale_after_s=stale_after_s(), reason=lost)
        ):
            out.requeued_stale.append(job_id)
        elif lifecycle.give_up_stale(job_id, token, stale_after_s=stale_after_s(), reason=reason):
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
    reason = "its message was not in Redis (flushed or restarted?): re-sent"
    for job_id, task_id in rows:
        if task_id not in present and dispatch(
            lifecycle.resend_lost(job_id, task_id, reason=reason)
        ):
            out.resent_lost.append(job_id)


def reconcile() -> Reconciled:
    """Re-queue jobs of dead workers and re-send lost messages; what was repaired."""
    out = Reconciled()
    _stale_running(out)
    _lost_queued(out)
    return out
