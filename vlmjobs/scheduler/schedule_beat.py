"""Celery beat's scheduler, extended to fire the database schedules in the beat process.

Each tick of beat calls ``schedules.fire_due()`` right here, not through a worker queue, so
schedules fire while every worker is busy with a long GPU job. Any number of
beats may run (one per host, for availability): firing is a compare-and-set in
the database, so each slot fires once.

VLMJOBS_SCHEDULE_TICK_S (5): the longest beat sleeps between two looks at the
schedules table; it bounds how late a slot fires and how soon a new schedule
is seen.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from celery.beat import PersistentScheduler
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import func, select

from vlmjobs.db.models import Schedule, utcnow
from vlmjobs.db.session import session
from vlmjobs.scheduler.app import _seconds
from vlmjobs.scheduler.schedules import fire_due
from vlmjobs.specs import load_plugins

logger = logging.getLogger("vlmjobs.beat")
# Outages that end by themselves: beat keeps ticking and fires the slot when they do.
TRANSIENT = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    redis.exceptions.ConnectionError,
    KombuOperationalError,
    ConnectionError,
)


def schedule_tick_s() -> float:
    return _seconds("VLMJOBS_SCHEDULE_TICK_S", 5)


def seconds_to_next() -> float | None:
    """Seconds until the earliest unpaused schedule is due (0 if overdue); None if none."""
    with session() as s:
        soonest = s.scalar(select(func.min(Schedule.next_run_at)).where(Schedule.paused.is_(False)))
    if soonest is None:
        return None
    return max(0.0, (soonest - utcnow()).total_seconds())


class ScheduleBeat(PersistentScheduler):
    """``PersistentScheduler`` (beat's own entries, in its shelve file) + database schedules."""

    def setup_schedule(self) -> None:
        super().setup_schedule()
        load_plugins()  # kinds registered by plugins must resolve to their queues here too

    def tick(self, *args: Any, **kwargs: Any) -> float:
        delay = float(super().tick(*args, **kwargs))
        wait = schedule_tick_s()
        try:
            for run in fire_due():
                if run.job_id is not None:
                    logger.info("schedule %s: fired job %s", run.schedule, run.job_id)
                else:
                    logger.warning(
                        "schedule %s: skipped (job %s active)", run.schedule, run.skipped_for
                    )
            soon = seconds_to_next()
            if soon:  # 0 (still overdue) means a broken schedule: do not spin on it
                wait = min(wait, soon)
        except TRANSIENT as e:
            logger.error("schedules not checked (%s): retrying in %.0f s", e, wait)
        return min(delay, wait)
