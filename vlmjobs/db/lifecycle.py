"""A job's lifecycle: the one module that writes ``jobs.state`` (and the fence).

Every transition is one compare-and-set UPDATE, so any number of workers,
reconcilers and CLIs may race: exactly one wins, the others see ``None`` or
``False`` and move on.

| from                         | to        | by                                                  |
| ---------------------------- | --------- | --------------------------------------------------- |
| (none)                       | queued    | ``insert`` (submit, a schedule's fire)              |
| queued                       | running   | ``claim`` (fence + 1, attempts + 1)                 |
| running, heartbeat stale     | running   | ``claim`` by a redelivered message (fence + 1)      |
| running, owner's fence       | running   | ``heartbeat``, ``owned`` writes (progress, metrics) |
| running, owner's fence       | succeeded | ``finish``                                          |
| running, owner's fence       | failed    | ``finish`` (error, time limit)                      |
| running, owner's fence       | cancelled | ``finish`` (cancel seen)                            |
| running, owner's fence       | queued    | ``requeue_own`` (SIGTERM: attempt not counted;      |
|                              |           | retryable error: counted)                           |
| running, fence read, stale   | queued    | ``requeue_stale`` (the reconciler; attempts left)   |
| running, fence read, stale   | failed    | ``give_up_stale`` (no attempts left) or cancelled   |
|                              | cancelled | when a cancel was requested                         |
| queued, task id read         | queued    | ``resend_lost`` (new message id)                    |
| queued                       | cancelled | ``cancel`` (running: flag only, the owner finishes) |
| failed, cancelled            | queued    | ``retry`` (attempts reset; the fence never is)      |

Fencing. ``claim`` bumps ``fence`` and hands the value to the worker as its
``Lease``; every later write of that attempt (heartbeat, progress, metric,
event, output, checkpoint row, artifact publish, end state) runs in ``owned``,
whose first statement is ``UPDATE jobs ... WHERE state = 'running' AND fence =
token``. A worker that was paused, declared dead and replaced finds that UPDATE
matching no row and gets ``LostOwnership`` before it writes anything. The
UPDATE also takes the row's write lock until the transaction commits, so a
reconciler's compare-and-set waits for it and then sees a fresh heartbeat.

Nothing here sends Celery messages: transitions into ``queued`` return a
``Message`` that the caller publishes after the commit (``scheduler/submit.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, literal, null, or_, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from vlmjobs.db.models import TERMINAL, Job, JobEvent, State, utcnow
from vlmjobs.db.session import SQLITE_BUSY_MS, session
from vlmjobs.errors import JobNotFound, LostOwnership, VlmjobsError

# How long the reconciler waits for a job's row lock before skipping it this round.
LOCK_WAIT_S = 2.0


@dataclass(frozen=True)
class Message:
    """What to publish after a commit: ``vlmjobs.<kind>(job_id)`` on ``queue``."""

    job_id: int
    kind: str
    queue: str
    priority: int
    task_id: str


@dataclass(frozen=True)
class Lease:
    """One claim of a running job: ``token`` is the fence every write of it checks."""

    job_id: int
    token: int
    attempt: int
    max_attempts: int
    kind: str
    spec: dict[str, Any]


def get(s: Session, job_id: int) -> Job:
    """The job row, or JobNotFound with what to do."""
    job = s.get(Job, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
    return job


def insert(
    s: Session,
    *,
    kind: str,
    name: str | None,
    spec: dict[str, Any],
    max_attempts: int,
    priority: int,
    queue: str,
    schedule_id: int | None = None,
) -> Message:
    """Add a queued job in the caller's transaction; its message, to send after commit."""
    job = Job(
        kind=kind,
        name=name,
        spec=spec,
        state=State.queued,
        attempts=0,
        fence=0,
        max_attempts=max_attempts,
        priority=priority,
        queue=queue,
        task_id=str(uuid.uuid4()),
        schedule_id=schedule_id,
        progress_done=0,
        cancel_requested=False,
    )
    s.add(job)
    s.flush()
    assert job.task_id is not None
    return Message(job.id, kind, queue, priority, job.task_id)


def _stale(stale_after_s: float) -> ColumnElement[bool]:
    return Job.heartbeat_at < utcnow() - timedelta(seconds=stale_after_s)


def claim(job_id: int, *, worker: str, gpu: str | None, stale_after_s: float) -> Lease | None:
    """Take the job for ``worker``; None when another delivery owns or ended it."""
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
                    & _stale(stale_after_s)
                    & (Job.attempts < Job.max_attempts),
                ),
            )
            .values(
                state=State.running,
                attempts=Job.attempts + 1,
                fence=Job.fence + 1,
                worker=worker,
                gpu=gpu,
                heartbeat_at=now,
                started_at=now,
            )
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            # A cancel that arrived while the job waited to be re-queued ends it here.
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == State.queued, Job.cancel_requested)
                .values(state=State.cancelled, finished_at=now)
            )
            return None
        job = s.get_one(Job, job_id)
        s.add(JobEvent(job_id=job_id, message=f"attempt {job.attempts} on {worker}"))
        return Lease(job_id, job.fence, job.attempts, job.max_attempts, job.kind, dict(job.spec))


def state_of(job_id: int) -> str:
    with session() as s:
        return get(s, job_id).state


def _owns(lease: Lease) -> ColumnElement[bool]:
    return and_(Job.id == lease.job_id, Job.state == State.running, Job.fence == lease.token)


@contextmanager
def owned(lease: Lease) -> Iterator[Session]:
    """A transaction that commits only while ``lease`` owns the job (LostOwnership if not).

    Its first statement refreshes the heartbeat under the fence and holds the row's
    write lock until commit: a write of the owner and a take-over never interleave.
    """
    with session() as s:
        res = s.execute(update(Job).where(_owns(lease)).values(heartbeat_at=utcnow()))
        if res.rowcount != 1:  # type: ignore[attr-defined]
            raise LostOwnership(
                f"job {lease.job_id}: attempt {lease.attempt} (fence {lease.token}) no longer "
                "owns it (re-queued or ended elsewhere): stopping without writing"
            )
        yield s


def heartbeat(lease: Lease) -> bool:
    """Refresh the owner's heartbeat; False once the lease is lost."""
    try:
        with owned(lease):
            return True
    except LostOwnership:
        return False


def progress(lease: Lease, done: int, total: int | None) -> None:
    values: dict[str, Any] = {"progress_done": done}
    if total is not None:
        values["progress_total"] = total
    with owned(lease) as s:
        s.execute(update(Job).where(Job.id == lease.job_id).values(**values))


def cancel_requested(job_id: int) -> bool:
    with session() as s:
        return bool(get(s, job_id).cancel_requested)


def finish(lease: Lease, state: State, message: str, level: str = "info", **values: Any) -> bool:
    """End the owner's attempt in ``state``; False (nothing written) once the lease is lost."""
    try:
        with owned(lease) as s:
            s.execute(
                update(Job)
                .where(Job.id == lease.job_id)
                .values(state=state, finished_at=utcnow(), **values)
            )
            s.add(JobEvent(job_id=lease.job_id, level=level, message=message))
        return True
    except LostOwnership:
        return False


def _to_queued(
    s: Session, job_id: int, where: ColumnElement[bool], reason: str, **values: Any
) -> Message | None:
    """In ``s``: move job ``job_id`` to queued if ``where`` holds, with a fresh message id."""
    task_id = str(uuid.uuid4())
    res = s.execute(
        update(Job)
        .where(Job.id == job_id, where)
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
        return None
    s.add(JobEvent(job_id=job_id, level="warning", message=reason))
    job = s.get_one(Job, job_id)
    s.refresh(job)
    return Message(job_id, job.kind, job.queue, job.priority, task_id)


def requeue_own(lease: Lease, reason: str, *, count_attempt: bool) -> Message | None:
    """The owner gives the job back (SIGTERM, a retryable error); None once the lease is lost.

    A SIGTERM does not spend an attempt; the fence still moves on at the next claim.
    """
    values: dict[str, Any] = {} if count_attempt else {"attempts": Job.attempts - 1}
    with session() as s:
        return _to_queued(s, lease.job_id, _owns(lease), reason, **values)


@contextmanager
def _impatient() -> Iterator[Session]:
    """A session whose writes wait at most ``LOCK_WAIT_S`` for a row lock.

    An owner frozen (SIGSTOP, a VM pause) inside its fenced transaction holds the job's
    row lock; the reconciler must skip that job this round, not block its own worker's
    heartbeat thread (and so look dead itself). A timeout raises OperationalError.
    """
    with session() as s:
        dialect = s.get_bind().dialect.name
        if dialect == "postgresql":
            s.execute(text(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'"))
            yield s
            return
        s.execute(text(f"PRAGMA busy_timeout = {int(LOCK_WAIT_S * 1000)}"))
        try:
            yield s
        finally:
            s.execute(text(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}"))


def requeue_stale(job_id: int, token: int, *, stale_after_s: float, reason: str) -> Message | None:
    """The reconciler's take-over: ONE compare-and-set on (running, the fence it read,
    heartbeat older than the limit, attempts left, no cancel). None when any changed,
    or when the owner holds the row (it is alive enough to be mid-write)."""
    where = and_(
        Job.state == State.running,
        Job.fence == token,
        _stale(stale_after_s),
        Job.attempts < Job.max_attempts,
        Job.cancel_requested.is_(False),
    )
    try:
        with _impatient() as s:
            return _to_queued(s, job_id, where, reason)
    except OperationalError:
        return None


def give_up_stale(job_id: int, token: int, *, stale_after_s: float, reason: str) -> str | None:
    """A dead owner's job with no attempts left (or a cancel pending) ends: the state, or None."""
    ended = case((Job.cancel_requested, State.cancelled.value), else_=State.failed.value)
    error = case((Job.cancel_requested, null()), else_=literal(f"{reason}; gave up"))
    try:
        with _impatient() as s:
            return _give_up(s, job_id, token, stale_after_s, ended, error, reason)
    except OperationalError:
        return None


def _give_up(
    s: Session,
    job_id: int,
    token: int,
    stale_after_s: float,
    ended: ColumnElement[str],
    error: ColumnElement[str | None],
    reason: str,
) -> str | None:
    res = s.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state == State.running,
            Job.fence == token,
            _stale(stale_after_s),
            or_(Job.attempts >= Job.max_attempts, Job.cancel_requested),
        )
        .values(state=ended, finished_at=utcnow(), error=error)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return None
    state = get(s, job_id).state
    s.add(JobEvent(job_id=job_id, level="error", message=f"{reason}: {state}"))
    return state


def resend_lost(job_id: int, task_id: str | None, *, reason: str) -> Message | None:
    """A queued job whose message ``task_id`` vanished gets a new one (once, across racers)."""
    with session() as s:
        return _to_queued(
            s, job_id, and_(Job.state == State.queued, Job.task_id == task_id), reason
        )


def cancel(job_id: int) -> tuple[str, str | None]:
    """Request a cancel: a queued job ends now, a running one at its next step.

    Returns the state after the request and the message id to revoke (None if running).
    """
    with session() as s:
        job = get(s, job_id)
        if job.state in TERMINAL:
            return job.state, None
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.not_in(TERMINAL))
            .values(cancel_requested=True)
        )
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == State.queued)
            .values(state=State.cancelled, finished_at=utcnow())
        )
        s.add(JobEvent(job_id=job_id, message="cancel requested"))
        s.refresh(job)
        revoke = job.task_id if res.rowcount == 1 else None  # type: ignore[attr-defined]
        return job.state, revoke


def retry(job_id: int) -> Message:
    """Queue a failed or cancelled job again with a fresh attempt budget."""
    with session() as s:
        job = get(s, job_id)
        msg = _to_queued(
            s,
            job_id,
            Job.state.in_((State.failed, State.cancelled)),
            "retry requested: attempts reset",
            attempts=0,
            cancel_requested=False,
            error=None,
            traceback=None,
            finished_at=None,
        )
        if msg is None:
            raise VlmjobsError(
                f"job {job_id} is {job.state}: only failed or cancelled jobs can be retried"
            )
        return msg
