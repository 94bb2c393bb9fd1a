"""The worker's implementation of ``jobs.context.JobContext``: what a recipe records while it runs.

Writes are small transactions of their own, so a crash loses at most the
current step. Progress is throttled to one database write per second (a
recipe may call it every batch); cancel flags are polled at most once a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from vlmjobs import settings
from vlmjobs.db.models import Checkpoint, Job, JobEvent, Metric, Output, Region, utcnow
from vlmjobs.db.session import get_engine, session
from vlmjobs.jobs.context import OutputRecord

T = TypeVar("T")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
# The worker's resident objects (a loaded base model): one key at a time, because a
# 12 GB card holds one base model; a job wanting another evicts the previous one.
_resident: dict[str, Any] = {}


class StopFlags:
    """Why a running job should stop; set by signal handlers and the heartbeat thread."""

    def __init__(self) -> None:
        self.shutdown = threading.Event()  # SIGTERM: the worker is going away
        self.time_limit = threading.Event()  # the attempt ran past spec.time_limit_s


def workdir_for(job_id: int) -> Path:
    return settings.artifacts_root() / "jobs" / str(job_id)


def job_logger(job_id: int, workdir: Path) -> logging.Logger:
    """A logger writing to ``workdir/job.log`` (what `vlmjobs logs` shows)."""
    log = logging.getLogger(f"vlmjobs.job.{job_id}")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    handler = logging.FileHandler(workdir / "job.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


class WorkerContext:
    """One attempt of one job, as seen by its recipe (see ``jobs/context.py`` for the contract)."""

    def __init__(self, job_id: int, attempt: int, device: str, flags: StopFlags) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.device = device
        self.workdir = workdir_for(job_id)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = job_logger(job_id, self.workdir)
        self.flags = flags
        self.stop_seen = False  # the recipe was told to stop (it may have returned early)
        self._last_progress = 0.0
        self._last_cancel_poll = 0.0
        self._cancelled = False

    def progress(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if now - self._last_progress < 1.0 and done != total:
            return
        self._last_progress = now
        values: dict[str, Any] = {"progress_done": done, "heartbeat_at": utcnow()}
        if total is not None:
            values["progress_total"] = total
        with session() as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(**values))

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        now = utcnow()
        with session() as s:
            s.add_all(
                Metric(job_id=self.job_id, step=step, name=k, value=float(v), time=now)
                for k, v in values.items()
            )

    def event(self, message: str, level: str = "info") -> None:
        self.log.log(_LEVELS.get(level, logging.ERROR), message)
        with session() as s:
            s.add(JobEvent(job_id=self.job_id, level=level, message=message))

    def cancel_requested(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_cancel_poll >= 1.0:
            self._last_cancel_poll = now
            with session() as s:
                self._cancelled = bool(
                    s.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                )
        return self._cancelled

    def should_stop(self) -> bool:
        stop = (
            self.flags.shutdown.is_set()
            or self.flags.time_limit.is_set()
            or self.cancel_requested()
        )
        self.stop_seen = self.stop_seen or stop
        return stop

    def _relative(self, path: Path) -> str:
        root = settings.artifacts_root().resolve()
        full = Path(path).resolve()
        if not full.is_relative_to(root):
            raise ValueError(
                f"checkpoint {str(path)!r} is outside the artifact root {str(root)!r}: "
                "write checkpoints under ctx.workdir"
            )
        return str(full.relative_to(root))

    def record_checkpoint(
        self, step: int, path: Path, metrics: dict[str, float], is_best: bool = False
    ) -> None:
        rel = self._relative(path)
        with session() as s:
            if is_best:
                s.execute(
                    update(Checkpoint).where(Checkpoint.job_id == self.job_id).values(is_best=False)
                )
            s.add(
                Checkpoint(
                    job_id=self.job_id, step=step, path=rel, metrics=metrics, is_best=is_best
                )
            )

    def forget_checkpoint(self, path: Path) -> None:
        rel = self._relative(path)
        with session() as s:
            s.execute(
                delete(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.path == rel)
            )

    def done_keys(self) -> set[str]:
        from vlmjobs.scheduler.schedules import earlier_run_keys

        with session() as s:
            keys = set(s.scalars(select(Output.item_key).where(Output.job_id == self.job_id)))
        # A scheduled run also skips what other runs of its schedule labeled.
        return keys | earlier_run_keys(self.job_id)

    def save_outputs(self, outputs: Iterable[OutputRecord]) -> int:
        dialect = get_engine().dialect.name
        ins = postgresql.insert if dialect == "postgresql" else sqlite.insert
        new = 0
        with session() as s:
            for rec in outputs:
                row = _output_row(self.job_id, rec)
                stmt = (
                    ins(Output)
                    .values(**row)
                    .on_conflict_do_nothing(index_elements=["job_id", "item_key"])
                    .returning(Output.id)
                )
                output_id = s.scalar(stmt)
                if output_id is None:  # saved by an earlier attempt (or a duplicate in this batch)
                    continue
                new += 1
                if rec.regions:
                    s.execute(
                        insert(Region),
                        [{"output_id": output_id, **_region_row(r)} for r in rec.regions],
                    )
        return new

    def resident(self, key: str, factory: Callable[[], T]) -> T:
        if key not in _resident:
            for old in list(_resident):
                self.log.info("evicting resident %s to load %s", old, key)
                del _resident[old]
            _free_gpu_cache()
            _resident[key] = factory()
        return _resident[key]  # type: ignore[no-any-return]


def _output_row(job_id: int, rec: OutputRecord) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "item_key": rec.item_key,
        "source": rec.source,
        "status": rec.status,
        "raw_text": rec.raw_text,
        "parse_status": rec.parse_status,
        "error": rec.error,
        "image_w": rec.image_w,
        "image_h": rec.image_h,
        "input_w": rec.input_w,
        "input_h": rec.input_h,
        "prompt_tokens": rec.prompt_tokens,
        "generated_tokens": rec.generated_tokens,
        "latency_ms": rec.latency_ms,
        "extra": rec.extra,
        "created_at": utcnow(),
    }


def _region_row(r: Any) -> dict[str, Any]:
    return {"x1": r.x1, "y1": r.y1, "x2": r.x2, "y2": r.y2, "phrase": r.phrase, "score": r.score}


def _free_gpu_cache() -> None:
    import sys

    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is not None and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()
