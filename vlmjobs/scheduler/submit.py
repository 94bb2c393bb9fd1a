"""Producer side: create jobs, send their messages, cancel and retry them.

The job row is committed BEFORE its message is sent, so a worker never sees an
id it cannot read; a message lost between the two is re-sent by ``reconcile``.
"""

from __future__ import annotations

from typing import Any

from vlmjobs.db import lifecycle
from vlmjobs.db.lifecycle import Message
from vlmjobs.db.models import Job
from vlmjobs.db.session import session
from vlmjobs.errors import VlmjobsError
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


def dispatch(msg: Message | None) -> bool:
    """Publish a message a lifecycle transition returned (after its commit); False for None."""
    if msg is None:
        return False
    send(msg.job_id, msg.kind, msg.queue, msg.priority, msg.task_id)
    return True


def submit(spec: JobSpec, *, schedule_id: int | None = None) -> int:
    """Insert a queued job for a validated spec, then send its message; the job id."""
    with session() as s:
        msg = lifecycle.insert(s, **job_fields(spec), schedule_id=schedule_id)
    try:
        dispatch(msg)
    except Exception as e:  # kombu/redis raise several types; the row is already committed
        raise VlmjobsError(
            f"job {msg.job_id} was saved but the broker is unreachable ({e}); check "
            "VLMJOBS_BROKER_URL: once Redis is back a worker re-sends it (reconcile)"
        ) from e
    return msg.job_id


def job_fields(spec: JobSpec, dump: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job row's columns a validated spec decides (submit and schedules alike);
    ``dump`` is the spec as stored, when the caller already has it."""
    return {
        "kind": spec.kind,
        "name": spec.name,
        "spec": dump if dump is not None else spec.model_dump(mode="json"),
        "max_attempts": spec.max_attempts,
        "priority": spec.priority,
        "queue": spec.queue or KINDS[spec.kind].queue,
    }


def cancel(job_id: int) -> str:
    """Cancel a job: a queued one at once, a running one at its next step. The new state."""
    state, revoke = lifecycle.cancel(job_id)
    if revoke:
        # Drops the message at the worker; the database already says cancelled,
        # so a message that slips through is skipped anyway.
        get_app().control.revoke(revoke)
    return state


def retry(job_id: int) -> None:
    """Put a failed or cancelled job back in the queue with a fresh attempt budget."""
    dispatch(lifecycle.retry(job_id))


def get_job(job_id: int) -> Job:
    with session() as s:
        return lifecycle.get(s, job_id)
