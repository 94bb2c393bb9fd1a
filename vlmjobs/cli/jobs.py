"""`vlmjobs submit | status | logs | cancel | retry | workers`: the user's view of jobs.

Exit codes: 2 for invalid input (a bad spec, an unknown job id), 1 for runtime
failures (a job that failed under --wait, an unreachable database or broker).
Errors are one readable message, never a traceback.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import desc, select

from vlmjobs import settings
from vlmjobs.db.models import TERMINAL, Job, JobEvent, Metric, utcnow
from vlmjobs.db.session import mask_url, session
from vlmjobs.errors import ConfigError, JobNotFound, SpecError, VlmjobsError

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(f: F) -> F:
    """Turn our errors (and unreachable services) into a message and an exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis.exceptions
        import sqlalchemy.exc
        from kombu.exceptions import OperationalError as KombuOperationalError

        try:
            return f(*args, **kwargs)
        except SpecError as e:
            click.echo("invalid spec:", err=True)
            for path, msg in e.problems:
                click.echo(f"  {path}: {msg}", err=True)
            sys.exit(2)
        except (JobNotFound, ConfigError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except VlmjobsError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            where = mask_url(settings.db_url())  # never the password
            click.echo(f"error: database {where} unreachable: {e.orig}", err=True)
            click.echo("check VLMJOBS_DB_URL (or run `vlmjobs up`)", err=True)
            sys.exit(1)
        except (redis.exceptions.ConnectionError, KombuOperationalError) as e:
            where = mask_url(settings.broker_url())
            click.echo(f"error: broker {where} unreachable: {e}", err=True)
            click.echo("check VLMJOBS_BROKER_URL (or run `vlmjobs up`)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


# Imported after friendly_errors on purpose: other cli modules import friendly_errors from
# here while cli.main is importing them, so it must exist before this line runs.
from vlmjobs.cli.main import cli  # noqa: E402
from vlmjobs.cli.params import JOB_ID, STATES, check_kind, kinds  # noqa: E402


class _SubmitCommand(click.Command):
    """`submit --help` lists the kinds this installation knows (plugins included)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        with formatter.indentation():
            formatter.write_text(f"KIND is one of: {', '.join(kinds())}.")


@cli.command(cls=_SubmitCommand)
@click.argument("kind", callback=check_kind)
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a field")
@click.option("--name", help="a label for status tables")
@click.option("--priority", type=int, help="0 lowest .. 9 highest")
@click.option("--wait", is_flag=True, help="follow the job; exit 1 unless it succeeds")
@friendly_errors
def submit(
    kind: str,
    config: Path | None,
    overrides: tuple[str, ...],
    name: str | None,
    priority: int | None,
    wait: bool,
) -> None:
    """Validate a KIND job spec (CONFIG.yaml plus --set overrides) and queue it; prints its id."""
    from vlmjobs.scheduler.submit import submit as submit_job
    from vlmjobs.specs import load_spec

    extra = list(overrides)
    if name is not None:
        extra.append(f"name={json.dumps(name)}")
    if priority is not None:
        extra.append(f"priority={priority}")
    spec = load_spec(kind, config, extra)
    job_id = submit_job(spec)
    click.echo(job_id)
    if wait:
        state = follow(job_id)
        sys.exit(0 if state == "succeeded" else 1)


def follow(job_id: int, interval: float = 0.5) -> str:
    """Show a progress bar on stderr until the job ends; its end state."""
    shown = -1
    while True:
        with session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
        line = f"job {job_id} {job.state:<9} {_bar(job.progress_done, job.progress_total)}"
        if job.progress_done != shown or job.state in TERMINAL:
            click.echo("\r" + line, nl=False, err=True)
            shown = job.progress_done
        if job.state in TERMINAL:
            click.echo("", err=True)
            if job.error:
                click.echo(f"error: {job.error}", err=True)
            return job.state
        time.sleep(interval)


def _bar(done: int, total: int | None, width: int = 24) -> str:
    if not total:
        return f"{done}" if done else ""
    filled = int(width * min(done, total) / total)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def _age(t: datetime | None) -> str:
    if t is None:
        return "-"
    s = max(0, int((utcnow() - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h" if s < 172800 else f"{s // 86400}d"


def _duration(job: Job) -> str:
    if job.started_at is None:
        return "-"
    end = job.finished_at or utcnow()
    s = max(0, int((end - job.started_at).total_seconds()))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _last_metrics(s: Any, ids: list[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for job_id in ids:
        m = s.scalars(
            select(Metric).where(Metric.job_id == job_id).order_by(desc(Metric.id)).limit(1)
        ).first()
        if m is not None:
            out[job_id] = f"{m.name}={m.value:.4g}" + (f"@{m.step}" if m.step is not None else "")
    return out


def job_dict(job: Job) -> dict[str, Any]:
    """A job as plain JSON-able values (`status --json`)."""
    d = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


def _table(jobs: list[Job], metrics: dict[int, str]) -> str:
    head = ("ID", "KIND", "NAME", "STATE", "PROGRESS", "LAST METRIC", "WORKER/GPU", "AGE", "TIME")
    rows = [head]
    for j in jobs:
        where = (j.worker or "-").split("@")[0] + (f"/{j.gpu}" if j.gpu else "")
        progress = f"{j.progress_done}/{j.progress_total}" if j.progress_total else "-"
        rows.append(
            (
                str(j.id),
                j.kind,
                (j.name or "-")[:24],
                j.state,
                progress,
                metrics.get(j.id, "-"),
                where,
                _age(j.created_at),
                _duration(j),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def _detail(job: Job, events: list[JobEvent], metric: str, more: list[str] | None = None) -> str:
    lines = [
        f"job {job.id}  {job.kind}  {job.name or ''}".rstrip(),
        f"  state     {job.state}  (attempt {job.attempts} of {job.max_attempts})",
        f"  progress  {_bar(job.progress_done, job.progress_total) or '-'}",
        f"  worker    {job.worker or '-'}" + (f"  gpu {job.gpu}" if job.gpu else ""),
        f"  queue     {job.queue}  priority {job.priority}",
        f"  age       {_age(job.created_at)}  running time {_duration(job)}",
        f"  metric    {metric}",
        *(more or []),  # kind-specific lines (infer: images/s, parse rate, ETA)
    ]
    if job.result:
        lines.append(f"  result    {json.dumps(job.result)}")
    if job.error:
        lines.append(f"  error     {job.error}")
    lines.append("  events:")
    lines += [f"    {e.time:%H:%M:%S} {e.level:<7} {e.message}" for e in events]
    return "\n".join(lines)


def _render(
    job_id: int | None,
    kind: str | None,
    state: str | None,
    limit: int,
    as_json: bool,
    schedule_id: int | None = None,
) -> tuple[str, bool]:
    """The text to show and whether everything shown has ended."""
    with session() as s:
        if job_id is not None:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
            events = list(
                s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            )
            if as_json:
                d = job_dict(job) | {
                    "events": [
                        {"time": e.time.isoformat(), "level": e.level, "message": e.message}
                        for e in events
                    ]
                }
                return json.dumps(d, indent=2), job.state in TERMINAL
            more = []
            if job.kind == "infer":
                from vlmjobs.cli.results import throughput_line

                more.append(throughput_line(s, job))
            metric = _last_metrics(s, [job_id]).get(job_id, "-")
            return _detail(job, events[-15:], metric, more), job.state in TERMINAL
        q = select(Job).order_by(desc(Job.id)).limit(limit)
        q = q.where(Job.kind == kind) if kind else q
        q = q.where(Job.state == state) if state else q
        q = q.where(Job.schedule_id == schedule_id) if schedule_id is not None else q
        jobs = list(s.scalars(q))
        if as_json:
            return json.dumps([job_dict(j) for j in jobs], indent=2), True
        return _table(jobs, _last_metrics(s, [j.id for j in jobs])), False


@cli.command()
@click.argument("job_id", required=False, type=JOB_ID)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--watch", is_flag=True, help="refresh every second (Ctrl-C to stop)")
@click.option("--kind", callback=check_kind, help="only this kind")
@click.option("--state", type=click.Choice(STATES), help="only this state")
@click.option("--limit", default=20, show_default=True, help="most recent N jobs")
@click.option("--schedule", "schedule_name", help="only the runs of this schedule")
@friendly_errors
def status(
    job_id: int | None,
    as_json: bool,
    watch: bool,
    kind: str | None,
    state: str | None,
    limit: int,
    schedule_name: str | None = None,
) -> None:
    """A table of recent jobs, or one job in detail."""
    from vlmjobs.scheduler.schedules import schedule_id

    sid = schedule_id(schedule_name) if schedule_name is not None else None
    while True:
        text, ended = _render(job_id, kind, state, limit, as_json, sid)
        if watch:
            click.clear()
        click.echo(text)
        if not watch or ended:
            return
        time.sleep(1.0)


@cli.command()
@click.argument("job_id", type=JOB_ID)
@click.option("-f", "--follow", "follow_", is_flag=True, help="keep printing until the job ends")
@friendly_errors
def logs(job_id: int, follow_: bool) -> None:
    """Print a job's log (all attempts)."""
    from vlmjobs.scheduler.submit import get_job
    from vlmjobs.worker.context import workdir_for

    get_job(job_id)
    path = workdir_for(job_id) / "job.log"
    pos = 0
    while True:
        chunk = ""
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(pos)
                chunk = fh.read()
                pos = fh.tell()
            click.echo(chunk, nl=False)
        if not follow_:
            return
        # Stop once the job has ended AND the file has nothing more to say.
        if not chunk and get_job(job_id).state in TERMINAL:
            return
        time.sleep(0.5)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, type=JOB_ID)
@friendly_errors
def cancel(job_ids: tuple[int, ...]) -> None:
    """Cancel jobs: queued ones at once, running ones at their next step (outputs kept)."""
    from vlmjobs.scheduler.submit import cancel as cancel_job
    from vlmjobs.scheduler.submit import get_job

    missing = []
    for job_id in job_ids:
        try:
            before = get_job(job_id).state
            state = before if before in TERMINAL else cancel_job(job_id)
        except JobNotFound:
            missing.append(job_id)
            continue
        if before in TERMINAL:
            click.echo(f"job {job_id}: already {before}, nothing to do")
        elif state == "running":
            click.echo(f"job {job_id}: cancel requested, stopping at its next step")
        else:
            click.echo(f"job {job_id}: {state}")
    if missing:
        raise JobNotFound(f"no job(s) {missing}: the others were handled")


@cli.command()
@click.argument("job_id", type=JOB_ID)
@friendly_errors
def retry(job_id: int) -> None:
    """Queue a failed or cancelled job again, with a fresh attempt budget."""
    from vlmjobs.scheduler.submit import retry as retry_job

    retry_job(job_id)
    click.echo(f"job {job_id}: queued")
