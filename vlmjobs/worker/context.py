"""The worker's ``recipes.context.JobContext``: what a recipe records while it runs.

Writes are small transactions of their own, so a crash loses at most the
current step. Every one is fenced (``lifecycle.owned``): once this attempt has
lost the job to another, a write raises ``LostOwnership`` and lands nothing,
and ``publish`` renames no artifact into place. Progress is throttled to one
database write per second (a recipe may call it every batch); the cancel flag
is read at every ``should_stop``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from vlmjobs import settings
from vlmjobs.db import lifecycle
from vlmjobs.db.lifecycle import Lease
from vlmjobs.db.models import Checkpoint, JobEvent, Metric, Output, Region, utcnow
from vlmjobs.db.session import get_engine, session
from vlmjobs.errors import LostOwnership
from vlmjobs.recipes.context import OutputRecord

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
        self.lost = threading.Event()  # the heartbeat found another attempt owns the job


def workdir_for(job_id: int) -> Path:
    return settings.artifacts_root() / "jobs" / str(job_id)


def job_logger(job_id: int, workdir: Path) -> logging.Logger:
    """A logger writing to ``workdir/job.log`` (what `vlmjobs logs` shows)."""
    log = logging.getLogger(f"vlmjobs.job.{job_id}")
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    handler = _JobLogHandler(workdir / "job.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


class _JobLogHandler(logging.FileHandler):
    """A job.log that cannot be written (disk full) says so once on the worker's log,
    instead of a "--- Logging error ---" traceback per line; the job's error says why."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self._report(sys.exc_info()[1])

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as e:  # the buffered lines cannot reach the disk either
            self._report(e)

    def close(self) -> None:
        try:
            super().close()
        except OSError as e:
            self._report(e)

    def _report(self, error: BaseException | None) -> None:
        if not self.failed:
            self.failed = True
            logging.getLogger("vlmjobs.worker").warning(
                "cannot write %s (%s): further job log lines are dropped",
                self.baseFilename,
                error,
            )


def close_logger(log: logging.Logger) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


class WorkerContext:
    """One attempt of one job, as seen by its recipe (the contract: ``recipes/context.py``)."""

    def __init__(self, lease: Lease, device: str, flags: StopFlags) -> None:
        self.lease = lease
        self.job_id = lease.job_id
        self.attempt = lease.attempt
        self.device = device
        self.workdir = workdir_for(lease.job_id)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = job_logger(lease.job_id, self.workdir)
        self.flags = flags
        self.stop_seen = False  # the recipe was told to stop (it may have returned early)
        self._last_progress = 0.0
        self._cancelled = False

    def progress(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if now - self._last_progress < 1.0 and done != total:
            return
        self._last_progress = now
        lifecycle.progress(self.lease, done, total)

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        now = utcnow()
        with lifecycle.owned(self.lease) as s:
            s.add_all(
                Metric(job_id=self.job_id, step=step, name=k, value=float(v), time=now)
                for k, v in values.items()
            )

    def event(self, message: str, level: str = "info") -> None:
        self.log.log(_LEVELS.get(level, logging.ERROR), message)
        with lifecycle.owned(self.lease) as s:
            s.add(JobEvent(job_id=self.job_id, level=level, message=message))

    def cancel_requested(self) -> bool:
        # Read at every call (one primary-key lookup): a recipe asks once per step or
        # batch, so a cancel overshoots by at most the batch in flight.
        if not self._cancelled:
            self._cancelled = lifecycle.cancel_requested(self.job_id)
        return self._cancelled

    def output_counts(self) -> dict[str, int]:
        with session() as s:
            rows = s.execute(
                select(Output.status, func.count())
                .where(Output.job_id == self.job_id)
                .group_by(Output.status)
            ).all()
        return {status: int(n) for status, n in rows}

    def lost(self) -> bool:
        """Whether the heartbeat found that another attempt owns the job now."""
        return self.flags.lost.is_set()

    def should_stop(self) -> bool:
        stop = (
            self.flags.shutdown.is_set()
            or self.flags.time_limit.is_set()
            or self.lost()
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
        with lifecycle.owned(self.lease) as s:
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
        with lifecycle.owned(self.lease) as s:
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
        with lifecycle.owned(self.lease) as s:
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

    def publish(self, tmp: Path, final: Path) -> Path:
        """Rename the finished ``tmp`` to ``final`` (replacing it) while this attempt owns
        the job; otherwise delete ``tmp`` and raise LostOwnership (nothing shared touched).

        The renames run inside the fenced transaction, so a take-over cannot slip in
        between the ownership check and the rename.
        """
        try:
            with lifecycle.owned(self.lease):
                old = swap_in(tmp, final)
        except LostOwnership:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def add_sources(self, aliases: Iterable[tuple[str, str]]) -> None:
        with lifecycle.owned(self.lease) as s:
            for key, source in aliases:
                row = s.scalar(
                    select(Output).where(Output.job_id == self.job_id, Output.item_key == key)
                )
                if row is None:  # labeled by another run of the schedule: not this job's row
                    continue
                sources = list(row.extra.get("sources") or [row.source])
                if source not in sources:  # a resumed attempt reads the same files again
                    row.extra = {**row.extra, "sources": [*sources, source]}

    def resident(self, key: str, factory: Callable[[], T]) -> T:
        if key not in _resident:
            for old in list(_resident):
                self.log.info("evicting resident %s to load %s", old, key)
                del _resident[old]
            _free_gpu_cache()
            _resident[key] = factory()
        return _resident[key]  # type: ignore[no-any-return]


def swap_in(tmp: Path, final: Path) -> Path | None:
    """Replace ``final`` by ``tmp`` with renames only: a reader sees the old or the new
    directory whole, never a half-written one. Returns the old one's new name, to delete."""
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    return old


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
        "t_start": rec.t_start,
        "t_end": rec.t_end,
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
