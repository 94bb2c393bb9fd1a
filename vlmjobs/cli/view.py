"""What a user sees of a job, as text: shared by the CLI (`status`) and the web dashboard.

Pure functions over rows read from the database; no printing here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import desc, select
from sqlalchemy.orm import Session

from vlmjobs.db.models import Job, Metric, utcnow

STATE_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def age(t: datetime | None) -> str:
    """How long ago ``t`` (naive UTC) was: 42s, 5m, 3h, 2d."""
    if t is None:
        return "-"
    return span((utcnow() - t).total_seconds())


def span(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


def duration(job: Job) -> str:
    """Running time of the latest attempt, H:MM:SS."""
    if job.started_at is None:
        return "-"
    end = job.finished_at or utcnow()
    s = max(0, int((end - job.started_at).total_seconds()))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def headline_names(job: Job) -> list[str]:
    """The metrics that say how a job is doing: a train job's loss and its eval metric
    (the one that picks the best checkpoint), else the loss when a job writes one."""
    if job.kind == "train":
        chosen = (job.spec or {}).get("eval", {}).get("metric") or "loss"
        return ["loss", f"val_{chosen}"]
    if job.kind == "infer":
        return ["images_per_s", "parse_ok_rate"]
    return ["loss"]


def _latest(s: Session, job_id: int, name: str | None) -> Metric | None:
    q = select(Metric).where(Metric.job_id == job_id)
    q = q.where(Metric.name == name) if name is not None else q
    return s.scalars(q.order_by(desc(Metric.id)).limit(1)).first()


def metric_text(m: Metric) -> str:
    return f"{m.name}={m.value:.4g}" + (f"@{m.step}" if m.step is not None else "")


def headline_metrics(s: Session, jobs: list[Job]) -> dict[int, str]:
    """``{job id: "loss=0.41@60 val_region_f1=0.52@60"}``; a job with none of its headline
    metrics shows its most recent metric, so custom kinds still show something."""
    out: dict[int, str] = {}
    for job in jobs:
        found = [m for name in headline_names(job) if (m := _latest(s, job.id, name))]
        if not found and (last := _latest(s, job.id, None)) is not None:
            found = [last]
        if found:
            out[job.id] = " ".join(metric_text(m) for m in found)
    return out


def value_text(value: Any) -> str:
    """A result value on one line: floats to 4 significant digits, short lists inline."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(value_text(v) for v in value) if value else "[]"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def result_lines(result: dict[str, Any], indent: int = 4) -> list[str]:
    """A job's result dict as aligned ``key  value`` lines; nested dicts indent under their key."""
    lines: list[str] = []
    width = max((len(str(k)) for k in result), default=0)
    for key, value in result.items():
        if isinstance(value, dict) and value:
            lines.append(" " * indent + f"{key}:")
            lines += result_lines(value, indent + 2)
        else:
            lines.append(" " * indent + f"{str(key).ljust(width)}  {value_text(value)}")
    return lines


def indent_message(message: str, prefix: str) -> list[str]:
    """A (possibly multi-line) message: the first line after ``prefix``, the rest aligned
    under its first character, so preflight arithmetic or tracebacks stay readable."""
    first, *rest = message.splitlines() or [""]
    pad = " " * len(prefix)
    return [prefix + first] + [pad + line for line in rest]
