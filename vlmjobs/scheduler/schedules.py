"""Schedules: named recurring jobs stored in the database, fired by beat (`vlmjobs schedule`).

A schedule holds a validated spec (a copy: the YAML may move), a cron
expression in a time zone or a fixed interval, and an overlap policy. Beat
(``schedule_beat.py``) calls :func:`fire_due` every few seconds; every run is an
ordinary job with ``jobs.schedule_id`` set.

Firing is exactly-once per slot across any number of beat processes: a beat
moves ``next_run_at`` from the value it read to the next FUTURE slot with one
conditional UPDATE; only the process whose UPDATE hits a row goes on. In the
same transaction it checks for a run still queued or running (overlap: ``skip``
records a skip, ``queue`` submits anyway) and inserts the job row. The message
is sent after commit; a beat that dies in between leaves a queued job without a
message, which ``reconcile`` re-sends. A beat that was down for many slots
fires once (a catch-up run, with an event saying how many were missed).

Runs label only what is new: a scheduled job's ``done_keys`` include the item
keys (content hashes) that other runs of its schedule labeled ``ok``
(:func:`earlier_run_keys`); failed items are retried by the next run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from vlmjobs.db import lifecycle
from vlmjobs.db.lifecycle import Message
from vlmjobs.db.models import Job, Output, Schedule, ScheduleEvent, State, utcnow
from vlmjobs.db.session import session
from vlmjobs.errors import ScheduleNotFound, VlmjobsError
from vlmjobs.kinds import KINDS
from vlmjobs.scheduler.schedule_time import (
    next_cron,
    next_every,
    parse_cron,
    parse_every,
    slots_between,
    zone,
)
from vlmjobs.scheduler.submit import dispatch, job_fields
from vlmjobs.specs import load_plugins, spec_class
from vlmjobs.specs.common import JobSpec

logger = logging.getLogger("vlmjobs.schedules")
OVERLAP = ("skip", "queue")
ACTIVE = (State.queued, State.running)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MISSED_CAP = 1000  # missed slots are counted up to this, for the catch-up event


@dataclass
class When:
    """A validated timing: exactly one of ``cron`` / ``every_s``, and the time zone."""

    cron: str | None
    every_s: float | None
    tz: str


@dataclass
class Run:
    """The outcome of one fire: a job (to send after commit) or a skip."""

    schedule: str
    job_id: int | None
    skipped_for: int | None = None  # the still-active job a skip deferred to
    send: Message | None = None


def check_when(
    cron: str | None, every: str | None, tz: str
) -> tuple[When | None, list[tuple[str, str]]]:
    """Validate the timing options; (When, []) or (None, every (option, problem))."""
    problems: list[tuple[str, str]] = []
    if (cron is None) == (every is None):
        problems.append(("--cron/--every", "give exactly one of --cron EXPR or --every DURATION"))
    every_s = None
    try:
        tzinfo = zone(tz)
    except ValueError as e:
        problems.append(("--tz", str(e)))
        tzinfo = zone("UTC")
    if cron is not None:
        try:
            next_cron(parse_cron(cron), utcnow(), tzinfo)  # parses, and proves it ever fires
        except ValueError as e:
            problems.append(("--cron", str(e)))
    if every is not None:
        try:
            every_s = parse_every(every)
        except ValueError as e:
            problems.append(("--every", str(e)))
    return (None if problems else When(cron, every_s, tz)), problems


def check_name(name: str) -> list[tuple[str, str]]:
    if NAME.match(name):
        return []
    return [("NAME", f"schedule name {name!r}: use letters, digits, '.', '_' or '-' (up to 100)")]


def first_slot(when: When, now: datetime) -> datetime:
    """The first fire time after ``now``: the next cron slot, or one interval from now."""
    if when.cron is not None:
        return next_cron(parse_cron(when.cron), now, zone(when.tz))
    assert when.every_s is not None
    return next_every(now, when.every_s, now)


def _next_slot(sched: Schedule, now: datetime) -> datetime:
    if sched.cron is not None:
        return next_cron(parse_cron(sched.cron), now, zone(sched.tz))
    assert sched.every_s is not None
    return next_every(sched.next_run_at, sched.every_s, now)


def add(name: str, spec: JobSpec, when: When, overlap: str = "skip") -> Schedule:
    """Store a new schedule (name, timing and spec already validated); it fires from its
    next slot on. VlmjobsError when the name is taken."""
    if overlap not in OVERLAP:
        raise VlmjobsError(f"overlap {overlap!r}: choose one of {list(OVERLAP)}")
    now = utcnow()
    with session() as s:
        if s.scalar(select(Schedule.id).where(Schedule.name == name)) is not None:
            raise VlmjobsError(
                f"schedule {name!r} exists: `vlmjobs schedule rm {name}` first or pick another name"
            )
        sched = Schedule(
            name=name,
            kind=spec.kind,
            spec=spec.model_dump(mode="json"),
            cron=when.cron,
            every_s=when.every_s,
            tz=when.tz,
            overlap=overlap,
            paused=False,
            next_run_at=first_slot(when, now),
            runs=0,
            skips=0,
        )
        s.add(sched)
        s.flush()
        s.add(ScheduleEvent(schedule_id=sched.id, message=f"added: {describe(sched)}"))
        return sched


def describe(sched: Schedule) -> str:
    """'cron 0 2 * * * (Europe/Berlin)' or 'every 600s'."""
    if sched.cron is not None:
        return f"cron {sched.cron} ({sched.tz})"
    return f"every {sched.every_s:g}s"


def get(s: Session, name: str) -> Schedule:
    sched = s.scalar(select(Schedule).where(Schedule.name == name))
    if sched is None:
        raise ScheduleNotFound(f"no schedule {name!r}: see `vlmjobs schedule ls` for the names")
    return sched


def schedule_id(name: str) -> int:
    """The id of the schedule called ``name``; ScheduleNotFound otherwise."""
    with session() as s:
        return get(s, name).id


def set_paused(name: str, paused: bool) -> Schedule:
    """Pause, or resume from the next FUTURE slot (slots passed while paused are not run)."""
    with session() as s:
        sched = get(s, name)
        if sched.paused == paused:
            return sched
        sched.paused = paused
        if not paused:
            sched.next_run_at = first_slot(When(sched.cron, sched.every_s, sched.tz), utcnow())
        s.add(ScheduleEvent(schedule_id=sched.id, message="paused" if paused else "resumed"))
        return sched


def remove(name: str) -> int:
    """Delete a schedule and its events; its jobs and outputs stay. How many runs it had."""
    with session() as s:
        sched = get(s, name)
        runs = sched.runs
        s.delete(sched)
        return runs


def run_now(name: str) -> Run:
    """Fire now, outside the timing (next_run_at unchanged), under the overlap policy."""
    now = utcnow()
    with session() as s:
        sched = get(s, name)
        # Write first: it takes the row (PostgreSQL) or database (SQLite) lock, so a beat
        # firing at the same moment is serialized with this check-and-insert.
        s.execute(update(Schedule).where(Schedule.id == sched.id).values(last_fired_at=now))
        run = _start_run(s, sched, now, "run-now")
    _send(run)
    return run


def fire_due(now: datetime | None = None) -> list[Run]:
    """Fire every unpaused schedule whose next_run_at has come; what this process fired.

    Safe to call from any number of processes at once: each slot fires once.
    """
    now = now or utcnow()
    with session() as s:
        due = s.execute(
            select(Schedule.id, Schedule.next_run_at)
            .where(Schedule.paused.is_(False), Schedule.next_run_at <= now)
            .order_by(Schedule.next_run_at)
        ).all()
    runs = []
    for sid, read_next in due:
        try:
            run = _fire_one(sid, read_next, now)
        except VlmjobsError as e:  # this schedule is broken here; the others still fire
            logger.error("schedule %s: not fired: %s", sid, e)
            continue
        if run is not None:
            _send(run)
            runs.append(run)
    return runs


def _fire_one(sid: int, read_next: datetime, now: datetime) -> Run | None:
    with session() as s:
        sched = s.get(Schedule, sid)
        if sched is None:  # removed since the read
            return None
        new_next = _next_slot(sched, now)
        won = s.execute(
            update(Schedule)
            .where(
                Schedule.id == sid,
                Schedule.next_run_at == read_next,
                Schedule.paused.is_(False),
            )
            .values(next_run_at=new_next, last_fired_at=now)
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return None  # another beat fired this slot, or it was paused or resumed meanwhile
        missed = slots_between(
            parse_cron(sched.cron) if sched.cron else None,
            sched.every_s,
            zone(sched.tz),
            read_next,
            now,
            MISSED_CAP,
        )
        # The slot names the fire: two beats firing one slot would show as two events.
        trigger = f"slot {read_next.isoformat(sep=' ')}"
        if missed:
            more = "+" if missed >= MISSED_CAP else ""
            trigger += f" (catch-up: {missed}{more} later slot(s) also missed, fired once)"
        return _start_run(s, sched, now, trigger)


def _start_run(s: Session, sched: Schedule, now: datetime, trigger: str) -> Run:
    """In the caller's transaction: skip (overlap) or insert the run's job row."""
    active = s.execute(
        select(Job.id, Job.state)
        .where(Job.schedule_id == sched.id, Job.state.in_(ACTIVE))
        .order_by(Job.id.desc())
    ).first()
    if active is not None and sched.overlap == "skip":
        s.execute(
            update(Schedule)
            .where(Schedule.id == sched.id)
            .values(skips=Schedule.skips + 1, last_skip_at=now)
            .execution_options(synchronize_session=False)
        )
        message = f"skipped ({trigger}): run job {active.id} is still {active.state}"
        s.add(ScheduleEvent(schedule_id=sched.id, level="warning", message=message))
        logger.warning("schedule %s: %s", sched.name, message)
        return Run(sched.name, None, skipped_for=active.id)
    msg = lifecycle.insert(s, **_job_fields(sched), schedule_id=sched.id)
    s.execute(
        update(Schedule)
        .where(Schedule.id == sched.id)
        .values(runs=Schedule.runs + 1, last_job_id=msg.job_id)
        .execution_options(synchronize_session=False)
    )
    s.add(
        ScheduleEvent(
            schedule_id=sched.id, job_id=msg.job_id, message=f"{trigger}: job {msg.job_id}"
        )
    )
    logger.info("schedule %s: %s: job %s", sched.name, trigger, msg.job_id)
    return Run(sched.name, msg.job_id, send=msg)


def _job_fields(sched: Schedule) -> dict[str, Any]:
    """The run's job columns, derived from the stored spec exactly as ``submit`` does."""
    load_plugins()  # the kind registry of the process (test kinds come as plugins)
    if sched.kind not in KINDS:
        raise VlmjobsError(f"schedule {sched.name!r} has kind {sched.kind!r}, unknown here")
    stored = dict(sched.spec)  # validated at `schedule add`: construct, do not re-check paths
    fields = job_fields(spec_class(sched.kind).model_construct(**stored), dump=stored)
    fields["name"] = fields["name"] or sched.name
    return fields


def _send(run: Run) -> None:
    dispatch(run.send)


def earlier_run_keys(job_id: int) -> set[str]:
    """Item keys that OTHER runs of this job's schedule labeled ok; empty for a plain job."""
    with session() as s:
        sid = s.scalar(select(Job.schedule_id).where(Job.id == job_id))
        if sid is None:
            return set()
        q = (
            select(Output.item_key)
            .join(Job, Job.id == Output.job_id)
            .where(Job.schedule_id == sid, Job.id != job_id, Output.status == "ok")
            .distinct()
        )
        return set(s.scalars(q))


def labeled_counts(s: Session) -> dict[int, int]:
    """Schedule id -> images labeled ok over all its runs."""
    rows = s.execute(
        select(Job.schedule_id, func.count(Output.id))
        .join(Output, Output.job_id == Job.id)
        .where(Job.schedule_id.is_not(None), Output.status == "ok")
        .group_by(Job.schedule_id)
    ).all()
    return {sid: n for sid, n in rows if sid is not None}
