"""The run wrapper: the one place that moves a job out of queued/running.

Delivery is at-least-once (acks_late; reconcile re-sends), so the wrapper
makes execution at-most-once-at-a-time: it claims the row with one
conditional UPDATE (queued, or running with a stale heartbeat) and skips the
message when the claim fails. Outcomes:

| what happened                          | new state                          |
| -------------------------------------- | ---------------------------------- |
| recipe returned                        | succeeded (result stored)          |
| cancel requested                       | cancelled (outputs kept)           |
| worker got SIGTERM                     | queued again, new message; the attempt is not counted |
| attempt ran past spec.time_limit_s     | failed                             |
| retryable error, attempts left         | queued again, new message          |
| any other error                        | failed, with traceback             |
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update

from vlmjobs.db.models import Job, JobEvent, State, utcnow
from vlmjobs.db.session import session
from vlmjobs.errors import VlmjobsError
from vlmjobs.kinds import KINDS, resolve
from vlmjobs.scheduler.app import stale_after_s
from vlmjobs.scheduler.submit import requeue
from vlmjobs.specs import validate_spec
from vlmjobs.worker.context import WorkerContext, close_logger
from vlmjobs.worker.process import WORKER

logger = logging.getLogger("vlmjobs.worker")
# Errors a second attempt can fix: lost connections, a busy GPU, a full disk freed later.
_RETRYABLE_NAMES = {"OutOfMemoryError", "OperationalError", "InterfaceError", "DisconnectedError"}


@dataclass
class Claim:
    job_id: int
    kind: str
    spec: dict[str, Any]
    attempt: int
    max_attempts: int


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: never for our own (user-fixable) errors or bugs."""
    if isinstance(exc, VlmjobsError):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, MemoryError, OSError)):
        return not isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError))
    return type(exc).__name__ in _RETRYABLE_NAMES


def claim(job_id: int) -> Claim | None:
    """Atomically take the job for this worker; None when another delivery owns or ended it."""
    stale = utcnow() - timedelta(seconds=stale_after_s())
    now = utcnow()
    with session() as s:
        res = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.cancel_requested.is_(False),
                or_(
                    Job.state == State.queued,
                    (Job.state == State.running)
                    & (Job.heartbeat_at < stale)
                    & (Job.attempts < Job.max_attempts),
                ),
            )
            .values(
                state=State.running,
                attempts=Job.attempts + 1,
                worker=WORKER.name,
                gpu=WORKER.gpu,
                heartbeat_at=now,
                started_at=now,
            )
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            job = s.get(Job, job_id)
            if job is not None and job.state == State.queued and job.cancel_requested:
                job.state, job.finished_at = State.cancelled, now  # cancelled mid-requeue
            state = job.state if job else "missing"
            logger.info("job %s: message skipped (job is %s)", job_id, state)
            return None
        job = s.get_one(Job, job_id)
        s.add(JobEvent(job_id=job_id, message=f"attempt {job.attempts} on {WORKER.name}"))
        return Claim(job_id, job.kind, dict(job.spec), job.attempts, job.max_attempts)


def _finish(job_id: int, state: State, message: str, level: str = "info", **values: Any) -> None:
    """Set the end state, only if this worker still owns the running job."""
    with session() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == State.running, Job.worker == WORKER.name)
            .values(state=state, finished_at=utcnow(), heartbeat_at=utcnow(), **values)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            logger.warning("job %s: lost ownership before finishing as %s", job_id, state)
            return
        s.add(JobEvent(job_id=job_id, level=level, message=message))


def _requeue_own(c: Claim, reason: str, *, count_attempt: bool) -> None:
    # Guarded by worker too: a reconcile that already took the job wins.
    values: dict[str, Any] = {} if count_attempt else {"attempts": c.attempt - 1}
    with session() as s:
        owned = s.get(Job, c.job_id)
        mine = owned is not None and owned.worker == WORKER.name
    if not mine or not requeue(c.job_id, from_states=(State.running,), reason=reason, **values):
        logger.warning("job %s: not re-queued (no longer ours)", c.job_id)


def _on_result(c: Claim, ctx: WorkerContext, result: Any) -> None:
    result = result if isinstance(result, dict) else {"value": result}
    if ctx.cancel_requested():
        _finish(c.job_id, State.cancelled, "cancelled; outputs kept", result=result)
    elif WORKER.flags.shutdown.is_set() and ctx.stop_seen:
        _requeue_own(c, "worker shutting down: re-queued to resume", count_attempt=False)
    elif WORKER.flags.time_limit.is_set() and ctx.stop_seen:
        limit = c.spec.get("time_limit_s")
        _finish(
            c.job_id,
            State.failed,
            "time limit exceeded",
            "error",
            result=result,
            error=f"time limit exceeded (time_limit_s={limit}): raise it or split the job",
        )
    else:
        _finish(c.job_id, State.succeeded, "succeeded", result=result)


def _on_error(c: Claim, ctx: WorkerContext, exc: BaseException) -> None:
    tb = traceback.format_exc()
    error = f"{type(exc).__name__}: {exc}"
    ctx.log.error("attempt %s failed: %s\n%s", c.attempt, error, tb)
    if ctx.cancel_requested():
        _finish(c.job_id, State.cancelled, f"cancelled ({error})", error=error)
    elif WORKER.flags.shutdown.is_set() or isinstance(exc, (KeyboardInterrupt, SystemExit)):
        _requeue_own(c, f"worker shutting down ({error}): re-queued", count_attempt=False)
    elif retryable(exc) and c.attempt < c.max_attempts:
        _requeue_own(c, f"attempt {c.attempt} failed ({error}): retrying", count_attempt=True)
    else:
        _finish(c.job_id, State.failed, error, "error", error=error, traceback=tb)


def run_job(job_id: int) -> None:
    """Run one delivery of ``vlmjobs.<kind>(job_id)`` (the Celery task body)."""
    c = claim(job_id)
    if c is None:
        return
    ctx = WorkerContext(c.job_id, c.attempt, WORKER.device, WORKER.flags)
    WORKER.start_job(c.job_id, c.spec.get("time_limit_s"))
    try:
        ctx.log.info("attempt %s of %s on %s", c.attempt, c.max_attempts, WORKER.name)
        spec = validate_spec(c.kind, c.spec)
        result = resolve(KINDS[c.kind].run)(spec, ctx)
        _on_result(c, ctx, result)
    except BaseException as exc:  # every outcome must reach the database
        _on_error(c, ctx, exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
    finally:
        WORKER.end_job()
        ctx.log.info("attempt %s ended", c.attempt)
        close_logger(ctx.log)
