"""Flower on our app: behind basic auth, sees our workers, queues (cpu, gpu) and tasks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _wait, free_port

from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec

pytestmark = pytest.mark.slow
pytest.importorskip("flower", reason="flower is not installed: pip install -e '.[test]'")
AUTH = "admin:fl0wer-pw"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # Flower reads the broker only


def _get(url: str, auth: str | None) -> tuple[int, object]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


@pytest.fixture
def flower(vlmjobs_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "vlmjobs.scheduler.monitor", "flower"]
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*argv, "--address=127.0.0.1", f"--port={port}"],
        env={**vlmjobs_env, "FLOWER_BASIC_AUTH": AUTH},  # from the env: not on the command line
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return _get(base + "/api/workers", None)[0] == 401
        except urllib.error.URLError:
            return False

    _wait(up, 30, "flower")
    yield base
    proc.terminate()
    proc.wait(10)


def test_flower_needs_auth_and_shows_our_workers_queues_and_tasks(
    flower: str, start_worker, wait_for_state
) -> None:
    worker = start_worker()
    assert _get(flower + "/api/workers", None)[0] == 401
    assert _get(flower + "/api/workers", "admin:wrong")[0] == 401
    deadline = time.monotonic() + 30
    while True:  # Flower asks the workers with a 1 s inspect timeout: a busy one may miss it
        status, workers = _get(flower + "/api/workers?refresh=1", AUTH)
        assert status == 200, status
        if any(name.startswith(f"cpu.{worker.pid}@") for name in workers or {}):
            break
        assert time.monotonic() < deadline, workers
        time.sleep(0.5)
    _, queues = _get(flower + "/api/queues/length", AUTH)
    assert {q["name"] for q in queues["active_queues"]} == {"cpu", "gpu"}

    job_id = submit(load_spec("sleepy", None, ["items=1"]))
    wait_for_state(job_id, "succeeded")
    deadline = time.monotonic() + 10
    while True:  # task events reach Flower asynchronously
        tasks = _get(flower + "/api/tasks", AUTH)[1] or {}
        done = [t for t in tasks.values() if t["name"] == "vlmjobs.sleepy"]
        if done and done[0]["state"] == "SUCCESS":
            break
        assert time.monotonic() < deadline, tasks
        time.sleep(0.3)
    assert done[0]["args"] == f"[{job_id}]" and done[0]["routing_key"] == "cpu"
