"""What the dashboard's pages show, read from the database (the same one the CLI reads).

Every function opens its own short session and returns plain values (dicts, lists), so
templates never touch a live ORM object and a page never holds a transaction open.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import desc, func, select
from sqlalchemy.orm import selectinload

from vlmjobs.cli.view import (
    age,
    duration,
    headline_metrics,
    result_lines,
)
from vlmjobs.db.models import (
    TERMINAL,
    Checkpoint,
    Job,
    JobEvent,
    Metric,
    Output,
    Region,
    Worker,
)
from vlmjobs.db.session import session

LOG_TAIL_BYTES = 32_768


def _job_row(j: Job, metrics: dict[int, str]) -> dict[str, Any]:
    total = j.progress_total
    pct = 100.0 * min(j.progress_done, total) / total if total else None
    return {
        "id": j.id,
        "kind": j.kind,
        "name": j.name or "",
        "state": j.state,
        "done": j.progress_done,
        "total": j.progress_total,
        "pct": pct,
        "metrics": metrics.get(j.id, ""),
        "worker": (j.worker or "-").split("@")[0] + (f"/{j.gpu}" if j.gpu else ""),
        "age": age(j.created_at),
        "time": duration(j),
        "ended": j.state in TERMINAL,
        "error": j.error or "",
    }


def job_list(limit: int = 50, state: str | None = None) -> list[dict[str, Any]]:
    """The most recent jobs, newest first."""
    with session() as s:
        q = select(Job).order_by(desc(Job.id)).limit(limit)
        q = q.where(Job.state == state) if state else q
        jobs = list(s.scalars(q))
        return [_job_row(j, headline_metrics(s, jobs)) for j in jobs]


def job_row(job_id: int) -> dict[str, Any] | None:
    """One job's list row (state, progress, headline metrics), or None."""
    with session() as s:
        job = s.get(Job, job_id)
        return None if job is None else _job_row(job, headline_metrics(s, [job]))


def job_page(job_id: int) -> dict[str, Any] | None:
    """One job: its row, result lines, events, checkpoints, metric series, log tail."""
    from vlmjobs.worker.context import workdir_for

    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            return None
        row = _job_row(job, headline_metrics(s, [job]))
        events = s.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(desc(JobEvent.id)).limit(50)
        )
        ckpts = s.scalars(
            select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
        )
        n_outputs = s.scalar(select(func.count(Output.id)).where(Output.job_id == job_id)) or 0
        page = {
            "job": row,
            "spec": job.spec,
            "result": result_lines(job.result, indent=0) if job.result else [],
            "traceback": job.traceback or "",
            "attempts": f"{job.attempts} of {job.max_attempts}",
            "events": [
                {"time": f"{e.time:%Y-%m-%d %H:%M:%S}", "level": e.level, "message": e.message}
                for e in reversed(list(events))
            ],
            "checkpoints": [
                {
                    "step": c.step,
                    "path": c.path,
                    "best": c.is_best,
                    "metrics": ", ".join(f"{k}={v:.4g}" for k, v in (c.metrics or {}).items()),
                }
                for c in ckpts
            ],
            "outputs": n_outputs,
            "series": metric_series(s, job_id),
        }
    page["log"] = log_tail(workdir_for(job_id) / "job.log")
    return page


def metric_series(s: Any, job_id: int) -> dict[str, list[tuple[float, float]]]:
    """``{name: [(step or row number, value), ...]}`` in step order, from the metrics table."""
    rows = s.execute(
        select(Metric.name, Metric.step, Metric.value)
        .where(Metric.job_id == job_id)
        .order_by(Metric.id)
    )
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name, step, value in rows:
        x = step if step is not None else len(series[name])
        series[name].append((float(x), float(value)))

    # The loss first, then the eval metrics, then the rest (lr, grad norm, rates...).
    def order(name: str) -> tuple[int, str]:
        return (0 if name == "loss" else 1 if name.startswith("val_") else 2, name)

    return {k: sorted(series[k]) for k in sorted(series, key=order)}


def log_tail(path: Path) -> str:
    """The last ~32 KB of a job's log, starting at a line boundary."""
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - LOG_TAIL_BYTES))
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[1] if size > LOG_TAIL_BYTES and "\n" in text else text


@dataclass
class GalleryQuery:
    job_id: int
    page: int = 1
    per_page: int = 12
    parse_status: str = ""
    phrase: str = ""


def gallery(q: GalleryQuery) -> dict[str, Any]:
    """One page of a job's outputs (newest last) with their regions, the parse statuses
    present (for the filter), and every region score of the filtered set (histogram)."""
    with session() as s:
        where = [Output.job_id == q.job_id]
        if q.parse_status:
            where.append(func.coalesce(Output.parse_status, Output.status) == q.parse_status)
        if q.phrase:
            hit = select(Region.output_id).where(Region.phrase.ilike(f"%{q.phrase}%"))
            where.append(Output.id.in_(hit))
        total = s.scalar(select(func.count(Output.id)).where(*where)) or 0
        rows = s.scalars(
            select(Output)
            .where(*where)
            .order_by(Output.id)
            .offset((q.page - 1) * q.per_page)
            .limit(q.per_page)
            .options(selectinload(Output.regions))
        ).all()
        statuses = s.execute(
            select(func.coalesce(Output.parse_status, Output.status), func.count(Output.id))
            .where(Output.job_id == q.job_id)
            .group_by(func.coalesce(Output.parse_status, Output.status))
        ).all()
        scores = s.scalars(
            select(Region.score)
            .join(Output, Output.id == Region.output_id)
            .where(*where, Region.score.is_not(None))
        ).all()
        items = [_item(o) for o in rows]
    return {
        "items": items,
        "total": total,
        "pages": max(1, -(-total // q.per_page)),
        "statuses": sorted((str(k), int(n)) for k, n in statuses),
        "scores": [float(x) for x in scores if x is not None],
    }


def _item(o: Output) -> dict[str, Any]:
    return {
        "id": o.id,
        "source": o.source,
        "status": o.status,
        "parse_status": o.parse_status or o.status,
        "error": o.error or "",
        "size": f"{o.image_w}x{o.image_h}" if o.image_w else "",
        "raw_text": o.raw_text or "",
        "regions": [
            {
                "phrase": r.phrase,
                "score": r.score,
                "bbox": ", ".join(f"{v:.0f}" for v in (r.x1, r.y1, r.x2, r.y2)),
            }
            for r in sorted(o.regions, key=lambda r: r.id)
        ],
    }


def output_for_overlay(job_id: int, output_id: int) -> dict[str, Any] | None:
    """The export dict of one output (source and regions), for drawing its overlay."""
    from vlmjobs.db.outputs import output_dict

    with session() as s:
        row = s.scalars(
            select(Output)
            .where(Output.id == output_id, Output.job_id == job_id)
            .options(selectinload(Output.regions))
        ).first()
        return None if row is None else output_dict(row)


def worker_list() -> list[dict[str, Any]]:
    """Workers that heartbeat within the stale window, then the recently dead ones."""
    from vlmjobs.cli.workers import gpu_mem_text
    from vlmjobs.db.models import utcnow
    from vlmjobs.scheduler.app import stale_after_s

    cutoff = utcnow() - timedelta(seconds=stale_after_s())
    with session() as s:
        rows = list(s.scalars(select(Worker).order_by(Worker.host, Worker.name)))
        return [
            {
                "name": w.name,
                "host": w.host,
                "pid": w.pid,
                "gpu": w.gpu or "CPU",
                "queues": w.queues,
                "job": w.current_job_id,
                "mem": gpu_mem_text(
                    w.gpu_mem_allocated_mb, w.gpu_mem_reserved_mb, w.gpu_mem_total_mb
                ),
                "mem_pct": (
                    100.0 * w.gpu_mem_reserved_mb / w.gpu_mem_total_mb
                    if w.gpu_mem_reserved_mb is not None and w.gpu_mem_total_mb
                    else None
                ),
                "heartbeat": age(w.heartbeat_at) + " ago",
                "alive": w.heartbeat_at >= cutoff,
            }
            for w in rows
        ]


def schedule_list() -> list[dict[str, Any]]:
    """Schedules with next and last runs (the rows `vlmjobs schedule ls` prints)."""
    from vlmjobs.cli.schedule import schedule_rows, when_text
    from vlmjobs.cli.view import age as ago

    return [
        r
        | {
            "next": when_text(r["next_run_at"], r["tz"]),
            "last": "-" if r["last_run_at"] is None else ago(r["last_run_at"]) + " ago",
        }
        for r in schedule_rows()
    ]
