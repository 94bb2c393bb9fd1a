"""`vlmjobs up`'s Redis gets its password from a 0600 file, never on the command line."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from conftest import free_port

from vlmjobs.cli import stack

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "password",
    [
        "plain-Secret-1",  # case: the usual
        'p@ss w"rd\\x',  # case: @, a space, a quote and a backslash survive the file's quoting
    ],
)
def test_redis_password_stays_off_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    port = free_port()
    monkeypatch.setenv("VLMJOBS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLMJOBS_BROKER_URL", f"redis://:{quote(password)}@127.0.0.1:{port}/0")
    stack._start_redis()
    pid = int((stack.run_dir() / "redis.pid").read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert password not in cmdline and "requirepass" not in cmdline
        conf = stack.run_dir() / "redis.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        assert redis.Redis(port=port, password=password).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(port=port, password="wrong").ping()
    finally:
        os.kill(pid, signal.SIGKILL)
