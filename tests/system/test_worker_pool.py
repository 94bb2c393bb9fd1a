"""A worker running a job still answers Celery's control commands (ping, inspect active)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from vlmjobs.db.models import Worker
from vlmjobs.db.session import session
from vlmjobs.scheduler.app import get_app
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec

pytestmark = pytest.mark.slow


def test_ping_and_inspect_answer_while_a_job_runs(start_worker, wait_for_state) -> None:
    start_worker()
    with session() as s:
        (name,) = s.scalars(select(Worker.name)).all()
    job_id = submit(load_spec("sleepy", None, ["items=60", "sleep_s=0.2"]))
    wait_for_state(job_id, {"running"}, timeout=20)
    time.sleep(0.5)  # well inside the job (12 s)
    app = get_app()
    # With a destination the reply ends the wait; the long timeout is for a busy machine.
    assert app.control.ping(destination=[name], timeout=10.0) == [{name: {"ok": "pong"}}]
    active = app.control.inspect(destination=[name], timeout=10.0).active() or {}
    assert [t["args"] for t in active.get(name, [])] == [[job_id]]
    assert wait_for_state(job_id, {"running", "succeeded"}, timeout=1).state == "running"
    wait_for_state(job_id, {"succeeded"}, timeout=30)
