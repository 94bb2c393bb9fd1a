"""`vlmjobs schedule add | ls | show | pause | resume | rm | run-now`: recurring jobs.

    vlmjobs schedule add nightly-dock-photos --cron "0 2 * * *" --tz Europe/Berlin infer infer.yaml
    vlmjobs schedule add every-10-min --every 10m infer infer.yaml

Beat (`vlmjobs up`, or `vlmjobs beat`) fires them; `vlmjobs status --schedule NAME`
lists a schedule's runs. Exit 2 for invalid input (a bad cron, time zone, spec, an
unknown name), 1 for runtime failures.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.cli.console import print_table
from vlmjobs.cli.view import indent_message, span
from vlmjobs.db.models import Job, Schedule, ScheduleEvent, utcnow
from vlmjobs.db.session import session
from vlmjobs.errors import SpecError


@cli.group()
def schedule() -> None:
    """Recurring jobs (nightly labeling of new images): stored in the database, fired by beat."""


@schedule.command("add")
@click.argument("name")
@click.argument("kind")
@click.argument("config", required=False, type=click.Path(path_type=Path))
@click.option("--cron", help='5-field cron in --tz, e.g. "0 2 * * *", or @daily / @hourly')
@click.option("--every", help="a fixed interval: 30s, 10m, 2h, 1d")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone of --cron")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "queue"]),
    default="skip",
    show_default=True,
    help="when the previous run is still going: skip this one (recorded) or queue it",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a field")
@friendly_errors
def add_cmd(
    name: str,
    kind: str,
    config: Path | None,
    cron: str | None,
    every: str | None,
    tz: str,
    overlap: str,
    overrides: tuple[str, ...],
) -> None:
    """Add schedule NAME running a KIND job (CONFIG.yaml plus --set overrides), validated now."""
    from vlmjobs.kinds import preflight
    from vlmjobs.recipes.refs import resolve_job_ref
    from vlmjobs.scheduler.schedules import add, check_name, check_when
    from vlmjobs.specs import load_spec

    when, problems = check_when(cron, every, tz)
    problems = check_name(name) + problems
    with session() as s:
        if s.scalar(select(Schedule.id).where(Schedule.name == name)) is not None:
            problems.append(
                ("NAME", f"schedule {name!r} exists: `vlmjobs schedule rm {name}` first")
            )
    spec = None
    try:
        spec = load_spec(kind, config, overrides, resolve_job_ref=resolve_job_ref)
        preflight(spec)
    except SpecError as e:
        problems += e.problems
    if problems or spec is None or when is None:
        click.echo(f"invalid schedule {name!r}:", err=True)
        for path, msg in problems:
            click.echo(f"  {path}: {msg}", err=True)
        sys.exit(2)
    sched = add(name, spec, when, overlap)
    click.echo(f"schedule {name}: {kind}, next run {when_text(sched.next_run_at, sched.tz)}")


def when_text(t: datetime | None, tz: str) -> str:
    """A naive-UTC instant in the schedule's time zone, with how far away it is."""
    from vlmjobs.scheduler.schedule_time import zone

    if t is None:
        return "-"
    local = t.replace(tzinfo=UTC).astimezone(zone(tz))
    delta = (t - utcnow()).total_seconds()
    rel = f"in {span(delta)}" if delta > 0 else f"{span(-delta)} ago"
    return f"{local:%Y-%m-%d %H:%M:%S %Z} ({rel})"


def _ago(t: datetime | None) -> str:
    return "-" if t is None else f"{span((utcnow() - t).total_seconds())} ago"


def schedule_rows() -> list[dict[str, Any]]:
    from vlmjobs.scheduler.schedules import describe, labeled_counts

    with session() as s:
        scheds = list(s.scalars(select(Schedule).order_by(Schedule.name)))
        labeled = labeled_counts(s)
        last_ids = [x.last_job_id for x in scheds if x.last_job_id is not None]
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(last_ids)))}
    rows = []
    for x in scheds:
        job = jobs.get(x.last_job_id) if x.last_job_id is not None else None
        rows.append(
            {
                "name": x.name,
                "kind": x.kind,
                "when": describe(x),
                "state": "paused" if x.paused else "active",
                "overlap": x.overlap,
                "next_run_at": None if x.paused else x.next_run_at,
                "last_run_at": x.last_fired_at,
                "last_job_id": x.last_job_id,
                "last_job_state": job.state if job else None,
                "runs": x.runs,
                "skips": x.skips,
                "images_labeled": labeled.get(x.id, 0),
                "tz": x.tz,
            }
        )
    return rows


@schedule.command("ls")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def ls_cmd(as_json: bool) -> None:
    """Schedules: next run, last run with its job and state, images labeled over all runs."""
    rows = schedule_rows()
    if as_json:
        plain = [
            {k: v.isoformat() if isinstance(v, datetime) else v for k, v in r.items()} for r in rows
        ]
        click.echo(json.dumps(plain, indent=2))
        return
    if not rows:
        click.echo("no schedules: add one with `vlmjobs schedule add NAME --every 10m infer CFG`")
        return
    head = ("NAME", "WHEN", "STATE", "NEXT RUN", "LAST RUN", "JOB", "JOB STATE", "LABELED")
    table = [
        (
            r["name"],
            r["when"],
            r["state"],
            when_text(r["next_run_at"], r["tz"]),
            _ago(r["last_run_at"]),
            str(r["last_job_id"] or "-"),
            r["last_job_state"] or "-",
            f"{r['images_labeled']} ({r['runs']} runs, {r['skips']} skipped)",
        )
        for r in rows
    ]
    print_table(head, table, state_col=head.index("JOB STATE"))


@schedule.command("show")
@click.argument("name")
@click.option("--events", "limit", default=20, show_default=True, help="most recent N events")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def show_cmd(name: str, limit: int, as_json: bool) -> None:
    """One schedule: timing, policy, spec, and its recent events (fires, skips, catch-ups)."""
    from vlmjobs.scheduler.schedules import describe, get

    with session() as s:
        x = get(s, name)
        events = list(
            s.scalars(
                select(ScheduleEvent)
                .where(ScheduleEvent.schedule_id == x.id)
                .order_by(ScheduleEvent.id.desc())
                .limit(limit)
            )
        )
    if as_json:
        click.echo(json.dumps(_show_dict(x, describe(x), events), indent=2))
        return
    click.echo(f"schedule {x.name}  {x.kind}  {describe(x)}  overlap {x.overlap}")
    click.echo(f"  state     {'paused' if x.paused else 'active'}")
    click.echo(f"  next run  {'-' if x.paused else when_text(x.next_run_at, x.tz)}")
    click.echo(f"  runs      {x.runs} (last job {x.last_job_id or '-'}), skipped {x.skips}")
    click.echo(f"  spec      {json.dumps(x.spec)}")
    click.echo("  events:")
    for e in reversed(events):
        for line in indent_message(e.message, f"    {e.time:%Y-%m-%d %H:%M:%S} {e.level:<7} "):
            click.echo(line)


def _show_dict(x: Schedule, when: str, events: list[ScheduleEvent]) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return None if t is None else t.isoformat()

    cols = ("name", "kind", "cron", "every_s", "tz", "overlap", "paused", "runs", "skips")
    return {
        **{c: getattr(x, c) for c in cols},
        "when": when,
        "spec": x.spec,
        "next_run_at": None if x.paused else iso(x.next_run_at),
        "last_run_at": iso(x.last_fired_at),
        "last_job_id": x.last_job_id,
        "events": [
            {"time": iso(e.time), "level": e.level, "message": e.message, "job_id": e.job_id}
            for e in reversed(events)
        ],
    }


@schedule.command("pause")
@click.argument("name")
@friendly_errors
def pause_cmd(name: str) -> None:
    """Stop firing NAME (a run in progress goes on)."""
    from vlmjobs.scheduler.schedules import set_paused

    set_paused(name, True)
    click.echo(f"schedule {name}: paused")


@schedule.command("resume")
@click.argument("name")
@friendly_errors
def resume_cmd(name: str) -> None:
    """Fire NAME again from its next slot (slots passed while paused are not run)."""
    from vlmjobs.scheduler.schedules import set_paused

    x = set_paused(name, False)
    click.echo(f"schedule {name}: active, next run {when_text(x.next_run_at, x.tz)}")


@schedule.command("rm")
@click.argument("name")
@friendly_errors
def rm_cmd(name: str) -> None:
    """Delete NAME; its jobs and their outputs stay."""
    from vlmjobs.scheduler.schedules import remove

    runs = remove(name)
    click.echo(f"schedule {name}: removed ({runs} runs kept as jobs)")


@schedule.command("run-now")
@click.argument("name")
@friendly_errors
def run_now_cmd(name: str) -> None:
    """Start a run of NAME now (its timing is unchanged); prints the job id. With overlap
    'skip' and a run still going, nothing starts (exit 1)."""
    from vlmjobs.scheduler.schedules import run_now

    run = run_now(name)
    if run.job_id is None:
        click.echo(
            f"schedule {name}: skipped: its run job {run.skipped_for} is still going "
            f"(wait, or `vlmjobs cancel {run.skipped_for}`)",
            err=True,
        )
        sys.exit(1)
    click.echo(run.job_id)
