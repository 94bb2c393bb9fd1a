"""One job, one owner, with a real train job: a frozen worker loses its job and writes nothing.

A worker frozen (SIGSTOP) past the stale limit while training; another worker takes the
job over and finishes it; the frozen one, thawed (SIGCONT), stops at its next step, and
no metric, event, checkpoint row or adapter file of the winner changes.
"""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest
from fencing_helpers import count, events, freeze, job_row, thaw, until  # noqa: F401
from test_train_e2e import db_url, tiny_dir, write_config  # noqa: F401 - fixtures
from test_train_recipe import write_boxes_jsonl

from vlmjobs import settings
from vlmjobs.db.models import Checkpoint, JobEvent, Metric
from vlmjobs.worker.context import workdir_for

pytestmark = pytest.mark.slow


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _leftovers(workdir: Path) -> list[str]:
    return [str(p) for p in workdir.rglob(".*") if p.name.startswith((".tmp-", ".adapter."))]


def test_frozen_trainer_loses_its_job_and_writes_nothing(
    vlmjobs_cli,
    start_worker,
    wait_for_state,
    tiny_dir,  # noqa: F811 - the fixture imported above
    tmp_path,
    thaw,  # noqa: F811
) -> None:
    data = write_boxes_jsonl(tmp_path / "data", 12)  # 10 train -> 5 steps an epoch
    config = write_config(
        tmp_path / "train.yaml",
        tiny_dir,
        data,
        epochs=8,
        checkpoint={"every_steps": 5, "keep_last": 2},
    )
    first = start_worker()
    submitted = vlmjobs_cli("submit", "train", str(config))
    assert submitted.exit_code == 0, submitted.output + submitted.stderr
    job_id = int(submitted.stdout.strip())
    until(lambda: count(Checkpoint, job_id) >= 1, 180, "a first checkpoint")
    freeze(first, job_id)
    thaw.append(first)

    start_worker()  # reconciles the frozen owner's job after 3 s and trains it to the end
    job = wait_for_state(job_id, {"succeeded"}, timeout=240)
    assert job.attempts == 2 and job.fence == 2
    assert job.result["steps"] == job.result["total_steps"] == 40
    adapter = settings.artifacts_root() / job.result["adapter"]
    won = _tree_digest(adapter)
    counts = {m: count(m, job_id) for m in (Metric, JobEvent, Checkpoint)}

    first.kill(signal.SIGCONT)  # the old owner wakes up mid-step, still "training"
    log = workdir_for(job_id) / "job.log"
    until(lambda: "attempt 1 stopped" in log.read_text(), 60, "the old owner to stop")
    time.sleep(1.0)  # anything it would still write would land now

    assert job_row(job_id).state == "succeeded" and job_row(job_id).attempts == 2
    assert {m: count(m, job_id) for m in (Metric, JobEvent, Checkpoint)} == counts
    assert _tree_digest(adapter) == won
    assert events(job_id).count("succeeded") == 1
    assert "LostOwnership" in log.read_text()
    assert first.proc.poll() is None  # the worker itself lives on and serves the next job
    assert _leftovers(workdir_for(job_id)) == []
