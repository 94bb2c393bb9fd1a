"""`vlmjobs up` / `down`: the embedded local stack, as a user runs it (subprocesses)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PLUGIN_DIR = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vlmjobs(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def _get(url: str, timeout: float) -> str:
    """The page at ``url``, retried while the server is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_up_submit_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "VLMJOBS_HOME": str(home),
        "VLMJOBS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "VLMJOBS_PLUGINS": "vlmjobs_testkinds",
        "VLMJOBS_RECONCILE_S": "1",  # so beat sends its periodic reconcile during the test
        "VLMJOBS_DASHBOARD_PORT": str(dashboard_port := free_port()),
        "PYTHONPATH": str(PLUGIN_DIR),
    }
    env.pop("VLMJOBS_DB_URL", None)
    env.pop("VLMJOBS_ARTIFACTS", None)
    try:
        up = _vlmjobs(env, "up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "redis: started" in up.stdout and "worker: ready" in up.stdout
        assert (home / "vlmjobs.db").exists()  # SQLite by default, migrated
        again = _vlmjobs(env, "up")
        assert "already up" in again.stdout

        cfg = tmp_path / "s.yaml"
        cfg.write_text("items: 3\n")
        done = _vlmjobs(env, "submit", "sleepy", str(cfg), "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        status = _vlmjobs(env, "status", done.stdout.strip(), "--json")
        assert '"state": "succeeded"' in status.stdout
        beat_log = (home / "run" / "beat.log").read_text()
        assert "beat: Starting" in beat_log  # beat is up (it fires the database schedules)
        assert f"dashboard: http://127.0.0.1:{dashboard_port}/" in up.stdout
        page = _get(f"http://127.0.0.1:{dashboard_port}/", timeout=30)
        assert f'<tr data-job="{done.stdout.strip()}">' in page  # the job, from the same DB
    finally:
        down = _vlmjobs(env, "down")
    assert down.returncode == 0
    assert "worker: stopped" in down.stdout and "redis: stopped" in down.stdout
    assert "dashboard: stopped" in down.stdout
    assert not list((home / "run").glob("*.pid"))
    assert "nothing to stop" in _vlmjobs(env, "down").stdout
