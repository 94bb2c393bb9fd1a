"""`vlmjobs submit | status | logs | cancel | retry | workers`: the user's view of jobs.

Exit codes: 2 for invalid input (a bad spec, an unknown job id), 1 for runtime
failures (a job that failed under --wait, an unreachable database or broker).
Errors are one readable message, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from sqlalchemy import desc, select

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.cli.console import styled_state
from vlmjobs.cli.params import JOB_ID, STATES, check_kind, kinds
from vlmjobs.cli.view import age, duration, headline_metrics, indent_message, result_lines
from vlmjobs.db import lifecycle
from vlmjobs.db.models import TERMINAL, Job, JobEvent
from vlmjobs.db.session import session
from vlmjobs.errors import JobNotFound


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
    from vlmjobs.kinds import preflight
    from vlmjobs.recipes.refs import resolve_job_ref
    from vlmjobs.scheduler.submit import submit as submit_job
    from vlmjobs.specs import load_spec

    extra = list(overrides)
    if name is not None:
        extra.append(f"name={json.dumps(name)}")
    if priority is not None:
        extra.append(f"priority={priority}")
    spec = load_spec(kind, config, extra, resolve_job_ref=resolve_job_ref)
    preflight(spec)
    job_id = submit_job(spec)
    click.echo(job_id)
    if wait:
        state = follow(job_id)
        sys.exit(0 if state == "succeeded" else 1)


def follow(job_id: int, interval: float = 0.5) -> str:
    """Show the job's progress on stderr until it ends (a rich bar on a terminal, a plain
    line every few seconds otherwise); its end state."""
    from vlmjobs.cli.console import PlainProgress, console, terminal_progress

    label = f"job {job_id}"
    if not console(err=True).is_terminal:
        plain = PlainProgress(label)
        while True:
            job = _get(job_id)
            plain.update(job.progress_done, job.progress_total, job.state, job.state in TERMINAL)
            if job.state in TERMINAL:
                return _ended(job)
            time.sleep(interval)
    with terminal_progress(label) as bar:
        task = bar.add_task(label, total=None)
        while True:
            job = _get(job_id)
            bar.update(
                task,
                completed=job.progress_done,
                total=job.progress_total,
                description=f"{label} {job.state}",
            )
            if job.state in TERMINAL:
                break
            time.sleep(interval)
    return _ended(job)


def _get(job_id: int) -> Job:
    with session() as s:
        return lifecycle.get(s, job_id)


def _ended(job: Job) -> str:
    if job.error:
        click.echo(f"error: {job.error}", err=True)
    return job.state


def _bar(done: int, total: int | None, width: int = 24) -> str:
    if not total:
        return f"{done}" if done else ""
    filled = int(width * min(done, total) / total)
    pct = 100 * min(done, total) / total
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({pct:.0f}%)"


def job_dict(job: Job) -> dict[str, Any]:
    """A job as plain JSON-able values (`status --json`)."""
    d = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


TABLE_HEAD = ("ID", "KIND", "NAME", "STATE", "PROGRESS", "METRICS", "WORKER/GPU", "AGE", "TIME")


def _rows(jobs: list[Job], metrics: dict[int, str]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for j in jobs:
        where = (j.worker or "-").split("@")[0] + (f"/{j.gpu}" if j.gpu else "")
        progress = f"{j.progress_done}/{j.progress_total}" if j.progress_total else "-"
        name = (j.name or "-")[:24]
        metric = metrics.get(j.id, "-")
        rows.append(
            (str(j.id), j.kind, name, j.state, progress, metric, where, age(j.created_at))
            + (duration(j),)
        )
    return rows


def _detail(job: Job, events: list[JobEvent], metric: str, more: list[str] | None = None) -> str:
    """One job as a block of rich markup (plain text off a terminal)."""
    e = escape
    lines = [
        f"[bold]job {job.id}[/]  {job.kind}  {e(job.name or '')}".rstrip(),
        f"  state     {styled_state(job.state)}  (attempt {job.attempts} of {job.max_attempts})",
        f"  progress  {e(_bar(job.progress_done, job.progress_total) or '-')}",
        f"  worker    {e(job.worker or '-')}" + (f"  gpu {e(job.gpu)}" if job.gpu else ""),
        f"  queue     {job.queue}  priority {job.priority}",
        f"  age       {age(job.created_at)}  running time {duration(job)}",
        f"  metrics   {e(metric)}",
        *(e(m) for m in more or []),  # kind-specific lines (infer: images/s, parse rate, ETA)
    ]
    if job.result:
        lines.append("  result")
        lines += [e(x) for x in result_lines(job.result, indent=4)]
    if job.error:
        lines.append(f"  error     [red]{e(job.error)}[/]")
    lines.append("  events:")
    for ev in events:
        style = {"error": "red", "warning": "yellow"}.get(ev.level, "")
        prefix = f"    {ev.time:%H:%M:%S} {ev.level:<7} "
        for line in indent_message(ev.message, prefix):
            lines.append(f"[{style}]{e(line)}[/]" if style else e(line))
    return "\n".join(lines)


def _render(
    job_id: int | None,
    kind: str | None,
    state: str | None,
    limit: int,
    as_json: bool,
    schedule_id: int | None = None,
) -> tuple[str | list[tuple[str, ...]], bool]:
    """What to show (JSON or markup text; table rows for the list) and whether everything
    shown has ended."""
    with session() as s:
        if job_id is not None:
            job = lifecycle.get(s, job_id)
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
            metric = headline_metrics(s, [job]).get(job_id, "-")
            return _detail(job, events[-15:], metric, more), job.state in TERMINAL
        q = select(Job).order_by(desc(Job.id)).limit(limit)
        q = q.where(Job.kind == kind) if kind else q
        q = q.where(Job.state == state) if state else q
        q = q.where(Job.schedule_id == schedule_id) if schedule_id is not None else q
        jobs = list(s.scalars(q))
        if as_json:
            return json.dumps([job_dict(j) for j in jobs], indent=2), True
        return _rows(jobs, headline_metrics(s, jobs)), False


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
    from vlmjobs.cli.console import console, print_table

    while True:
        shown, ended = _render(job_id, kind, state, limit, as_json, sid)
        if watch:
            click.clear()  # a no-op off a terminal: a log gets one snapshot after another
        if as_json:
            click.echo(shown)
        elif isinstance(shown, str):
            console().print(shown)
        else:
            print_table(TABLE_HEAD, shown, state_col=TABLE_HEAD.index("STATE"))
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
