"""The Celery tasks: thin shells that hand the job id to the run wrapper."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from vlmjobs.kinds import KINDS
from vlmjobs.worker.process import WORKER


def register_tasks(app: Celery) -> None:
    """``vlmjobs.<kind>`` for every registered kind (reconcile runs in each worker's
    heartbeat thread, not as a task)."""
    for kind in KINDS:
        app.task(name=f"vlmjobs.{kind}", acks_late=True, reject_on_worker_lost=True)(_run)


def _run(job_id: int) -> None:
    from vlmjobs.worker.wrapper import run_job

    run_job(int(job_id))


@signals.worker_ready.connect
def _on_ready(**_: Any) -> None:
    WORKER.register()


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    # Runs in the SIGTERM handler: only set a flag; the recipe sees it via should_stop().
    WORKER.flags.shutdown.set()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    WORKER.unregister()
