"""`vlmjobs workers`: host, GPU, queues, current job, GPU memory, heartbeat, from real workers."""

from __future__ import annotations

import json
import socket
import time

import pytest

from vlmjobs.cli.workers import gpu_mem_text
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec


@pytest.mark.parametrize(
    "allocated, reserved, total, text",
    [
        (None, None, None, "-"),  # case: CPU worker, or CUDA not initialized yet
        (0, 0, 12288, "0/0 of 12288 MiB"),  # case: CUDA up, nothing allocated
        (6144, 8192, 12288, "6144/8192 of 12288 MiB"),  # case: a job holding memory
        (10, 20, None, "10/20 MiB"),  # case: total unknown
    ],
)
def test_gpu_mem_text(
    allocated: int | None, reserved: int | None, total: int | None, text: str
) -> None:
    assert gpu_mem_text(allocated, reserved, total) == text


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # the listing reads one table; the backends are covered elsewhere


@pytest.mark.slow
def test_workers_shows_host_queues_and_current_job(vlmjobs_cli, start_worker, wait_for_state):
    worker = start_worker(queues="cpu")
    job_id = submit(load_spec("sleepy", None, ["items=40", "sleep_s=0.1"]))
    wait_for_state(job_id, "running")
    deadline = time.monotonic() + 10
    while True:  # the heartbeat (every 0.5 s here) copies the current job into the row
        rows = json.loads(vlmjobs_cli("workers", "--json").stdout)
        if rows and rows[0]["current_job_id"] == job_id:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    row = rows[0]
    assert row["name"].startswith(f"cpu.{worker.pid}@") and row["host"] == socket.gethostname()
    assert row["queues"] == "cpu" and row["alive"] is True
    assert row["gpu_mem_allocated_mb"] is None  # CPU worker: no CUDA memory to report
    table = vlmjobs_cli("workers").stdout.splitlines()
    assert table[0].split()[:4] == ["WORKER", "HOST", "GPU", "QUEUES"]
    assert str(job_id) in table[1].split() and socket.gethostname() in table[1]
