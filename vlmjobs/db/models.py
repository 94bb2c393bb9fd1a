"""The tables: jobs and what a job leaves behind (events, metrics, checkpoints, outputs, regions).

The database is the source of truth for job state; the Celery message only
says "look at job N". Times are naive UTC (``utcnow()``): SQLite keeps no time
zone, and one convention on both backends keeps comparisons honest.
Artifact paths (checkpoints) are RELATIVE to ``settings.artifacts_root()`` so
that hosts which mount the root at different places can share one database.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class State(enum.StrEnum):
    """A job's state, stored as its string. Only ``db/lifecycle.py`` writes it."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = (State.succeeded, State.failed, State.cancelled)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=State.queued, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by every claim and never reset (retry resets attempts): the token that
    # every write of the running attempt is conditional on (db/lifecycle.py).
    fence: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    queue: Mapped[str] = mapped_column(String(32))
    task_id: Mapped[str | None] = mapped_column(String(64))  # the latest Celery message sent
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))  # Celery hostname of the claimant
    gpu: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)  # one line: type and message
    traceback: Mapped[str | None] = mapped_column(Text)
    # For scheduled infer runs: which schedule created this job.
    schedule_id: Mapped[int | None] = mapped_column(Integer, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)  # last (re)queue
    started_at: Mapped[datetime | None] = mapped_column(DateTime)  # latest attempt
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="events")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_name_step", "job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)  # relative to the artifact root
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Output(Base):
    """One processed item of a job; ``item_key`` (a content hash) makes resume idempotent."""

    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "item_key", name="uq_outputs_job_item"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    item_key: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    raw_text: Mapped[str | None] = mapped_column(Text)
    parse_status: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    image_w: Mapped[int | None] = mapped_column(Integer)
    image_h: Mapped[int | None] = mapped_column(Integer)
    input_w: Mapped[int | None] = mapped_column(Integer)
    input_h: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    generated_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    # Video rows: the seconds of the video the row covers (a window; a frame: t_start == t_end).
    t_start: Mapped[float | None] = mapped_column(Float)
    t_end: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    regions: Mapped[list[Region]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Region(Base):
    """One region of an output: box xyxy in ORIGINAL image pixels."""

    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id", ondelete="CASCADE"), index=True)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    phrase: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)


class Worker(Base):
    """A worker process, heartbeating while it lives (`vlmjobs workers`)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # Celery hostname
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[str | None] = mapped_column(String(32))
    queues: Mapped[str] = mapped_column(String(200))
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # MiB on the worker's GPU at the last heartbeat; None while CUDA is not in use (CPU,
    # or no job has loaded torch yet). allocated: live tensors; reserved: torch's cache;
    # total: the card (the heartbeat never initializes CUDA just to fill these).
    gpu_mem_allocated_mb: Mapped[int | None] = mapped_column(Integer)
    gpu_mem_reserved_mb: Mapped[int | None] = mapped_column(Integer)
    gpu_mem_total_mb: Mapped[int | None] = mapped_column(Integer)


class Schedule(Base):
    """A named recurring job (`vlmjobs schedule`): the validated spec, when it fires, its runs.

    ``next_run_at`` is the compare-and-set token of firing: a beat fires a schedule
    only by moving it from the value it read (``scheduler/schedules.py``), so two
    beats never both fire one slot.
    """

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # validated at add; a copy of the YAML
    cron: Mapped[str | None] = mapped_column(String(100))  # exactly one of cron, every_s
    every_s: Mapped[float | None] = mapped_column(Float)
    tz: Mapped[str] = mapped_column(String(64), default="UTC")  # IANA name; cron's wall clock
    overlap: Mapped[str] = mapped_column(String(8), default="skip")  # skip | queue
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_run_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    last_fired_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_job_id: Mapped[int | None] = mapped_column(Integer)
    runs: Mapped[int] = mapped_column(Integer, default=0)  # jobs created
    skips: Mapped[int] = mapped_column(Integer, default=0)  # fires skipped for overlap
    last_skip_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ScheduleEvent(Base):
    """What happened to a schedule: fired (job id), skipped, caught up, paused, resumed."""

    __tablename__ = "schedule_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[int] = mapped_column(
        ForeignKey("schedules.id", ondelete="CASCADE"), index=True
    )
    time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")
    message: Mapped[str] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(Integer)
