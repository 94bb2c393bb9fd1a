"""`vlmjobs workers`: every worker process on every host, from the workers table.

Each worker's heartbeat thread writes its row (``worker/process.py``), so this
reads one table, whatever the number of hosts; no broadcast to the workers.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click
from sqlalchemy import select

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.cli.console import print_table
from vlmjobs.cli.view import age
from vlmjobs.db.models import Worker, utcnow
from vlmjobs.db.session import session


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="include workers that stopped heartbeating")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@friendly_errors
def workers(show_all: bool, as_json: bool) -> None:
    """Live workers: host, GPU, queues, current job, GPU memory, last heartbeat."""
    from datetime import timedelta

    from vlmjobs.scheduler.app import stale_after_s

    cutoff = utcnow() - timedelta(seconds=stale_after_s())
    with session() as s:
        q = select(Worker).order_by(Worker.host, Worker.name)
        rows = [w for w in s.scalars(q) if show_all or w.heartbeat_at >= cutoff]
    if as_json:
        click.echo(json.dumps([_worker_dict(w, cutoff) for w in rows], indent=2))
    elif not rows:
        click.echo("no live workers: start one with `vlmjobs worker` or `vlmjobs up`")
    else:
        print_table(WORKERS_HEAD, _workers_rows(rows))


def _worker_dict(w: Worker, cutoff: datetime) -> dict[str, Any]:
    cols = ("name", "host", "pid", "gpu", "queues", "current_job_id")
    mem = ("gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_total_mb")
    return {
        **{c: getattr(w, c) for c in cols + mem},
        "heartbeat_at": w.heartbeat_at.isoformat(),
        "alive": w.heartbeat_at >= cutoff,
    }


def gpu_mem_text(allocated: int | None, reserved: int | None, total: int | None) -> str:
    """'1234/2048 of 12288 MiB' (allocated/reserved of the card), or '-' off CUDA."""
    if allocated is None or reserved is None:
        return "-"
    return f"{allocated}/{reserved}" + (f" of {total}" if total else "") + " MiB"


WORKERS_HEAD = ("WORKER", "HOST", "GPU", "QUEUES", "JOB", "GPU MEM (alloc/resv)", "HEARTBEAT")


def _workers_rows(rows: list[Worker]) -> list[tuple[str, ...]]:
    return [
        (
            w.name,
            w.host,
            w.gpu or "-",
            w.queues,
            str(w.current_job_id or "-"),
            gpu_mem_text(w.gpu_mem_allocated_mb, w.gpu_mem_reserved_mb, w.gpu_mem_total_mb),
            f"{age(w.heartbeat_at)} ago",
        )
        for w in rows
    ]
