"""Producer side: create jobs, send their messages, cancel and retry them.

The job row is committed BEFORE its message is sent, so a worker never sees an
id it cannot read; a message lost between the two is re-sent by ``reconcile``.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update

from vlmjobs.db.models import TERMINAL, Job, JobEvent, State, utcnow
from vlmjobs.db.session import session
from vlmjobs.errors import JobNotFound, VlmjobsError
from vlmjobs.kinds import KINDS
from vlmjobs.scheduler.app import broker_priority, get_app
from vlmjobs.specs.common import JobSpec


def send(job_id: int, kind: str, queue: str, priority: int, task_id: str) -> None:
    """Publish ``vlmjobs.<kind>(job_id)`` on ``queue``."""
    get_app().send_task(
        f"vlmjobs.{kind}",
        args=[job_id],
        task_id=task_id,
        queue=queue,
        routing_key=queue,
        priority=broker_priority(priority),
    )


def submit(spec: JobSpec, *, schedule_id: int | None = None) -> int:
    """Insert a queued job for a validated spec, then send its message; the job id."""
    kind = KINDS[spec.kind]
    queue = spec.queue or kind.queue
    task_id = str(uuid.uuid4())
    with session() as s:
        job = Job(
            kind=spec.kind,
            name=spec.name,
            spec=spec.model_dump(mode="json"),
            state=State.queued,
            attempts=0,
            max_attempts=spec.max_attempts,
            priority=spec.priority,
            queue=queue,
            task_id=task_id,
            schedule_id=schedule_id,
            progress_done=0,
            cancel_requested=False,
        )
        s.add(job)
        s.flush()
        job_id = job.id
    try:
        send(job_id, spec.kind, queue, spec.priority, task_id)
    except Exception as e:  # kombu/redis raise several types; the row is already committed
        raise VlmjobsError(
            f"job {job_id} was saved but the broker is unreachable ({e}); check "
            "VLMJOBS_BROKER_URL: once Redis is back a worker re-sends it (reconcile)"
        ) from e
    return job_id


def requeue(job_id: int, *, from_states: tuple[str, ...], reason: str, **values: object) -> bool:
    """Move a job in ``from_states`` to queued with a fresh message; False if it was not.

    ``values`` are extra columns to set in the same UPDATE (e.g. attempts).
    """
    task_id = str(uuid.uuid4())
    with session() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(from_states))
            .values(
                state=State.queued,
                task_id=task_id,
                queued_at=utcnow(),
                worker=None,
                heartbeat_at=None,
                **values,
            )
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
        s.add(JobEvent(job_id=job_id, level="warning", message=reason))
        job = s.get_one(Job, job_id)
        kind, queue, priority = job.kind, job.queue, job.priority
    send(job_id, kind, queue, priority, task_id)
    return True


def cancel(job_id: int) -> str:
    """Cancel a job: a queued one at once, a running one at its next step. The new state."""
    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
        if job.state in TERMINAL:
            return job.state
        task_id = job.task_id
        job.cancel_requested = True
        if job.state == State.queued:
            job.state = State.cancelled
            job.finished_at = utcnow()
        s.add(JobEvent(job_id=job_id, message="cancel requested"))
        state = job.state
    if state == State.cancelled and task_id:
        # Drops the message at the worker; the database already says cancelled,
        # so a message that slips through is skipped anyway.
        get_app().control.revoke(task_id)
    return state


def retry(job_id: int) -> None:
    """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
        if job.state not in (State.failed, State.cancelled):
            raise VlmjobsError(
                f"job {job_id} is {job.state}: only failed or cancelled jobs can be retried"
            )
    requeue(
        job_id,
        from_states=(State.failed, State.cancelled),
        reason="retry requested: attempts reset",
        attempts=0,
        cancel_requested=False,
        error=None,
        traceback=None,
        finished_at=None,
    )


def get_job(job_id: int) -> Job:
    with session() as s:
        job = s.scalar(select(Job).where(Job.id == job_id))
        if job is None:
            raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
        return job
