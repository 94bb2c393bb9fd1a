"""Helpers of the fencing tests (tests/system/test_fencing.py, tests/jobs/test_train_fencing.py)."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, make_url, select, text

from vlmjobs import settings
from vlmjobs.db.models import Job, JobEvent
from vlmjobs.db.session import session


def job_row(job_id: int) -> Job:
    with session() as s:
        return s.get_one(Job, job_id)


def count(model: type, job_id: int) -> int:
    with session() as s:
        return int(s.scalar(select(func.count()).where(model.job_id == job_id)) or 0)


def events(job_id: int) -> list[str]:
    with session() as s:
        q = select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return list(s.scalars(q))


def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def row_locked(job_id: int) -> bool:
    """Whether some transaction holds the job's row (SQLite: the write lock) right now."""
    url = make_url(settings.db_url())
    if url.get_backend_name() == "sqlite":
        con = sqlite3.connect(str(url.database), timeout=0.2, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            con.close()
    try:
        with session() as s:
            s.execute(text("SET LOCAL lock_timeout = '200ms'"))
            s.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        return False
    except Exception:  # LockNotAvailable, wrapped by SQLAlchemy
        return True


def freeze(worker: object, job_id: int) -> None:
    """SIGSTOP the worker at a moment it holds no transaction (a frozen write would block
    every other writer, which is what the reconciler's lock timeout is for, not this test)."""
    for _ in range(50):
        worker.kill(signal.SIGSTOP)  # type: ignore[attr-defined]
        if not row_locked(job_id):
            return
        worker.kill(signal.SIGCONT)  # type: ignore[attr-defined]
        time.sleep(0.03)
    raise AssertionError("the worker was inside a transaction at every try")


@pytest.fixture
def thaw() -> Iterator[list[object]]:
    """Workers to SIGCONT at teardown, so a failed test does not leave one frozen."""
    frozen: list[object] = []
    yield frozen
    for w in frozen:
        w.kill(signal.SIGCONT)  # type: ignore[attr-defined]
