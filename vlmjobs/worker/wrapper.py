"""The run wrapper: runs one delivery and decides its outcome; ``db/lifecycle.py`` writes it.

Delivery is at-least-once (acks_late; reconcile re-sends), so the wrapper
makes execution at-most-once-at-a-time: it claims the row (queued, or running
with a stale heartbeat), gets a fenced lease, and skips the message when the
claim fails. Outcomes (each written only while the lease still holds):

| what happened                          | new state                          |
| -------------------------------------- | ---------------------------------- |
| recipe returned                        | succeeded (result stored)          |
| cancel requested                       | cancelled (outputs kept)           |
| worker got SIGTERM                     | queued again, new message; the attempt is not counted |
| attempt ran past spec.time_limit_s     | failed                             |
| retryable error, attempts left         | queued again, new message          |
| any other error                        | failed, with traceback             |
| another attempt took the job over      | nothing written (that one owns it) |
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import traceback
from pathlib import Path
from typing import Any

from vlmjobs.db import lifecycle
from vlmjobs.db.lifecycle import Lease
from vlmjobs.db.models import State
from vlmjobs.errors import JobNotFound, LostOwnership, VlmjobsError
from vlmjobs.kinds import KINDS, resolve
from vlmjobs.scheduler.app import stale_after_s
from vlmjobs.scheduler.submit import dispatch
from vlmjobs.specs import validate_spec
from vlmjobs.worker.context import WorkerContext, close_logger
from vlmjobs.worker.process import WORKER

logger = logging.getLogger("vlmjobs.worker")
# Errors a second attempt can fix: lost connections, a busy GPU, a full disk freed later.
_RETRYABLE_NAMES = {"OutOfMemoryError", "OperationalError", "InterfaceError", "DisconnectedError"}


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed: never for our own (user-fixable) errors or bugs."""
    if isinstance(exc, VlmjobsError) or disk_full(exc):
        return False  # a full disk stays full for a retry seconds later: the user frees it
    if isinstance(exc, (ConnectionError, TimeoutError, MemoryError, OSError)):
        return not isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError))
    return type(exc).__name__ in _RETRYABLE_NAMES


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(exc: OSError, workdir: Path) -> str:
    """What filled up, where, and what to do (the path and its free space named)."""
    path = Path(exc.filename) if exc.filename else workdir
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    where = f"writing {str(path)!r}" if exc.filename else f"under {str(workdir)!r}"
    return (
        f"disk full {where} ({os.strerror(exc.errno or errno.ENOSPC)}; {free / 2**30:.2f} GiB "
        f"free on its filesystem): free space, then `vlmjobs retry` the job (its last "
        "checkpoint and committed outputs are kept)"
    )


def claim(job_id: int) -> Lease | None:
    """Take the job for this worker; None when another delivery owns or ended it."""
    lease = lifecycle.claim(
        job_id, worker=WORKER.name, gpu=WORKER.gpu, stale_after_s=stale_after_s()
    )
    if lease is None:
        logger.info("job %s: message skipped (job is %s)", job_id, _state_or_missing(job_id))
    return lease


def _state_or_missing(job_id: int) -> str:
    try:
        return lifecycle.state_of(job_id)
    except JobNotFound:
        return "missing"


def _finish(
    c: Lease, ctx: WorkerContext, state: State, message: str, level: str = "info", **values: Any
) -> None:
    if not lifecycle.finish(c, state, message, level, **values):
        _stopped(c, ctx, f"its end as {state.value} is dropped")


def _requeue_own(c: Lease, ctx: WorkerContext, reason: str, *, count_attempt: bool) -> None:
    if not dispatch(lifecycle.requeue_own(c, reason, count_attempt=count_attempt)):
        _stopped(c, ctx, "not re-queued")


def _stopped(c: Lease, ctx: WorkerContext, what: str) -> None:
    # The lease can be lost after the recipe's last fenced write (a worker frozen
    # between it and here): the job's log says so, as when a write is refused.
    ctx.log.warning(
        "attempt %s stopped: LostOwnership: another attempt owns the job now; %s", c.attempt, what
    )
    logger.warning("job %s: attempt %s lost ownership; %s", c.job_id, c.attempt, what)


def _on_result(c: Lease, ctx: WorkerContext, result: Any) -> None:
    result = result if isinstance(result, dict) else {"value": result}
    if ctx.lost():
        _stopped(c, ctx, "its result is dropped")
    elif ctx.cancel_requested():
        _finish(c, ctx, State.cancelled, "cancelled; outputs kept", result=result)
    elif WORKER.flags.shutdown.is_set() and ctx.stop_seen:
        _requeue_own(c, ctx, "worker shutting down: re-queued to resume", count_attempt=False)
    elif WORKER.flags.time_limit.is_set() and ctx.stop_seen:
        limit = c.spec.get("time_limit_s")
        _finish(
            c,
            ctx,
            State.failed,
            "time limit exceeded",
            "error",
            result=result,
            error=f"time limit exceeded (time_limit_s={limit}): raise it or split the job",
        )
    else:
        _finish(c, ctx, State.succeeded, "succeeded", result=result)


def _on_error(c: Lease, ctx: WorkerContext, exc: BaseException) -> None:
    tb = traceback.format_exc()
    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, LostOwnership) or ctx.lost():
        ctx.log.warning("attempt %s stopped: %s", c.attempt, error)
        return
    ctx.log.error("attempt %s failed: %s\n%s", c.attempt, error, tb)
    if ctx.cancel_requested():
        _finish(c, ctx, State.cancelled, f"cancelled ({error})", error=error)
    elif WORKER.flags.shutdown.is_set() or isinstance(exc, (KeyboardInterrupt, SystemExit)):
        _requeue_own(c, ctx, f"worker shutting down ({error}): re-queued", count_attempt=False)
    elif retryable(exc) and c.attempt < c.max_attempts:
        _requeue_own(c, ctx, f"attempt {c.attempt} failed ({error}): retrying", count_attempt=True)
    elif isinstance(exc, OSError) and disk_full(exc):
        full = disk_full_error(exc, ctx.workdir)
        _finish(c, ctx, State.failed, full, "error", error=full, traceback=tb)
    else:
        _finish(c, ctx, State.failed, error, "error", error=error, traceback=tb)


def run_job(job_id: int) -> None:
    """Run one delivery of ``vlmjobs.<kind>(job_id)`` (the Celery task body)."""
    c = claim(job_id)
    if c is None:
        return
    ctx = WorkerContext(c, WORKER.device, WORKER.flags)
    WORKER.start_job(c, c.spec.get("time_limit_s"))
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
