"""Fixtures for the dashboard tests: a real `vlmjobs dashboard` process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # the pages use the same queries on both backends


@pytest.fixture
def start_dashboard(vlmjobs_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: ``start_dashboard(token=None)`` runs `vlmjobs dashboard` on a free port
    (with VLMJOBS_DASHBOARD_TOKEN when ``token`` is given), waits until it answers and
    returns its base URL. Stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(token: str | None = None) -> str:
        port = free_port()
        env = dict(vlmjobs_env)
        env.pop("VLMJOBS_DASHBOARD_TOKEN", None)
        if token is not None:
            env["VLMJOBS_DASHBOARD_TOKEN"] = token
        argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", "dashboard"]
        log_path = tmp_path / f"dashboard-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*argv, "--port", str(port)], env=env, stdout=log, stderr=log)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/workers", timeout=2)
                return url
            except OSError:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the dashboard did not answer within 30 s"
                time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)
